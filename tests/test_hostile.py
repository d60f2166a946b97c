"""A real `emolens serve` process under hostile input and crashes: fast refusals, bounded memory and disk,
and jobs that survive a kill -9.

Each test talks HTTP to a server subprocess and reads the server's own peak memory (``VmHWM`` in
``/proc/<pid>/status``), so what is measured is what a deployed server does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="serve extras not installed (pip install -e .[dev])")
pytest.importorskip("fastapi", reason="serve extras not installed (pip install -e .[dev])")
if not Path("/proc/self/status").is_file():  # pragma: no cover
    pytest.skip("peak-memory checks read /proc (Linux)", allow_module_level=True)

from emolens.live.synthetic import make_clip, sample_face  # noqa: E402

MB = 2**20


def _mem_mb(pid: int) -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


class Server:
    def __init__(self, data_dir: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.data_dir = f"http://127.0.0.1:{self.port}", data_dir
        cmd = [sys.executable, "-m", "emolens.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        cmd += ["--detector", "haar", "--threads", "1", *flags]
        env = {**{k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("emolens serve did not start") from None
                time.sleep(0.3)

    def mem(self) -> dict[str, float]:
        return _mem_mb(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # its own TMPDIR: the server must write nothing there (test_the_server_writes_only_in_its_data_folder)
    tmp = tmp_path_factory.mktemp("server_tmpdir")
    srv = Server(
        tmp_path_factory.mktemp("hostile"), "--max-image-mb", "10", "--max-video-mb", "20", env={"TMPDIR": str(tmp)}
    )
    srv.tmpdir = tmp
    face = cv2.imencode(".jpg", cv2.copyMakeBorder(sample_face(), 60, 60, 90, 90, cv2.BORDER_CONSTANT))[1].tobytes()
    r = httpx.post(f"{srv.url}/v1/predict", files={"file": ("f.jpg", face, "image/jpeg")}, timeout=30)
    assert r.status_code == 200 and len(r.json()["faces"]) == 1  # warm: model and detector have run once
    srv.baseline = srv.mem()["VmHWM"]
    yield srv
    srv.stop()


def test_the_server_writes_only_in_its_data_folder(server):
    # not even PyTorch's compiler cache, which it otherwise creates as $TMPDIR/torchinductor_<user>
    assert not list(server.tmpdir.iterdir())
    assert (server.data_dir / "tmp" / "torchinductor").is_dir()


def png_header(width: int, height: int) -> bytes:
    """A small, valid-looking PNG whose header claims ``width`` x ``height`` pixels."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = zlib.compress(b"\0" * (width * 3 + 1) * 4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_header(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mp4_claiming(width: int, height: int, tmp_path: Path) -> bytes:
    """A real MP4 whose track header (``tkhd``) claims ``width`` x ``height`` frames."""
    path = tmp_path / "real.mp4"
    make_clip([sample_face()], path, n_frames=3, size=(64, 48))
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4  # the box body: version 0 -> width and height at bytes 76..84
    assert data[at] == 0
    data[at + 76 : at + 84] = struct.pack(">II", width << 16, height << 16)
    return bytes(data)


@pytest.mark.parametrize(
    "name,payload",
    [
        ("png 32000x32000", png_header(32000, 32000)),
        ("png 40000x40000", png_header(40000, 40000)),
        ("jpeg 30000x30000", jpeg_header(30000, 30000)),
        ("jpeg 65000x65000", jpeg_header(65000, 65000)),
    ],
)
def test_image_bombs_are_refused_at_once_without_memory(server, name, payload):
    kind = "image/png" if name.startswith("png") else "image/jpeg"
    r = httpx.post(f"{server.url}/v1/predict", files={"file": ("x", payload, kind)}, timeout=30)
    side = name.split()[1]
    assert r.status_code == 413 and side in r.json()["detail"], r.text
    # refused from the header: decoding would take gigabytes (32000x32000 RGB is 3 GB), the server's peak grew < 100 MB
    assert server.mem()["VmHWM"] - server.baseline < 100, server.mem()


def test_websocket_bomb_gets_an_error_message_and_the_connection_lives(server):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/v1/stream", open_timeout=10) as ws:
        ws.send(png_header(20000, 20000))
        assert "20000x20000" in json.loads(ws.recv(timeout=5))["error"]
        ws.send(png_header(40000, 40000))
        assert "40000x40000" in json.loads(ws.recv(timeout=5))["error"]
        ws.send(cv2.imencode(".jpg", sample_face())[1].tobytes())
        assert json.loads(ws.recv(timeout=10))["frame"] == 0
    assert server.mem()["VmHWM"] - server.baseline < 100


