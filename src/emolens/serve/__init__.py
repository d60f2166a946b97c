"""HTTP API and web page: ``emolens serve`` (FastAPI + uvicorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .app import create_app
    from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:
    """``create_app`` loads the app (FastAPI, PyTorch) on first use, not on import."""
    if name == "ServeSettings":
        from .settings import ServeSettings

        return ServeSettings
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
