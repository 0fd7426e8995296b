"""Stratus: serve container images straight from S3, and push BuildKit OCI layouts to it."""

__version__ = "0.1.0"