def _raw_post(port: int, path: str, headers: dict[str, str], body_chunks, read_timeout: float = 10.0):
    """POST over a raw socket, sending ``body_chunks`` until the server answers or closes; returns
    ``(status, bytes sent)``."""
    s = socket.create_connection(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((head + "\r\n").encode())
    sent = 0
    s.setblocking(False)
    reply = b""
    try:
        for chunk in body_chunks:
            try:
                reply += s.recv(65536)
                if reply:
                    break
            except BlockingIOError:
                pass
            try:
                s.setblocking(True)
                s.settimeout(5)
                s.sendall(chunk)
                sent += len(chunk)
                s.setblocking(False)
            except OSError:
                break  # the server closed the connection
        s.setblocking(True)
        s.settimeout(read_timeout)
        while b"\r\n" not in reply:
            more = s.recv(65536)
            if not more:
                break
            reply += more
    finally:
        s.close()
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None, sent


def test_body_limits_hold_while_the_body_streams(server):
    boundary = "xx"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
    part += "Content-Type: image/jpeg\r\n\r\n"
    ctype = f"multipart/form-data; boundary={boundary}"
    # a Content-Length over the limit: refused from the headers, before any body byte (none is ever sent here, so a
    # server that waited for the body would not answer before the client gives up)
    status, _ = _raw_post(server.port, "/v1/predict", {"Content-Type": ctype, "Content-Length": str(2**30)}, [])
    assert status == 413
    # 1 GB without a length (chunked): refused once the 10 MB limit is passed; the client cannot send much more
    block = b"\xff" * MB

    def chunks():
        yield f"{len(part):x}\r\n{part}\r\n".encode()
        for _ in range(1024):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"

    headers = {"Content-Type": ctype, "Transfer-Encoding": "chunked"}
    status, sent = _raw_post(server.port, "/v1/predict", headers, chunks())
    assert status == 413
    assert sent < 40 * MB, f"the server read on to {sent / MB:.0f} MB"  # 10 MB limit + socket buffers
    # while an upload streams in, its spool file is under --data-dir, not the system's temp folder
    s = socket.create_connection(("127.0.0.1", server.port))
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    s.sendall(head.encode() + b"".join(c for c, _ in zip(chunks(), range(5), strict=False)))
    time.sleep(1.0)
    fd_dir = Path(f"/proc/{server.proc.pid}/fd")
    spools = [os.readlink(f) for f in fd_dir.iterdir() if "(deleted)" in os.readlink(f)]
    s.close()
    assert spools and all(p.startswith(str(server.data_dir / "tmp")) for p in spools), spools
    assert server.mem()["VmHWM"] - server.baseline < 100


def test_video_with_huge_frames_is_refused_from_its_header(server, tmp_path):
    payload = mp4_claiming(16000, 16000, tmp_path)
    r = httpx.post(f"{server.url}/v1/video", files={"file": ("v.mp4", payload, "video/mp4")}, timeout=30)
    assert r.status_code == 413 and "16000x16000" in r.json()["detail"], r.text
    r = httpx.post(f"{server.url}/v1/video", files={"file": ("v.mp4", payload[:40], "video/mp4")}, timeout=30)
    assert r.status_code == 400  # a container too broken to declare its frame size
    assert server.mem()["VmHWM"] - server.baseline < 100
    assert not any((server.data_dir / "jobs").iterdir())  # refused uploads leave nothing behind


def lying_video(kind: str, width: int, height: int, tmp_path: Path) -> bytes:
    """A real two-frame video of ``width`` x ``height`` whose container header claims 64x48: MJPEG in AVI
    (``avih``, ``strh``, ``strf`` patched) or H.264 in MP4 (``tkhd`` patched)."""
    import av

    path = tmp_path / f"lie.{kind}"
    with av.open(str(path), "w", format=kind) as c:
        s = c.add_stream("mjpeg" if kind == "avi" else "libx264", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuvj420p" if kind == "avi" else "yuv420p"
        for _ in range(2):
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")))
        c.mux(s.encode())
    data = bytearray(path.read_bytes())
    if kind == "avi":
        at = data.index(b"avih") + 8
        data[at + 32 : at + 40] = struct.pack("<II", 64, 48)
        at = data.index(b"strh") + 8
        data[at + 48 : at + 56] = struct.pack("<hhhh", 0, 0, 64, 48)
        at = data.index(b"strf") + 8
        data[at + 4 : at + 12] = struct.pack("<ii", 64, 48)
    else:
        at = data.index(b"tkhd") + 4
        data[at + 76 : at + 84] = struct.pack(">II", 64 << 16, 48 << 16)
    return bytes(data)


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_video_whose_header_lies_about_its_frame_size_is_refused_from_the_codec(server, tmp_path, kind):
    from emolens.live.container import coded_frame_size, frame_size

    payload = lying_video(kind, 4112, 4112, tmp_path)
    (tmp_path / "v").write_bytes(payload)
    assert frame_size(tmp_path / "v") == (64, 48) and coded_frame_size(tmp_path / "v") == (4112, 4112)
    ctype = "video/x-msvideo" if kind == "avi" else "video/mp4"
    r = httpx.post(f"{server.url}/v1/video", files={"file": (f"v.{kind}", payload, ctype)}, timeout=30)
    assert r.status_code == 413, r.text
    assert "4112x4112 (the header says 64x48)" in r.json()["detail"] and "4096 px" in r.json()["detail"]
    assert not any((server.data_dir / "jobs").iterdir())
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def _wait(url: str, job: str, until, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = httpx.get(f"{url}/v1/video/{job}", timeout=10).json()
        if until(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"job {job} never got there: {st}")


def test_jobs_survive_kill_9_and_restart(tmp_path):
    """kill -9 while a job runs and another waits: after a restart on the same --data-dir the running job is
    `failed` (interrupted) with its partial results downloadable, the waiting one runs to the end."""
    data = tmp_path / "data"
    long_clip, short_clip = tmp_path / "long.mp4", tmp_path / "short.mp4"
    make_clip([sample_face()], long_clip, n_frames=600, size=(640, 480))
    make_clip([sample_face()], short_clip, n_frames=10, size=(320, 240))
    srv = Server(data)
    try:
        post = lambda p: httpx.post(  # noqa: E731
            f"{srv.url}/v1/video", files={"file": (p.name, p.read_bytes(), "video/mp4")}, timeout=30
        ).json()["id"]
        running = post(long_clip)
        _wait(srv.url, running, lambda st: st["status"] == "running" and st["frames_done"] >= 10)
        waiting = post(short_clip)
        assert httpx.get(f"{srv.url}/v1/video/{waiting}").json()["status"] == "queued"
    finally:
        srv.stop(signal.SIGKILL)
    srv = Server(data)
    try:
        st = _wait(srv.url, running, lambda st: st["status"] in ("done", "failed"))
        assert st["status"] == "failed" and st["error"].startswith("interrupted")
        rows = httpx.get(f"{srv.url}/v1/video/{running}/results.csv").text.splitlines()
        # partial results, downloadable: a row per face of the frames done before the kill (>= 10 frames)
        assert rows[0].startswith("frame,") and len(rows) > 5
        assert httpx.get(f"{srv.url}/v1/video/{running}/annotated.mp4").content[4:8] == b"ftyp"
        done = _wait(srv.url, waiting, lambda st: st["status"] in ("done", "failed"))
        assert done["status"] == "done" and done["frames_done"] == 10
        text = httpx.get(f"{srv.url}/v1/video/{waiting}").text
        assert str(tmp_path) not in text and str(data) not in text  # no server paths in responses
    finally:
        srv.stop()


def test_slow_bodies_cannot_hold_the_admission_slots(tmp_path):
    """Slowloris: more connections than --max-pending send headers and 100 body bytes, then nothing. Each is
    dropped (408) once its body stalls for --body-timeout, and a normal upload is served meanwhile or right after."""
    srv = Server(tmp_path / "d", "--max-pending", "2", "--body-timeout", "2")
    try:
        boundary = "xx"
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            "\r\nContent-Length: 500000\r\n\r\n"
        )
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        part += "Content-Type: image/jpeg\r\n\r\n"
        socks = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(head.encode() + part.encode() + b"\xff" * 100)
            socks.append(s)
        replies = []
        for s in socks:
            s.settimeout(30)
            replies.append(s.recv(4096))
            s.close()
        codes = sorted(int(r.split(b" ", 2)[1]) for r in replies)
        # the two admitted ones stall and are dropped; the others were refused as busy, or dropped the same way
        assert codes.count(408) >= 2 and set(codes) <= {408, 503}, replies
        face = cv2.imencode(".jpg", cv2.copyMakeBorder(sample_face(), 60, 60, 90, 90, cv2.BORDER_CONSTANT))[1]
        r = httpx.post(f"{srv.url}/v1/predict", files={"file": ("f.jpg", face.tobytes(), "image/jpeg")}, timeout=30)
        assert r.status_code == 200 and len(r.json()["faces"]) == 1
    finally:
        srv.stop()


def test_the_disk_quota_is_reserved_for_each_upload_before_its_body_is_read(tmp_path):
    """Parallel uploads cannot each pass a quota checked once: each reserves its Content-Length first."""
    srv = Server(tmp_path / "d", "--max-disk-gb", "0.01", "--max-jobs", "16", "--body-timeout", "2")
    try:
        head = (
            "POST /v1/video HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {4 * MB}\r\n\r\n--xx\r\n"
        )
        socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(4)]
        for s in socks:
            s.sendall(head.encode())
            time.sleep(0.2)
        replies = []
        for s in socks:
            s.settimeout(30)
            replies.append(s.recv(4096))
            s.close()
        codes = [int(r.split(b" ", 2)[1]) for r in replies]
        # 10.7 MB of quota: two 4 MB uploads fit (they stall and are dropped, 408), the next two are refused at once
        assert sorted(codes) == [408, 408, 507, 507], replies
        assert b"disk quota" in next(r for r in replies if b" 507 " in r)
        # every reservation was given back: a new upload is taken (and refused only as not being a video)
        r = httpx.post(f"{srv.url}/v1/video", files={"file": ("v.mp4", b"junk" * 100, "video/mp4")}, timeout=30)
        assert r.status_code == 400
    finally:
        srv.stop()
