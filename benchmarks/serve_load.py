"""Load test of ``POST /v1/predict`` on loopback: requests/second and p50/p95 latency, 1 and 4 workers.

Starts ``emolens serve`` itself, sends a bounded number of requests (the sample face, 220x230 JPEG) from
``--concurrency`` client threads, then stops the server. During the load a separate client process polls
``/healthz`` every 50 ms (its p95 latency is reported), and afterwards 30 fresh connections to ``/healthz``
count the worker processes that answer (``pids``). Status codes other than 200 (503 when more than
``--max-pending`` predictions wait) are counted.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 8] [--workers 1,4]
    python benchmarks/serve_load.py --concurrency 64 --workers 1 --name serve_load_overload   # overload
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


def run(workers: int, n: int, conc: int, detector: str, timeout: float) -> dict:
    port = free_port()
    data = tempfile.mkdtemp(prefix="emolens-load-")
    srv = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emolens.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--detector",
            detector,
            "--data-dir",
            data,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while time.time() - t0 < 120:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", default="1,4")
    ap.add_argument("--detector", default="haar")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--name", default="serve_load", help="results/<name>.json")
    a = ap.parse_args()
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
