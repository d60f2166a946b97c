"""Who may call the server and how much they may send: Host, Origin and API-key rules, the body limit and its
idle deadline (ASGI middleware), and API keys kept out of the access log."""

from __future__ import annotations

import asyncio
import logging
import re

from fastapi import Request
from fastapi.responses import JSONResponse

from .jobs import DiskFull
from .settings import LOOPBACK, ServeSettings

#: Bytes a multipart body may carry beyond its file (boundaries, part headers).
MULTIPART_SLACK = 64 * 1024
#: Paths served without an API key: the page itself, the docs and the liveness probe.
OPEN_PATHS = ("/", "/healthz", "/docs", "/redoc", "/openapi.json", "/static-offline-docs")


def _host_name(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):  # [::1]:8000
        return h[1 : h.find("]")]
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def access_problem(s: ServeSettings, headers, path: str, query_key: str | None) -> tuple[int, str] | None:
    """Why a request (or WebSocket handshake) must be refused, as ``(status, reason)``, or ``None``.

    Host must be loopback or in ``s.hosts`` (DNS rebinding); a browser ``Origin`` must be this server's own or
    in ``s.allow_origins`` (cross-site requests and WebSocket hijacking; ``Origin: null`` only when listed there as
    ``null``, not by ``*``); the API key must match when set.
    """
    host = headers.get("host", "")
    if "*" not in s.hosts and _host_name(host) not in (*LOOPBACK, *(h.lower() for h in s.hosts)):
        return 400, f"Host {host!r} is not served here (emolens serve --allowed-host)"
    origin = headers.get("origin")
    if origin == "null":  # sandboxed iframes and file:// pages: any page can be one, so only if asked for
        if "null" not in s.allow_origins:
            return 403, "requests from an opaque origin ('null') refused (emolens serve --allow-origin null)"
    elif origin:
        from urllib.parse import urlsplit

        if (
            urlsplit(origin).netloc.lower() != host.lower()
            and origin not in s.allow_origins
            and "*" not in s.allow_origins
        ):
            return 403, f"cross-origin request from {origin!r} refused (emolens serve --allow-origin)"
    if s.api_key and not (path in OPEN_PATHS or path.startswith("/static-offline-docs/")):
        import hmac

        key = headers.get("x-api-key") or query_key or ""
        if not hmac.compare_digest(key.encode(), s.api_key.encode()):
            return 401, "missing or wrong API key (X-API-Key header or ?api_key=)"
    return None


class BodyLimit:
    """ASGI middleware: a request body over its route's limit is refused (413, JSON) while it streams in: at
    once when ``Content-Length`` says so (nothing is read), else as soon as the bytes received pass the limit.
    So no more than the limit (plus one network chunk) ever reaches the upload spool on disk.

    ``limits``: path -> (limit in MB for the message, limit in bytes); other paths get 1 MB.
    """

    def __init__(self, app, limits: dict[str, tuple[float, int]], idle_s: float = 10.0) -> None:
        self.app, self.limits, self.idle_s = app, limits, idle_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        mb, limit = self.limits.get(scope["path"], (1.0, 2**20))
        detail, status = f"upload larger than the {mb:g} MB limit", 413
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            status = 413 if length.isdigit() else 400
            response = JSONResponse({"detail": detail if status == 413 else "bad Content-Length"}, status_code=status)
            return await response(scope, receive, send)
        seen, over, answered = 0, False, False

        async def limited():
            nonlocal seen, over, status, detail
            if over:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except asyncio.TimeoutError:  # the client stopped sending mid-body (or trickles): drop it
                over, status = True, 408
                detail = f"the request body stalled (nothing received for {self.idle_s:g} s)"
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # stop reading: to the app, the client has gone (it stops parsing)
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def refuse() -> None:
            nonlocal answered
            if not answered:
                answered = True
                await JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})(
                    scope, receive, send
                )

        async def guarded_send(message) -> None:
            if over:  # whatever the app answers to the "disconnect", the client gets the 413
                return await refuse()
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not over:
                raise
        if over:
            await refuse()


class RedactKeys(logging.Filter):
    """Hide ``api_key=`` values in log lines (uvicorn's access log prints every request's query)."""

    PATTERN = re.compile(r"(api_key=)[^&\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1***", record.msg)
        return True


def redact_access_log() -> None:
    """Install :class:`RedactKeys` on uvicorn's access log (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactKeys) for f in access.filters):
        access.addFilter(RedactKeys())


async def admission(request: Request, call_next):
    """HTTP middleware: access rules first; a video upload reserves its disk quota before its body is read; an
    image prediction beyond ``max_pending`` in flight is refused (503) before its body is read."""
    svc = request.app.state.service
    s, jobs = svc.settings, svc.jobs
    video_bytes = int(s.max_video_mb * 2**20) + MULTIPART_SLACK
    problem = access_problem(s, request.headers, request.url.path, request.query_params.get("api_key"))
    if problem:
        return JSONResponse({"detail": problem[1]}, status_code=problem[0])
    if request.url.path == "/v1/video" and request.method == "POST":
        # the quota is reserved for the whole body before it is read (it is spooled to disk as it arrives):
        # parallel uploads cannot each pass a check made once and fill the disk together
        length = request.headers.get("content-length", "")
        need = min(int(length), video_bytes) if length.isdigit() else video_bytes
        try:
            jobs.reserve(need)
        except DiskFull as e:
            return JSONResponse({"detail": str(e)}, status_code=507, headers={"Connection": "close"})
        try:
            return await call_next(request)
        finally:
            jobs.release(need)
    if request.url.path != "/v1/predict" or request.method != "POST":
        return await call_next(request)
    # admission before the body is read: a request beyond max_pending costs no upload parsing
    if svc.admitted >= s.max_pending:
        return JSONResponse(
            {"detail": "busy: too many predictions waiting"}, status_code=503, headers={"Retry-After": "1"}
        )
    svc.admitted += 1
    try:
        return await call_next(request)
    finally:
        svc.admitted -= 1
