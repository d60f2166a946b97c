"""HTTP API tests against the real app (FastAPI TestClient)."""

import json
import os
import time

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serve extras not installed (pip install -e .[dev])")
from fastapi.testclient import TestClient  # noqa: E402

from emolens.live.settings import PipelineSettings  # noqa: E402
from emolens.live.synthetic import sample_face, sample_video  # noqa: E402
from emolens.serve import ServeSettings, create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve")
    return create_app(
        ServeSettings(
            data_dir=data,
            pipeline=PipelineSettings(detector="haar"),
            hosts=["testserver"],
            max_image_mb=1.0,
            max_video_mb=3.0,
            max_queued_jobs=1,
        )
    )


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def _jpeg(img) -> bytes:
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_health_and_model(client):
    assert client.get("/healthz").json() == {"status": "ok", "pid": os.getpid()}
    m = client.get("/v1/model").json()
    assert m["classes"][1] == "happiness" and m["detector"] == "haar" and m["limits"]["max_image_mb"] == 1.0
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    assert "getUserMedia" in client.get("/").text


def test_predict_sample_face(client):
    r = client.post("/v1/predict", files={"file": ("a.jpg", _jpeg(sample_face()), "image/jpeg")})
    assert r.status_code == 200
    body = r.json()
    assert len(body["faces"]) == 1 and body["faces"][0]["label"] == "happiness"
    assert abs(sum(body["faces"][0]["probs"].values()) - 1) < 1e-3


@pytest.mark.parametrize(
    "files,status,detail",
    [
        ({"file": ("a.txt", b"hello", "text/plain")}, 415, "unsupported type"),
        ({"file": ("a.txt", b"hello", "application/octet-stream")}, 415, "unsupported type"),
        ({"file": ("a.jpg", b"hello", "application/octet-stream")}, 400, "not a readable image"),
        ({"file": ("a.jpg", b"not really a jpeg", "image/jpeg")}, 400, "not a readable image"),
        ({"file": ("a.jpg", b"", "image/jpeg")}, 400, "empty upload"),
        ({"file": ("a.jpg", b"\xff" * (2 * 2**20), "image/jpeg")}, 413, "1 MB limit"),
    ],
)
def test_predict_bad_uploads(client, files, status, detail):
    r = client.post("/v1/predict", files=files)
    assert r.status_code == status and detail in r.json()["detail"]


