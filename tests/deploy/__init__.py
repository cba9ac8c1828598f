"""Deployment artefacts: templates lint clean and point at the real entry points."""
