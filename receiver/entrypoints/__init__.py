"""Platform shims: translate a platform's request to `core.handle` and back, nothing more."""