def test_uploads_with_a_generic_type_are_taken_by_extension(client, tmp_path):
    """curl -F file=@x sends application/octet-stream: the extension decides, the bytes are still checked."""
    r = client.post("/v1/predict", files={"file": ("a.jpg", _jpeg(sample_face()), "application/octet-stream")})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    clip = sample_video(tmp_path / "c.mp4", n_frames=5)
    r = client.post("/v1/video", files={"file": ("c.mp4", clip.read_bytes(), "application/octet-stream")})
    assert r.status_code == 202
    r2 = client.post("/v1/video", files={"file": ("c.mp4", b"not a video", "application/octet-stream")})
    assert r2.status_code == 400
    for _ in range(300):  # let the job finish before the app goes away
        if client.get(f"/v1/video/{r.json()['id']}").json()["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert client.get(f"/v1/video/{r.json()['id']}").json()["status"] == "done"


def test_predict_without_file_is_422(client):
    assert client.post("/v1/predict").status_code == 422


def test_video_job_lifecycle(client, tmp_path):
    clip = sample_video(tmp_path / "c.mp4", n_frames=20)
    r = client.post("/v1/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 202
    job = r.json()["id"]
    for _ in range(300):
        st = client.get(f"/v1/video/{job}").json()
        if st["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert st["status"] == "done", st
    assert st["frames_done"] == 20 and st["progress"] == 1.0
    rows = client.get(f"/v1/video/{job}/results.csv").text.splitlines()
    assert rows[0].startswith("frame,") and len(rows) > 20
    # no server path leaves the server: the source column and the summary name the upload's file only
    sources = {r.split(",")[2] for r in rows[1:]}
    assert len(sources) == 1 and "/" not in sources.pop()
    assert "/" not in client.get(f"/v1/video/{job}/results.json").json()["source"]
    assert client.get(f"/v1/video/{job}/annotated.mp4").content[4:8] == b"ftyp"
    assert {v["dominant"] for v in client.get(f"/v1/video/{job}/results.json").json()["tracks"].values()} == {
        "happiness"
    }


def test_video_bad_input_and_paths(client, app):
    r = client.post("/v1/video", files={"file": ("x.mp4", b"junk" * 100, "video/mp4")})
    assert r.status_code == 400 and "not a video" in r.json()["detail"]
    assert client.get("/v1/video/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/v1/video/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/v1/video/../../etc/passwd").status_code == 404
    # nothing is left behind for rejected uploads; everything stays inside data_dir
    data_dir = app.state.settings.data_dir
    for p in data_dir.rglob("*"):
        assert p.resolve().is_relative_to(data_dir)


def test_websocket_stream_tracks_faces(client):
    frame = cv2.copyMakeBorder(sample_face(), 60, 60, 100, 100, cv2.BORDER_CONSTANT, value=(90, 110, 100))
    with client.websocket_connect("/v1/stream") as ws:
        for i in range(3):
            ws.send_bytes(_jpeg(np.roll(frame, 4 * i, axis=1)))
            msg = json.loads(ws.receive_text())
            assert msg["frame"] == i and len(msg["faces"]) == 1 and msg["faces"][0]["track_id"] == 1
        ws.send_bytes(b"garbage")
        assert "error" in json.loads(ws.receive_text())


def test_job_queue_is_bounded(tmp_path):
    import threading

    from emolens.serve.jobs import JobQueue, QueueFull

    gate = threading.Event()

    def slow(job, folder):
        gate.wait(10)
        return {"ok": True}

    q = JobQueue(tmp_path, slow, max_queued=1)
    first, _ = q.new_job_dir()
    q.submit(first)
    for _ in range(100):
        if first.status == "running":
            break
        time.sleep(0.02)
    second, _ = q.new_job_dir()
    q.submit(second)  # waits in the queue
    third, _ = q.new_job_dir()
    with pytest.raises(QueueFull, match="1 video jobs already waiting"):
        q.submit(third)
    gate.set()
    for _ in range(100):
        if second.status == "done":
            break
        time.sleep(0.02)
    assert first.status == second.status == "done"


def test_finished_jobs_are_deleted_after_keep_hours_and_over_the_disk_quota(tmp_path):
    from emolens.serve.jobs import DiskFull, JobQueue

    def write(job, folder):
        (folder / "results.csv").write_bytes(b"x" * 300_000)
        return {"ok": True}

    q = JobQueue(tmp_path, write, keep_hours=1.0, max_disk_gb=0.5 * 2**-10, cleanup_every_s=3600)  # 0.5 MB
    ids = []
    for _ in range(2):
        job, _ = q.new_job_dir()
        q.submit(job)
        ids.append(job.id)
        for _ in range(200):
            if q.get(job.id).status == "done":
                break
            time.sleep(0.01)
    assert [q.get(i).status for i in ids] == ["done", "done"]
    assert (tmp_path / "jobs.db").is_file()  # state in SQLite: a new queue on the folder knows the jobs
    again = JobQueue(tmp_path, write, keep_hours=1.0, max_disk_gb=0.5 * 2**-10, cleanup_every_s=3600)
    assert q.disk_used() == 300_000 and again.get(ids[1]).summary == {"ok": True}
    with pytest.raises(KeyError):  # 600 KB > 0.5 MB: the oldest finished job went at start-up
        again.get(ids[0])
    assert not (tmp_path / "jobs" / ids[0]).exists()
    assert again.cleanup(now=time.time() + 1800) == []  # half an hour later: kept
    assert again.cleanup(now=time.time() + 3700) == [ids[1]]  # past keep_hours: deleted, files too
    assert not any((tmp_path / "jobs").iterdir())
    tiny = JobQueue(tmp_path / "t", write, max_disk_gb=1e-9, cleanup_every_s=3600)
    job, folder = tiny.new_job_dir()
    (folder / "input.mp4").write_bytes(b"x" * 10_000)  # an upload in progress takes the whole quota
    with pytest.raises(DiskFull, match="disk quota"):
        tiny.new_job_dir()


def test_video_job_time_limit(tmp_path):
    app = create_app(
        ServeSettings(data_dir=tmp_path, pipeline=PipelineSettings(detector="haar"), job_timeout_s=0.0, hosts=["*"])
    )
    clip = sample_video(tmp_path / "c.mp4", n_frames=10)
    with TestClient(app) as c:
        job = c.post("/v1/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")}).json()["id"]
        for _ in range(200):
            st = c.get(f"/v1/video/{job}").json()
            if st["status"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert st["status"] == "failed" and "0 s limit" in st["error"]
        # stopped cleanly after its first frame: the partial results are closed files and can be downloaded
        rows = c.get(f"/v1/video/{job}/results.csv")
        assert rows.status_code == 200 and rows.text.startswith("frame,") and len(rows.text.splitlines()) >= 2
        assert c.get(f"/v1/video/{job}/annotated.mp4").content[4:8] == b"ftyp"
        assert c.get(f"/v1/video/{job}/results.json").status_code == 409


def test_serve_workers_runs_n_processes_that_share_jobs(tmp_path):
    """`emolens serve --workers 2` really starts two processes; a video job is visible from both."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from emolens.live.synthetic import sample_video

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "emolens.cli", "serve", "--port", str(port), "--workers", "2", "--detector", "haar"]
    proc = subprocess.Popen([*cmd, "--data-dir", str(tmp_path / "d")], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.time() + 90
        while time.time() < deadline and len(pids) < 2:
            try:
                with httpx.Client() as c:  # a new connection each time, so the kernel spreads them
                    pids.add(c.get(f"{url}/healthz", timeout=5).json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.5)
        assert len(pids) == 2 and proc.pid not in pids
        with open(sample_video(), "rb") as f:
            job = httpx.post(f"{url}/v1/video", files={"file": ("a.mp4", f, "video/mp4")}, timeout=30).json()
        seen = set()
        while time.time() < deadline + 60:
            with httpx.Client() as c:
                st = c.get(f"{url}/v1/video/{job['id']}", timeout=5)
            assert st.status_code == 200, st.text  # whichever worker answers knows the job
            seen.add(st.json()["status"])
            if st.json()["status"] in ("done", "failed"):
                break
            time.sleep(0.3)
        assert st.json()["status"] == "done", st.json()
        for _ in range(4):
            with httpx.Client() as c:
                assert c.get(f"{url}/v1/video/{job['id']}/results.csv", timeout=5).text.startswith("frame,")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width * 3 + 1) * 4)  # a few rows only; decoders would allocate the full size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_the_header(client, tmp_path):
    import resource

    from emolens.cli import main
    from emolens.data import DataError, read_image

    bomb = png_bomb(32000, 32000)
    assert len(bomb) < 1_000_000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = client.post("/v1/predict", files={"file": ("b.png", bomb, "image/png")})
    assert r.status_code == 413 and "32000x32000" in r.json()["detail"]
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(bomb)
        assert "32000x32000" in json.loads(ws.receive_text())["error"]
    (tmp_path / "b.png").write_bytes(bomb)
    with pytest.raises(DataError, match="32000x32000 px"):
        read_image(tmp_path / "b.png")
    assert main(["predict", str(tmp_path / "b.png"), "--detector", "haar", "-q"]) == 1  # an error row, no crash
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024 < 300  # MB: nothing was decoded


def test_websocket_answers_bad_messages_and_drops_frames_for_a_fast_client(client):
    frame = cv2.copyMakeBorder(sample_face(), 40, 40, 60, 60, cv2.BORDER_CONSTANT, value=(90, 90, 90))
    jpg = _jpeg(frame)
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_text("hello")
        assert "binary" in json.loads(ws.receive_text())["error"]
        ws.send_bytes(b"")
        assert json.loads(ws.receive_text())["error"] == "empty frame"
        for _ in range(30):  # far faster than the server classifies
            ws.send_bytes(jpg)
        replies = []
        while not replies or replies[-1]["frame"] + 1 + replies[-1]["dropped"] < 30:
            replies.append(json.loads(ws.receive_text()))
        assert replies[-1]["dropped"] > 0 and len(replies) < 30  # frames dropped, connection kept
        assert all(len(r["faces"]) == 1 for r in replies)
        ws.send_bytes(jpg)  # still alive
        assert json.loads(ws.receive_text())["frame"] == len(replies)


def test_origin_host_and_api_key_rules(tmp_path):
    from starlette.websockets import WebSocketDisconnect

    app = create_app(
        ServeSettings(
            data_dir=tmp_path,
            pipeline=PipelineSettings(detector="haar"),
            hosts=["testserver"],
            allow_origins=["https://app.example"],
            api_key="s3cret",
        )
    )
    c = TestClient(app)
    key = {"X-API-Key": "s3cret"}
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200  # open paths
    assert c.get("/v1/model").status_code == 401
    assert c.get("/v1/model", headers=key).status_code == 200
    assert c.get("/v1/model?api_key=s3cret").status_code == 200
    # a page on another site (cross-site request, or WebSocket hijacking) is refused; same-origin is fine
    evil = {**key, "Origin": "http://evil.example"}
    assert c.get("/v1/model", headers=evil).status_code == 403
    assert c.get("/v1/model", headers={**key, "Origin": "http://testserver"}).status_code == 200
    r = c.get("/v1/model", headers={**key, "Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    # DNS rebinding: a Host name the server was not started for
    assert c.get("/v1/model", headers={**key, "Host": "rebind.example"}).status_code == 400
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("/v1/stream?api_key=s3cret", headers={"Origin": "http://evil.example"}) as ws:
            ws.receive_text()
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("/v1/stream") as ws:  # no key
            ws.receive_text()
    with c.websocket_connect("/v1/stream?api_key=s3cret", headers={"Origin": "http://testserver"}) as ws:
        ws.send_bytes(_jpeg(sample_face()))
        assert len(json.loads(ws.receive_text())["faces"]) == 1
    # 'null' (sandboxed iframes, file:// pages: any site can make one) is refused on HTTP and WebSocket alike...
    r = c.get("/v1/model", headers={**key, "Origin": "null"})
    assert r.status_code == 403 and "--allow-origin null" in r.json()["detail"]
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect("/v1/stream?api_key=s3cret", headers={"Origin": "null"}) as ws:
            ws.receive_text()
    # ...unless the server was told to take it
    opened = create_app(ServeSettings(data_dir=tmp_path / "o", hosts=["testserver"], allow_origins=["null"]))
    assert TestClient(opened).get("/v1/model", headers={"Origin": "null"}).status_code == 200


def test_serve_beyond_localhost_needs_an_api_key(capsys):
    from emolens.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--detector", "haar"]) == 2
    assert "needs --api-key" in capsys.readouterr().err


def test_video_uploads_are_sniffed_and_size_capped(tmp_path):
    c = TestClient(
        create_app(
            ServeSettings(
                data_dir=tmp_path, pipeline=PipelineSettings(detector="haar"), hosts=["testserver"], max_video_side=320
            )
        )
    )
    png = _jpeg(sample_face())  # image bytes sent as a video
    r = c.post("/v1/video", files={"file": ("x.mp4", png, "video/mp4")})
    assert r.status_code == 400 and "not a video" in r.json()["detail"]
    clip = sample_video(tmp_path / "c.mp4", n_frames=5)  # 640x480 > 320
    r = c.post("/v1/video", files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 413 and "640x480" in r.json()["detail"]
    assert not any((tmp_path / "jobs").iterdir())  # refused uploads leave nothing behind


def test_overload_gets_503_and_healthz_stays_fast(tmp_path, monkeypatch):
    """A burst far beyond what the server can work: the surplus is told to come back (503 + Retry-After),
    /healthz still answers at once, and requests that time out are not worked on afterwards."""
    import asyncio
    import socket
    import threading

    import httpx
    import uvicorn

    from emolens.live.pipeline import Pipeline

    calls = []
    real = Pipeline.process

    def slow(self, frame, *a, **k):
        calls.append(time.time())
        time.sleep(0.3)
        return real(self, frame, *a, **k)

    monkeypatch.setattr(Pipeline, "process", slow)
    app = create_app(
        ServeSettings(
            data_dir=tmp_path, pipeline=PipelineSettings(detector="haar"), max_pending=4, request_timeout_s=1.0
        )
    )
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url, jpg = f"http://127.0.0.1:{port}", _jpeg(sample_face())

    async def burst():
        async with httpx.AsyncClient(timeout=30) as c:
            posts = [c.post(f"{url}/v1/predict", files={"file": ("a.jpg", jpg, "image/jpeg")}) for _ in range(20)]
            tasks = [asyncio.create_task(p) for p in posts]
            await asyncio.sleep(0.3)
            health = await c.get(f"{url}/healthz")
            busy = sum(not t.done() for t in tasks)  # uploads still being worked on when /healthz answered
            return await asyncio.gather(*tasks), health, busy

    try:
        replies, health, busy = asyncio.run(burst())
    finally:
        srv.should_exit = True
    codes = sorted(r.status_code for r in replies)
    assert health.status_code == 200 and busy > 0  # /healthz is not queued behind the work
    assert codes.count(503) >= 10 and all(r.headers["retry-after"] == "1" for r in replies if r.status_code == 503)
    assert set(codes) <= {200, 503, 504} and 200 in codes
    time.sleep(1.5)
    assert len(calls) <= 4 + 1  # timed-out requests that had not started were never worked on


def test_decoding_runs_off_the_event_loop_with_at_most_work_slots_images_at_once(tmp_path, monkeypatch):
    """Uploads and WebSocket frames are decoded in the work pool, never on the event loop (which must keep
    answering), and no more than WORK_SLOTS decoded images exist at once however many requests arrive."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from emolens.serve import uploads as app_module

    seen = {"on_loop": 0, "now": 0, "peak": 0, "calls": 0}
    guard = threading.Lock()
    real = app_module.decode_image

    def watched(*a, **k):
        try:
            asyncio.get_running_loop()
            seen["on_loop"] += 1
        except RuntimeError:
            pass
        with guard:
            seen["now"] += 1
            seen["calls"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        try:
            time.sleep(0.2)  # long enough for the other requests to pile up behind the slots
            return real(*a, **k)
        finally:
            with guard:
                seen["now"] -= 1

    monkeypatch.setattr(app_module, "decode_image", watched)
    app = create_app(ServeSettings(data_dir=tmp_path, pipeline=PipelineSettings(detector="haar"), hosts=["testserver"]))
    jpg = _jpeg(sample_face())
    with TestClient(app) as c:
        with ThreadPoolExecutor(6) as ex:
            post = lambda _: c.post("/v1/predict", files={"file": ("a.jpg", jpg, "image/jpeg")})  # noqa: E731
            codes = list(ex.map(post, range(6)))
        with c.websocket_connect("/v1/stream") as ws:
            ws.send_bytes(jpg)
            assert ws.receive_json()["frame"] == 0
        assert seen["calls"] == 7 and seen["on_loop"] == 0
        assert seen["peak"] == app_module.WORK_SLOTS
        # an image over BIG_PIXELS (from its header) takes every slot: such images are decoded one at a time
        side = int(app_module.BIG_PIXELS**0.5) + 8
        big = cv2.imencode(".png", np.zeros((side, side, 3), np.uint8))[1].tobytes()
        seen["peak"] = 0
        with ThreadPoolExecutor(3) as ex:
            bigs = list(ex.map(lambda _: c.post("/v1/predict", files={"file": ("b.png", big, "image/png")}), range(3)))
    assert [r.status_code for r in codes + bigs] == [200] * 9
    assert seen["peak"] == 1 and seen["on_loop"] == 0


def test_live_streams_beyond_the_limit_are_told_to_come_back(tmp_path):
    from starlette.websockets import WebSocketDisconnect

    app = create_app(
        ServeSettings(
            data_dir=tmp_path, pipeline=PipelineSettings(detector="haar"), hosts=["testserver"], max_streams=1
        )
    )
    with TestClient(app) as c:
        with c.websocket_connect("/v1/stream") as first:
            with c.websocket_connect("/v1/stream") as second:
                with pytest.raises(WebSocketDisconnect) as e:
                    second.receive_json()
            assert e.value.code == 1013 and "1 live streams" in e.value.reason
            first.send_bytes(_jpeg(sample_face()))
            assert first.receive_json()["frame"] == 0
        with c.websocket_connect("/v1/stream") as again:  # the slot is free once the first one closed
            again.send_bytes(_jpeg(sample_face()))
            assert again.receive_json()["frame"] == 0


def test_serve_flags_reach_the_settings(monkeypatch):
    from emolens.cli import build_parser, serve_settings

    monkeypatch.delenv("EMOLENS_API_KEY", raising=False)
    a = build_parser().parse_args(
        ["serve", "--max-pending", "3", "--max-streams", "5", "--max-jobs", "2", "--timeout", "5", "--workers", "2",
         "--api-key", "k", "--allow-origin", "https://a.example", "--allowed-host", "box.lan", "--margin", "0.1",
         "--threads", "1"]
    )  # fmt: skip
    s = serve_settings(a)
    assert (s.max_pending, s.max_streams, s.max_queued_jobs, s.request_timeout_s, s.workers) == (3, 5, 2, 5.0, 2)
    assert (s.api_key, s.allow_origins, s.hosts) == ("k", ["https://a.example"], ["box.lan"])
    assert (s.pipeline.margin, s.pipeline.threads) == (0.1, 1)
    assert serve_settings(build_parser().parse_args(["serve", "--host", "0.0.0.0", "--api-key", "k"])).hosts == ["*"]


def test_api_keys_never_reach_the_access_log(tmp_path, caplog):
    import logging

    from emolens.serve.guards import RedactKeys

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/v1/stream?x=1&api_key=s3cret&y=2", "1.1", 101), None,
    )  # fmt: skip
    assert RedactKeys().filter(record) and "s3cret" not in record.getMessage()
    assert "api_key=***&y=2" in record.getMessage()
    create_app(ServeSettings(data_dir=tmp_path, pipeline=PipelineSettings(detector="haar")))
    assert any(isinstance(f, RedactKeys) for f in logging.getLogger("uvicorn.access").filters)


def _wait_status(q, job_id: str, want: set[str], timeout: float = 30.0) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = q.get(job_id).status
        if st in want:
            return st
        time.sleep(0.02)
    return q.get(job_id).status


def test_the_job_thread_outlives_a_full_disk(tmp_path, monkeypatch):
    import sqlite3

    from emolens.serve.jobs import DiskFull, JobQueue, JobStore

    q = JobQueue(tmp_path, lambda job, folder: {"ok": True}, cleanup_every_s=3600)
    real, full = JobStore.put, [True]

    def put(self, job, owner):
        if full[0] and job.status == "running":
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, job, owner)

    monkeypatch.setattr(JobStore, "put", put)
    first, _ = q.new_job_dir()
    q.submit(first)
    assert _wait_status(q, first.id, {"failed"}) == "failed" and "disk is full" in q.get(first.id).error
    # a new upload while the disk is full is refused as such (507 in the app), not a 500
    monkeypatch.setattr(
        JobStore,
        "put",
        lambda self, job, owner: (_ for _ in ()).throw(sqlite3.OperationalError("database or disk is full")),
    )
    job, _ = q.new_job_dir()
    with pytest.raises(DiskFull, match="disk is full"):
        q.submit(job)
    # space freed: the same thread runs the next job
    monkeypatch.setattr(JobStore, "put", real)
    full[0] = False
    second, _ = q.new_job_dir()
    q.submit(second)
    assert _wait_status(q, second.id, {"done", "failed"}) == "done"


def test_a_restart_with_the_same_pid_recovers_its_jobs(tmp_path):
    import os
    import socket

    from emolens.serve.jobs import INTERRUPTED, Job, JobQueue, JobStore, _this_process

    store = JobStore(tmp_path / "jobs.db")
    (tmp_path / "jobs").mkdir()
    # written by an earlier server with this very PID (a container restart: the server is PID 1 again), and by a
    # dead process whose PID now belongs to another one (PID 1 here is alive, but started at another time)
    me = f"{socket.gethostname()}:{os.getpid()}"
    earlier, reused = f"{me}:1", f"{socket.gethostname()}:1:1"
    assert _this_process() not in (earlier, reused)
    rows = {"run": ("running", earlier), "wait": ("queued", earlier), "old": ("running", reused)}
    ids = {}
    for name, (status, owner) in rows.items():
        job = Job(os.urandom(16).hex(), status=status)
        (tmp_path / "jobs" / job.id).mkdir()
        store.put(job, owner)
        ids[name] = job.id
    q = JobQueue(tmp_path, lambda job, folder: {"ok": True}, cleanup_every_s=3600)
    assert q.get(ids["run"]).status == "failed" and q.get(ids["run"]).error == INTERRUPTED
    assert q.get(ids["old"]).status == "failed"
    assert _wait_status(q, ids["wait"], {"done", "failed"}) == "done"  # queued again and run


def test_a_data_folder_another_user_prepared_is_refused_and_nothing_outside_it_is_deleted(tmp_path, monkeypatch):
    import os

    from emolens.serve.folders import UnsafeDataDir, default_data_dir, private_data_dir

    assert default_data_dir().name == f"emolens-serve-{os.getuid()}"
    victim = tmp_path / "victim_docs"
    victim.mkdir()
    old = victim / "thesis.txt"
    old.write_text("years of work")
    os.utime(old, (1, 1))  # older than the hour after which the server clears its temporary files
    # the folder itself a symlink to the victim's files
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(UnsafeDataDir, match="symbolic link"):
        create_app(ServeSettings(data_dir=tmp_path / "link", pipeline=PipelineSettings(detector="haar")))
    # a real folder whose tmp/ (cleared at start-up) points at them
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "tmp").symlink_to(victim)
    with pytest.raises(UnsafeDataDir, match="tmp: a symbolic link"):
        create_app(ServeSettings(data_dir=planted, pipeline=PipelineSettings(detector="haar")))
    assert old.read_text() == "years of work"
    # the default folder, if someone made it writable for others first, is refused; a fresh one is made 0700
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "sys_tmp"))
    fresh = private_data_dir(default_data_dir())
    assert fresh.stat().st_mode & 0o777 == 0o700
    fresh.chmod(0o777)
    with pytest.raises(UnsafeDataDir, match="other users may write"):
        private_data_dir(default_data_dir())


def test_building_the_app_leaves_the_process_environment_as_it_was(tmp_path, monkeypatch):
    """The model loads with $TMPDIR inside the data folder (ONNX Runtime writes a session file there), and the
    process's own $TMPDIR comes back afterwards: an embedding program's other libraries keep theirs."""
    import os

    import emolens.serve.app as app_module

    seen = []
    real = app_module.Service

    def service(s):
        seen.append((os.environ.get("TMPDIR"), os.environ.get("EMOLENS_CACHE")))
        return real(s)

    monkeypatch.setattr(app_module, "Service", service)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "mine"))
    monkeypatch.delenv("EMOLENS_CACHE")
    create_app(ServeSettings(data_dir=tmp_path / "data", pipeline=PipelineSettings(detector="haar")))
    data = (tmp_path / "data").resolve()
    assert seen == [(str(data / "tmp"), str(data / "cache"))]
    assert os.environ["TMPDIR"] == str(tmp_path / "mine") and "EMOLENS_CACHE" not in os.environ
    assert list((data / "cache" / "onnx").glob("*.onnx"))  # the export was made inside the data folder
