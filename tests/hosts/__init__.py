"""Serverless doors: AWS Lambda and Google Cloud Functions."""
