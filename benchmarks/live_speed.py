"""End-to-end live speed on 640x480 video with 1, 3 and 8 real faces, per detector.

The clips are built from clear FER+ test faces (>= 8 of 10 annotators agree), scaled up and moving on a
textured background, so the run also reports detection recall and in-the-loop accuracy against the
known boxes and labels. Each configuration runs in its own process, so peak memory is its own.

``--load`` repeats the runs beside a reproducible load, started before and stopped after each configuration:
``busy`` (one busy-loop process per core) or ``mixed`` (one busy loop and a second PyTorch process multiplying
small matrices in a loop on every core, with OpenMP's default wait policy, as another user program would).
``--threads-set`` compares thread settings in the same run: ``default`` (what the CLI does), ``1``, ``2``...,
and ``before`` (the default with OpenMP's wait policy left to the library, as emolens ran before it set it).
``--runtimes`` compares what runs the classifier in the same run: ``auto`` (what the CLI does), ``torch``,
``onnxruntime``.

    python benchmarks/live_speed.py [--frames 150] [--checkpoint PATH]
    python benchmarks/live_speed.py --detectors yunet --faces 1,8 --load none,mixed --threads-set default,1,2,before
    python benchmarks/live_speed.py --detectors yunet --faces 1,8 --runtimes torch,onnxruntime --repeat 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save, shared  # noqa: E402


def clear_faces(n: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    from emolens.data import read_image
    from emolens.labels import FERPLUS_COLUMNS

    d = shared("data/ferplus") / "data" / "FER2013Test"
    out = []
    for row in csv.reader(open(d / "label.csv")):
        v = [int(x) for x in row[2:12]]
        if max(v[:8]) >= 8:
            out.append((row[0], FERPLUS_COLUMNS[int(np.argmax(v[:8]))]))
    rng = np.random.default_rng(seed)
    # a mix of emotions, not just the (majority) happy/neutral faces
    by_label: dict[str, list] = {}
    for f, y in out:
        by_label.setdefault(y, []).append(f)
    labels = sorted(by_label)
    picks = []
    for k in range(n):
        y = labels[k % len(labels)]
        f = by_label[y][rng.integers(len(by_label[y]))]
        picks.append((read_image(d / f, 1), y))
    return picks


def run_one(
    detector: str,
    n_faces: int,
    frames: int,
    checkpoint: str | None,
    yunet: str,
    margin: float,
    threads: int,
    runtime: str = "auto",
) -> dict:
    from emolens.live.detectors import create_detector
    from emolens.live.pipeline import Pipeline
    from emolens.live.settings import PipelineSettings
    from emolens.live.synthetic import make_clip

    faces = clear_faces(n_faces)
    tmp = Path(tempfile.mkdtemp())
    clip = tmp / "in.avi"
    truth = make_clip([f for f, _ in faces], clip, n_frames=frames)
    labels = [y for _, y in faces]
    # threads 0: the classifier's own automatic choice, as the CLI makes it (one thread for 1-2 faces, else the cores)
    clf = PipelineSettings(checkpoint=checkpoint, runtime=runtime, threads=threads).classifier()
    from emolens.live.crop import crop_faces
    from emolens.live.detectors import Face

    # the same faces, no detector: each whole 48 px face resized to the model's input (as --whole-image)
    whole = [
        crop_faces(f, [Face(np.array([0, 0, f.shape[1], f.shape[0]]))], clf.preprocess, exact=True) for f, _ in faces
    ]
    direct = clf.predict(np.concatenate(whole)).argmax(1)
    direct_acc = float(np.mean([clf.classes[p] == y for p, y in zip(direct, labels, strict=True)]))
    pipe = Pipeline(clf, create_detector(detector, model=yunet), margin=margin)
    # what `emolens live --output` does, built on Pipeline.stream: results come back per frame, no CSV re-read
    from emolens.live.render import draw_faces, draw_fps
    from emolens.live.writers import open_video_writer

    by_frame: dict[int, list] = {}
    video, n, t0 = None, 0, time.perf_counter()
    for fr in pipe.stream(str(clip)):
        by_frame[fr.index] = [
            {"x": r.box[0], "y": r.box[1], "w": r.box[2], "h": r.box[3], "label": r.label} for r in fr.faces
        ]
        n += 1
        t1 = time.perf_counter()
        draw_faces(fr.frame, fr.faces, pipe.classes)
        draw_fps(fr.frame, n / (t1 - t0))
        pipe.timer.add("draw", time.perf_counter() - t1)
        t1 = time.perf_counter()
        if video is None:
            video = open_video_writer(tmp / "out.mp4", 25.0, (fr.frame.shape[1], fr.frame.shape[0]))
        video.write(fr.frame)
        pipe.timer.add("encode", time.perf_counter() - t1)
    video.release()
    elapsed = time.perf_counter() - t0
    s = {"frames_read": n, "fps": round(n / elapsed, 2), "stage_ms": pipe.timer.ms_per_frame(n)}
    hit = correct = total = false_pos = 0
    for t, gt in enumerate(truth):
        cand = by_frame.get(t, [])
        used = set()
        for k, box in gt:
            total += 1
            x, y, w, h = box
            for j, r in enumerate(cand):
                cx, cy = float(r["x"]) + float(r["w"]) / 2, float(r["y"]) + float(r["h"]) / 2
                if j not in used and x <= cx <= x + w and y <= cy <= y + h and float(r["w"]) >= 0.3 * w:
                    used.add(j)
                    hit += 1
                    correct += r["label"] == labels[k]
                    break
        false_pos += len(cand) - len(used)
    st = s["stage_ms"]
    return {
        "detector": detector,
        "runtime": clf.backend,
        "faces": n_faces,
        "frames": s["frames_read"],
        "fps": s["fps"],
        "ms_decode": st.get("decode", 0),
        "ms_detect": st.get("detect", 0),
        "ms_classify": st.get("classify", 0),
        "ms_track": st.get("track", 0),
        "ms_draw": st.get("draw", 0),
        "ms_encode": st.get("encode", 0),
        "recall": hit / max(total, 1),
        "false_pos_per_frame": false_pos / max(len(truth), 1),
        "accuracy_direct": direct_acc,
        "margin": margin,
        "torch_threads": __import__("torch").get_num_threads(),
        "accuracy_in_loop": correct / max(hit, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


#: Load processes, each bounded in time (they also stop when the benchmark stops them after a configuration).
BUSY = "import time\nt = time.time() + {s}\nwhile time.time() < t:\n    pass\n"
TORCH_LOOP = (
    "import time, torch\ntorch.set_num_threads({cores})\na = torch.randn(96, 96)\nt = time.time() + {s}\n"
    "while time.time() < t:\n    for _ in range(50):\n        a = torch.tanh(a @ a)\n"
)


def start_load(kind: str, seconds: int = 900) -> list[subprocess.Popen]:
    """Start load ``kind`` (``none``, ``busy``, ``mixed``); returns the processes to stop."""
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME", "OMP_NUM_THREADS")}
    if kind == "none":
        return []
    if kind == "busy":
        codes = [BUSY] * cores
    elif kind == "mixed":
        codes = [BUSY, TORCH_LOOP]
    else:
        raise SystemExit(f"--load: unknown load {kind!r}; use none, busy or mixed")
    procs = [
        subprocess.Popen([sys.executable, "-c", c.format(s=seconds, cores=cores)], env=env, stdout=subprocess.DEVNULL)
        for c in codes
    ]
    time.sleep(2.0)  # let the load reach its steady state (PyTorch's import takes a moment)
    return procs


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def _run_config(a: argparse.Namespace, load: str, detector: str, n: int, config: str) -> dict:
    """One configuration (``THREADS_SETTING/RUNTIME``) in its own process, beside load ``load``."""
    setting, runtime = config.split("/")
    threads = "0" if setting in ("default", "before") else setting
    cmd = [sys.executable, __file__, "--one", f"{detector}:{n}", "--frames", str(a.frames)]
    cmd += ["--margin", str(a.margin), "--threads", threads, "--runtimes", runtime]
    if a.checkpoint:
        cmd += ["--checkpoint", a.checkpoint]
    env = dict(os.environ)
    if setting == "before":  # present but empty: emolens leaves it and OpenMP uses its own default
        env["OMP_WAIT_POLICY"] = env["KMP_BLOCKTIME"] = ""
    procs = start_load(load)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    finally:
        stop_load(procs)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--checkpoint")
    ap.add_argument("--detectors", default="haar,yunet")
    ap.add_argument("--faces", default="1,3,8")
    ap.add_argument("--margin", type=float, default=0.0, help="face-box margin per side (as the CLI's --margin)")
    ap.add_argument("--threads", type=int, default=0, help="classifier threads (0: the CLI's automatic choice)")
    ap.add_argument("--load", default="none", help="comma list of loads to run beside: none, busy, mixed")
    ap.add_argument("--threads-set", help="comma list of thread settings to compare: default, before, 1, 2, ...")
    ap.add_argument("--runtimes", default="auto", help="comma list of classifier runtimes: auto, torch, onnxruntime")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration, interleaved; median FPS kept")
    ap.add_argument("--name", default="live_speed", help="results/<name>.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    yunet = str(shared("models/face_detection_yunet_2026may.onnx"))
    if a.one:
        d, n = a.one.split(":")
        print(json.dumps(run_one(d, int(n), a.frames, a.checkpoint, yunet, a.margin, a.threads, a.runtimes)))
        return
    rows = []
    threads_set = a.threads_set.split(",") if a.threads_set else [str(a.threads or "default")]
    settings = [f"{t}/{r}" for t in threads_set for r in a.runtimes.split(",")]
    for load in a.load.split(","):
        for d in a.detectors.split(","):
            for n in map(int, a.faces.split(",")):
                runs: dict[str, list[dict]] = {setting: [] for setting in settings}
                for r in range(a.repeat):  # interleaved, rotated: a slow spell of the machine hits every setting
                    for setting in settings[r % len(settings) :] + settings[: r % len(settings)]:
                        runs[setting].append(_run_config(a, load, d, n, setting))
                for setting in settings:
                    fps = [x["fps"] for x in runs[setting]]
                    mid = sorted(runs[setting], key=lambda x: x["fps"])[len(fps) // 2]
                    t, r = setting.split("/")
                    rows.append({"load": load, "threads_setting": t, "runtime_asked": r, **mid, "fps_runs": fps})
                    print(f"  {load} {d} {n} faces, threads {t}, runtime {r}: FPS {fps}", file=sys.stderr)
    print_table(
        rows,
        [
            "load",
            "threads_setting",
            "runtime",
            "detector",
            "faces",
            "fps",
            "ms_decode",
            "ms_detect",
            "ms_classify",
            "ms_track",
            "ms_draw",
            "ms_encode",
            "recall",
            "false_pos_per_frame",
            "accuracy_in_loop",
            "accuracy_direct",
            "torch_threads",
            "peak_rss_mb",
        ],
    )
    save(
        a.name,
        {
            "command": " ".join(sys.argv),
            "margin": a.margin,
            "frames": a.frames,
            "load": a.load,
            "repeat": a.repeat,
            "video": "640x480 synthetic, clear FER+ test faces",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
