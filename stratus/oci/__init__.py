"""The OCI vocabulary: reference grammar, media types, descriptors, manifests and indexes.

This package imports nothing else of Stratus.
"""
