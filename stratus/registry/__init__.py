"""The read-only OCI Distribution server: an ASGI application run by uvicorn."""
