"""HTTP API and web page: ``emolens serve`` (FastAPI + uvicorn)."""

from .app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
