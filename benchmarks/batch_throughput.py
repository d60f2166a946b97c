"""`emolens batch` throughput on a fixed collection: in-process vs Ray with 1 and 2 workers.

The collection: 20 generated 640x480 videos of real film faces (SFEW, 1-3 people each, moving on a textured
background) and 1,000 real face photos (all 860 SFEW training images plus 140 CK+ faces). Every
configuration runs `emolens.batch.run_batch` in its own fresh process on a fresh output folder, YuNet
detector, and must produce the same faces table as the first one.

    python benchmarks/batch_throughput.py [--frames 60] [--videos 20] [--images 1000]
    python benchmarks/batch_throughput.py --verify   # the batch table == `emolens live` / `predict` per file

Reports per configuration: wall time (process start to tables written), start-up (wall minus the time the
workers spent on files: imports, Ray start, model loading), frames/s over the work and over the wall time,
and faces/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, print_table, save, shared  # noqa: E402

CONFIGS = {
    "in-process, 2 threads": {"ray": "none", "threads": 2, "omp": 2},
    "in-process, 1 thread": {"ray": "none", "threads": 1, "omp": 1},
    "ray, 1 worker x 1 CPU": {"ray": "auto", "workers": 1, "omp": 1},  # (Ray gives each worker 1 thread too)
    "ray, 2 workers x 1 CPU": {"ray": "auto", "workers": 2, "omp": 1},
}


def build_collection(root: Path, videos: int, frames: int, images: int) -> Path:
    import cv2
    import numpy as np

    from emolens.live.synthetic import make_clip

    marker = root / f"collection_{videos}x{frames}_{images}.done"
    if marker.exists():
        return root
    sfew = sorted(shared("data/sfew/Train").rglob("*.png"))
    ck = sorted(shared("data/ckplus/CK+48").rglob("*.png"))
    (root / "photos").mkdir(parents=True, exist_ok=True)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for p in (sfew + ck)[:images]:
        (root / "photos" / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    rng = np.random.default_rng(0)
    for k in range(videos):
        people = [cv2.imread(str(sfew[i])) for i in rng.choice(len(sfew), 1 + k % 3, replace=False)]
        make_clip(people, root / "videos" / f"clip_{k:02d}.mp4", n_frames=frames, seed=k)
    marker.write_text("ok")
    return root


def run_one(config: str, collection: str, out: str, yunet: str) -> dict:
    """One configuration, in this (fresh) process."""
    t0 = time.perf_counter()
    from emolens.batch import BatchOptions, run_batch
    from emolens.live.settings import PipelineSettings

    c = CONFIGS[config]
    settings = PipelineSettings(detector="yunet", detector_model=yunet, threads=c.get("threads", 0))
    r = run_batch(
        [collection],
        BatchOptions(out=out, settings=settings, ray=c["ray"], workers=c.get("workers", 0), progress=False),
    )
    wall = time.perf_counter() - t0
    return {
        "config": config,
        "executor": r["executor"],
        "files": r["processed"],
        "frames": r["frames"],
        "faces": r["faces"],
        "wall_s": round(wall, 2),
        "startup_s": round(wall - r["work_seconds"], 2),
        "work_s": r["work_seconds"],
        "frames_per_s": r["frames_per_s"],
        "frames_per_s_wall": round(r["frames"] / wall, 2),
        "faces_per_s": round(r["faces"] / r["work_seconds"], 1),
        "failed": r["failed_now"],
    }


def verify(collection: Path, table: dict, yunet: str, work: Path) -> dict:
    """Compare a batch faces table with `emolens live --csv` on every video and `emolens predict --json` on the
    photo folder (the same detector; the CLI rounds probabilities to 5 decimals and boxes to 0.1 px)."""
    import csv

    from emolens.cli import main as cli

    flags = ["--detector", "yunet", "--detector-model", yunet, "-q"]
    rows_of: dict[str, list[int]] = {}
    for i, f in enumerate(table["file"]):
        rows_of.setdefault(f, []).append(i)
    classes = [k[2:] for k in table if k.startswith("p_")]
    out = {"videos": 0, "images": 0, "faces": 0, "count_mismatch": 0, "label_mismatch": 0, "max_prob_diff": 0.0}

    def compare(mine: list[int], labels: list[str], probs: list[list[float]]) -> None:
        out["faces"] += len(labels)
        if len(mine) != len(labels):
            out["count_mismatch"] += 1
            return
        for i, label, p in zip(mine, labels, probs, strict=True):
            out["label_mismatch"] += table["label"][i] != label
            diff = max(abs(table[f"p_{c}"][i] - q) for c, q in zip(classes, p, strict=True))
            out["max_prob_diff"] = max(out["max_prob_diff"], diff)

    for video in sorted((collection / "videos").glob("*.mp4")):
        rows_csv = work / "verify" / f"{video.stem}.csv"
        cli(["live", "--source", str(video), "--csv", str(rows_csv), *flags])
        live = list(csv.DictReader(open(rows_csv)))
        compare(
            rows_of.get(str(video.resolve()), []),
            [r["label"] for r in live],
            [[float(r[f"p_{c}"]) for c in classes] for r in live],
        )
        out["videos"] += 1
    pred = work / "verify" / "photos.json"
    cli(["predict", str(collection / "photos"), "--json", str(pred), *flags])
    for rec in json.loads(pred.read_text())["images"]:
        faces = rec["faces"]
        compare(
            rows_of.get(str(Path(rec["file"]).resolve()), []),
            [f["label"] for f in faces],
            [list(f["probs"].values()) for f in faces],
        )
        out["images"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--frames", type=int, default=60, help="frames per video")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--work", default=str(HERE / "_work" / "batch"))
    ap.add_argument("--verify", action="store_true", help="check the in-process table against live/predict")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    yunet = str(shared("models/face_detection_yunet_2026may.onnx"))
    work = Path(a.work)
    collection = work / "collection"
    if a.one:
        print(json.dumps(run_one(a.one, str(collection), a.out, yunet)))
        return
    build_collection(collection, a.videos, a.frames, a.images)
    rows, tables = [], {}
    import shutil

    import pyarrow.parquet as pq

    if a.verify:
        out = work / "out_verify"
        if not (out / "faces.parquet").is_file():
            print(json.dumps(run_one("in-process, 2 threads", str(collection), str(out), yunet)), file=sys.stderr)
        result = verify(collection, pq.read_table(out / "faces.parquet").to_pydict(), yunet, work)
        print_table([result], list(result))
        save("batch_throughput_verify", {"collection": str(collection.relative_to(HERE.parent)), **result})
        return

    for k, config in enumerate(a.configs):
        out = work / f"out_{k}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--one", config, "--out", str(out), "--work", str(work)]
        env = {**os.environ, "OMP_NUM_THREADS": str(CONFIGS[config]["omp"])}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            sys.exit(f"{config} failed:\n{p.stderr[-3000:]}")
        row = json.loads(p.stdout.strip().splitlines()[-1])
        tables[config] = pq.read_table(out / "faces.parquet")
        row["same_faces_as_first"] = tables[config].equals(tables[a.configs[0]])
        rows.append(row)
        print(f"{config}: {row['frames_per_s']} frames/s", file=sys.stderr)
    base = next((r for r in rows if r["config"] == "in-process, 1 thread"), None)
    one = next((r for r in rows if r["config"] == "ray, 1 worker x 1 CPU"), None)
    two = next((r for r in rows if r["config"] == "ray, 2 workers x 1 CPU"), None)
    extra = {}
    if base and one:
        extra["ray_overhead_work_pct"] = round(100 * (base["frames_per_s"] / one["frames_per_s"] - 1), 1)
        extra["ray_extra_startup_s"] = round(one["startup_s"] - base["startup_s"], 2)
    if one and two:
        extra["speedup_2_vs_1_workers"] = round(two["frames_per_s"] / one["frames_per_s"], 3)
        extra["speedup_2_vs_1_workers_wall"] = round(two["frames_per_s_wall"] / one["frames_per_s_wall"], 3)
    cols = ["config", "files", "frames", "faces", "wall_s", "startup_s", "frames_per_s", "frames_per_s_wall"]
    print_table(rows, [*cols, "faces_per_s", "failed", "same_faces_as_first"])
    for k, v in extra.items():
        print(f"{k}: {v}")
    save(
        "batch_throughput",
        {"collection": {"videos": a.videos, "frames_per_video": a.frames, "images": a.images}, "rows": rows, **extra},
    )


if __name__ == "__main__":
    main()
