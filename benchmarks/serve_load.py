"""Load test of ``POST /v1/predict`` on loopback: requests/second and p50/p95 latency, 1 and 4 workers.

Starts ``emolens serve`` itself, sends a bounded number of requests (the sample face, 220x230 JPEG) from
``--concurrency`` client threads, then stops the server. During the load a separate client process polls
``/healthz`` every 50 ms (its p95 latency is reported), and afterwards 30 fresh connections to ``/healthz``
count the worker processes that answer (``pids``). Status codes other than 200 (503 when more than
``--max-pending`` predictions wait) are counted.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 8] [--workers 1,4]
    python benchmarks/serve_load.py --concurrency 64 --workers 1 --name serve_load_overload   # overload
    python benchmarks/serve_load.py --bombs [--uploads 8 --streams 16] --name serve_load_bombs

``--bombs``: the hostile case. ``--uploads`` clients each POST a 7999x7999 PNG (a blank image, 187 KB
compressed, 192 MB decoded; within the default limits) ``--rounds`` times while ``--streams`` WebSockets each
send it once and wait for the answer; reported: ``/healthz`` p50/p95/max from a separate process, the server's
peak resident memory (``VmHWM``), status codes, and how the streams ended (answered, or closed busy 1013).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402

from emolens.live.synthetic import sample_face  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(detector: str, *flags: str) -> tuple[subprocess.Popen, str, int]:
    """``emolens serve`` on a free loopback port with its own data folder, once ``/healthz`` answers (at most
    120 s); returns the process, its URL and port."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="emolens-load-")
    cmd = [sys.executable, "-m", "emolens.cli", "serve", "--port", str(port), "--detector", detector]
    srv = subprocess.Popen([*cmd, "--data-dir", data, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    return srv, url, port


def run(workers: int, n: int, conc: int, detector: str, timeout: float) -> dict:
    srv, url, _ = start_server(detector, "--workers", str(workers))
    try:
        img = cv2.imencode(".jpg", sample_face())[1].tobytes()
        with httpx.Client(timeout=timeout) as client:
            for _ in range(5 * workers):  # warm every worker
                client.post(url + "/v1/predict", files={"file": ("a.jpg", img, "image/jpeg")})

            def one(_):
                t = time.perf_counter()
                r = client.post(url + "/v1/predict", files={"file": ("a.jpg", img, "image/jpeg")})
                return time.perf_counter() - t, r.status_code

            # /healthz is polled from its own process, so the 64 client threads' GIL does not delay it
            stop = multiprocessing.Event()
            results = multiprocessing.Queue()
            poller = multiprocessing.Process(target=poll_health, args=(url, timeout, stop, results))
            poller.start()
            t = time.perf_counter()
            with ThreadPoolExecutor(conc) as ex:
                res = list(ex.map(one, range(n)))
            wall = time.perf_counter() - t
            stop.set()
            health = results.get(timeout=30)
            poller.join()
        pids = set()
        for _ in range(30):
            with httpx.Client(timeout=timeout) as fresh:
                pids.add(fresh.get(url + "/healthz").json()["pid"])
        lat = np.array([r[0] for r in res]) * 1000
        ok = [r for r in res if r[1] == 200]
        ok_lat = np.array([r[0] for r in ok]) * 1000 if ok else lat
        return {
            "workers": workers,
            "pids": len(pids),
            "requests": n,
            "concurrency": conc,
            "ok": len(ok),
            "status_503": sum(r[1] == 503 for r in res),
            "other_errors": sum(r[1] not in (200, 503) for r in res),
            "ok_req_s": len(ok) / wall,
            "p50_ms": float(np.percentile(ok_lat, 50)),
            "p95_ms": float(np.percentile(ok_lat, 95)),
            "max_ms": float(lat.max()),
            "healthz_p95_ms": float(np.percentile(np.array(health) * 1000, 95)) if health else None,
        }
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def poll_health(url: str, timeout: float, stop, results) -> None:
    """Time ``GET /healthz`` every 50 ms until ``stop`` is set; put the list of seconds on ``results``."""
    health: list[float] = []
    with httpx.Client(timeout=timeout) as hc:
        while not stop.is_set():
            t = time.perf_counter()
            hc.get(url + "/healthz")
            health.append(time.perf_counter() - t)
            time.sleep(0.05)
    results.put(health)


def big_png(side: int = 7999) -> bytes:
    return cv2.imencode(".png", np.zeros((side, side, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


def hdr_bomb() -> bytes:
    """A Radiance HDR header claiming 32000x4000 (128 MP; 1.5 GB as float RGB), 8 MB of run-length data."""
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4000 +X 32000\n" + b"\x02\x02" * (4 * 2**20)


def lying_avi(side: int = 16000) -> bytes:
    """An AVI whose headers (``avih``, ``strh``, ``strf``) say 320x240 and whose MJPEG frame says ``side`` x
    ``side`` in its own JPEG header (SOF0; FFmpeg's encoder stops below 16000, so a 1024 px frame is encoded
    and its SOF0 rewritten: a decoder allocates the frame from it)."""
    import struct

    import av

    path = Path(tempfile.mkdtemp(prefix="emolens-bomb-")) / "lie.avi"
    with av.open(str(path), "w", format="avi") as c:
        s = c.add_stream("mjpeg", rate=10)
        s.width, s.height, s.pix_fmt = 1024, 1024, "yuvj420p"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.full((1024, 1024, 3), 90, np.uint8), format="rgb24")))
        c.mux(s.encode())
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    for box, offset, fmt in ((b"avih", 32, "<II"), (b"strh", 52, "<hh"), (b"strf", 4, "<ii")):
        at = data.index(box) + 8 + offset
        data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, 320, 240)
    return bytes(data)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_bombs(uploads: int, rounds: int, streams: int, detector: str, timeout: float, flags: list[str]) -> dict:
    """``uploads`` x ``rounds`` big-PNG predictions and ``streams`` WebSocket frames at once (see the docstring)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    srv, url, port = start_server(detector, *flags)
    png = big_png()
    try:
        face = cv2.imencode(".jpg", sample_face())[1].tobytes()
        httpx.post(url + "/v1/predict", files={"file": ("a.jpg", face, "image/jpeg")}, timeout=timeout)  # warm
        rss_idle = peak_rss_mb(srv.pid)
        refusals = {}  # the two bombs that used to be decoded: status, seconds, peak memory growth
        for name, endpoint, upload in (
            ("hdr_32000x4000_as_png", "/v1/predict", ("b.png", hdr_bomb(), "image/png")),
            ("avi_mjpeg_16000x16000_header_320x240", "/v1/video", ("v.avi", lying_avi(), "video/x-msvideo")),
        ):
            t = time.perf_counter()
            r = httpx.post(url + endpoint, files={"file": upload}, timeout=timeout)
            refusals[name] = {"status": r.status_code, "seconds": round(time.perf_counter() - t, 3),
                              "peak_rss_growth_mb": round(peak_rss_mb(srv.pid) - rss_idle, 1)}  # fmt: skip

        def upload(_):
            codes = []
            with httpx.Client(timeout=timeout) as c:
                for _ in range(rounds):
                    codes.append(c.post(url + "/v1/predict", files={"file": ("big.png", png, "image/png")}).status_code)
            return codes

        def stream(_):
            try:
                with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=timeout, max_size=None) as ws:
                    ws.send(png)
                    reply = ws.recv(timeout=timeout)
                    return "answered" if '"frame"' in reply else "error"
            except ConnectionClosed as e:
                return f"closed {e.rcvd.code if e.rcvd else '?'}"

        stop = multiprocessing.Event()
        results = multiprocessing.Queue()
        poller = multiprocessing.Process(target=poll_health, args=(url, timeout, stop, results))
        poller.start()
        t = time.perf_counter()
        with ThreadPoolExecutor(uploads + streams) as ex:
            up = ex.map(upload, range(uploads))
            ws = ex.map(stream, range(streams))
            codes = [c for cs in up for c in cs]
            ends = list(ws)
        wall = time.perf_counter() - t
        stop.set()
        health = np.array(results.get(timeout=30)) * 1000
        poller.join()
        return {
            "uploads": uploads,
            "rounds": rounds,
            "streams": streams,
            "flags": " ".join(flags),
            "wall_s": round(wall, 1),
            "upload_codes": {str(k): codes.count(k) for k in sorted(set(codes))},
            "stream_ends": {k: ends.count(k) for k in sorted(set(ends))},
            "healthz_n": len(health),
            "healthz_p50_ms": float(np.percentile(health, 50)),
            "healthz_p95_ms": float(np.percentile(health, 95)),
            "healthz_max_ms": float(health.max()),
            "refusals": refusals,
            "rss_after_warmup_mb": rss_idle,
            "peak_rss_mb": peak_rss_mb(srv.pid),
        }
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--detector", default="haar")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--name", default="serve_load", help="results/<name>.json")
    ap.add_argument("--bombs", action="store_true", help="big-PNG uploads and WebSocket frames (see above)")
    ap.add_argument("--uploads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--serve-flags", default="", help="extra `emolens serve` flags, e.g. '--max-streams 16'")
    a = ap.parse_args()
    if a.bombs:
        flags = a.serve_flags.split()
        rows = [run_bombs(a.uploads, a.rounds, a.streams, a.detector, a.timeout, flags)]
        print_table(rows, list(rows[0]))
        image = "blank 7999x7999 PNG, compression 9"
        save(a.name, {"command": " ".join(sys.argv), "endpoint": "POST /v1/predict + /v1/stream", "image": image,
                      "detector": a.detector, "rows": rows})  # fmt: skip
        return
    rows = [run(int(w), a.requests, a.concurrency, a.detector, a.timeout) for w in a.workers.split(",")]
    print_table(rows, list(rows[0]))
    save(
        a.name,
        {
            "command": " ".join(sys.argv),
            "endpoint": "POST /v1/predict",
            "image": "sample face 220x230 JPEG",
            "detector": a.detector,
            "note": "server threads: the default (cores // workers, at least 1); client on the same machine",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
