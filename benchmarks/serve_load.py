"""Load test of ``POST /v1/predict`` on loopback: requests/second and p50/p95 latency, 1 and 4 workers.

Starts ``emolens serve`` itself, sends a bounded number of requests (the sample face, 220x230 JPEG) from
``--concurrency`` client threads, then stops the server.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 8] [--workers 1,4]
"""

from __future__ import annotations

import argparse
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

            t = time.perf_counter()
            with ThreadPoolExecutor(conc) as ex:
                res = list(ex.map(one, range(n)))
            wall = time.perf_counter() - t
        lat = np.array([r[0] for r in res]) * 1000
        ok = sum(r[1] == 200 for r in res)
        return {
            "workers": workers,
            "requests": n,
            "concurrency": conc,
            "ok": ok,
            "req_s": n / wall,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "max_ms": float(lat.max()),
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
    a = ap.parse_args()
    rows = [run(int(w), a.requests, a.concurrency, a.detector, a.timeout) for w in a.workers.split(",")]
    print_table(rows, ["workers", "requests", "concurrency", "ok", "req_s", "p50_ms", "p95_ms", "max_ms"])
    save(
        "serve_load",
        {"endpoint": "POST /v1/predict", "image": "sample face 220x230 JPEG", "detector": a.detector, "rows": rows},
    )


if __name__ == "__main__":
    main()
