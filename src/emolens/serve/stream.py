"""The live WebSocket: browser webcam frames in, tracked and smoothed faces out."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect

from .guards import access_problem
from .routes import faces_out
from .service import Service
from .uploads import _decode_image

router = APIRouter()


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    """Send JPEG/PNG frames as binary messages; each processed frame gets a JSON reply with tracked,
    smoothed faces. A client that sends faster than the server works has frames dropped (the newest
    waiting frame wins; replies say how many were dropped), never its connection. Text or empty
    messages get an ``{"error": ...}`` reply."""
    svc: Service = ws.app.state.service
    s = svc.settings
    problem = access_problem(s, ws.headers, "/v1/stream", ws.query_params.get("api_key"))
    if problem:  # refused before the handshake completes (HTTP 403 to the client)
        await ws.close(code=1008, reason=problem[1][:120])
        return
    await ws.accept()
    if svc.streams >= s.max_streams:  # admission: each stream may hold a frame waiting for a work slot
        await ws.close(code=1013, reason=f"busy: {s.max_streams} live streams already open; try again later")
        return
    svc.streams += 1
    pipe = svc.pipeline("ema")
    send_lock = asyncio.Lock()
    latest: list[bytes] = []  # at most one waiting frame
    ready = asyncio.Event()
    state = {"closed": False, "dropped": 0}

    async def send(obj: dict) -> None:
        async with send_lock:
            await ws.send_text(json.dumps(obj))

    async def reader() -> None:
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is None:
                    await send({"error": "send frames as binary messages (JPEG or PNG bytes), not text"})
                elif not data:
                    await send({"error": "empty frame"})
                elif len(data) > s.max_image_mb * 2**20:
                    await send({"error": f"frame larger than the {s.max_image_mb:g} MB limit"})
                else:
                    if latest:
                        state["dropped"] += 1
                        latest.clear()
                    latest.append(data)
                    ready.set()
        except WebSocketDisconnect:
            pass
        finally:
            state["closed"] = True
            ready.set()

    task = asyncio.create_task(reader())
    frame_no = 0
    try:
        while True:
            await ready.wait()
            ready.clear()
            if not latest:
                if state["closed"]:
                    break
                continue
            data = latest.pop()

            def decode_and_track(data=data, i=frame_no):
                img = _decode_image(data, s.max_image_side)
                with svc.lock:
                    return img.shape, pipe.process(img, i)

            try:
                (height, width, _), results = await svc.work.run(decode_and_track, data)
            except HTTPException as e:
                await send({"error": e.detail})
                continue
            reply = {"frame": frame_no, "width": width, "height": height}
            reply.update(dropped=state["dropped"], faces=faces_out(results, True))
            await send(reply)
            frame_no += 1
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-reply
    finally:
        svc.streams -= 1
        task.cancel()
