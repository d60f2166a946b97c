"""Train several configurations at once on one GPU, within a wall-clock budget (how the bundled model was made).

Each configuration is a plain ``emolens train`` run (``--augment-on-device``: faces held on the GPU, augmented
there). All runs start together; once every run has timed two epochs *while sharing the GPU*, each is stopped
and resumed with the number of epochs that fits the budget (the warm-up epochs do not depend on the total,
so this equals a run started with that ``--epochs``). At the end each run's ``last.pt`` / ``best.pt`` are
kept as inference checkpoints.

Two steps, for a GPU machine that does not hold the datasets (e.g. a rented one):

    python benchmarks/experiments/gpu_sweep.py pack --out .gpu/data.npz   # here: FER+ / CK+ / SFEW faces, lossless
    python benchmarks/experiments/gpu_sweep.py run --pack .gpu/data.npz --out OUT --budget 470   # there

``pack`` stores every training and validation face of ``--extra-data``'s combined dataset once, as lossless
WebP (the decoded 48 px crops, exactly what the trainer's cache holds); ``run`` rebuilds the dataset folders
(labels and empty image files) and the decoded-face cache from it, so ``emolens train`` reads no image file.
With the datasets on disk, skip ``pack`` and pass ``--shared``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

COMMON = [
    "--dataset", "ferplus", "--soft-labels", "--loss", "logit_adjusted", "--select-metric", "balanced_accuracy",
    "--augment-on-device", "--warmup-epochs", "2", "--no-progress", "--workers", "2",
]  # fmt: skip
#: name -> extra ``emolens train`` flags
CONFIGS = {
    "wide_a": ["--model", "fernet_wide", "--batch-size", "128", "--lr", "2e-3", "--weight-decay", "0.05"],
    "wide_mix": ["--model", "fernet_wide", "--batch-size", "128", "--lr", "2e-3", "--weight-decay", "0.05",
                 "--cutmix", "1.0", "--mixup", "0.2"],
    "base_a": ["--model", "fernet", "--batch-size", "128", "--lr", "2e-3", "--weight-decay", "0.05"],
    "wide_v2": ["--model", "fernet_wide", "--batch-size", "64", "--lr", "1e-3", "--weight-decay", "1e-4",
                "--seed", "1"],
    # distillation: each member of --teacher (an ensemble) fine-tuned towards the whole ensemble
    "kd_a": ["--model", "fernet_wide", "--batch-size", "128", "--lr", "1e-3", "--weight-decay", "0.05",
             "--teacher", "{teacher}", "--init", "{member0}", "--kd-weight", "0.5"],
    "kd_mix": ["--model", "fernet_wide", "--batch-size", "128", "--lr", "1e-3", "--weight-decay", "0.05",
               "--teacher", "{teacher}", "--init", "{member1}", "--kd-weight", "0.5", "--cutmix", "1.0",
               "--mixup", "0.2"],
}  # fmt: skip
EXTRA = ["ckplus={ck}*3", "sfew={sfew}*3"]


def _datasets(ferplus: str, ck: str, sfew: str, cache: bool = False):
    from emolens.data import open_dataset

    extra = [e.format(ck=ck, sfew=sfew) for e in EXTRA]
    return {s: open_dataset("ferplus", ferplus, s, extra=extra, cache=cache) for s in ("train", "val")}


def pack(a: argparse.Namespace) -> None:
    import cv2

    shared = Path(a.shared)
    roots = {k: shared / "data" / k for k in ("ferplus", "ckplus", "sfew")}
    names, blobs, csvs = [], [], {}
    seen = set()
    for ds in _datasets(str(roots["ferplus"]), str(roots["ckplus"]), str(roots["sfew"]), cache=True).values():
        for i, s in enumerate(ds.samples):
            rel = str(Path(s.path).relative_to(shared / "data"))
            if rel in seen:
                continue
            seen.add(rel)
            ok, buf = cv2.imencode(".webp", ds.load_face(i), [cv2.IMWRITE_WEBP_QUALITY, 101])  # 101: lossless
            assert ok
            names.append(rel)
            blobs.append(buf.tobytes())
    for split_dir in ("FER2013Train", "FER2013Valid"):
        p = roots["ferplus"] / "data" / split_dir / "label.csv"
        if not p.is_file():
            p = roots["ferplus"] / split_dir / "label.csv"
        csvs[split_dir] = p.read_bytes()
    # every file of the folder-listed sets (test ones too, as empty files there): their splits are made from the list
    listed = sorted(str(f.relative_to(shared / "data")) for k in ("ckplus", "sfew") for f in roots[k].rglob("*.png"))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        a.out,
        names=np.frombuffer("\n".join(names).encode(), np.uint8),
        listed=np.frombuffer("\n".join(listed).encode(), np.uint8),
        offsets=offsets,
        blob=np.frombuffer(b"".join(blobs), np.uint8),
        **{f"csv_{k}": np.frombuffer(zlib.compress(v, 9), np.uint8) for k, v in csvs.items()},
    )
    print(f"{a.out}: {len(names)} faces, {Path(a.out).stat().st_size / 1e6:.1f} MB")


def unpack(pack_path: str, data: Path, cache_dir: Path) -> tuple[str, str, str]:
    """Dataset folders with labels and empty image files, plus the decoded-face cache; returns the roots."""
    import cv2

    from emolens.data.cache import cache_key

    z = np.load(pack_path)
    names, offsets, blob = z["names"].tobytes().decode().split("\n"), z["offsets"], z["blob"]
    for k in ("FER2013Train", "FER2013Valid"):
        d = data / "ferplus" / "data" / k
        d.mkdir(parents=True, exist_ok=True)
        (d / "label.csv").write_bytes(zlib.decompress(z[f"csv_{k}"].tobytes()))
    for rel in z["listed"].tobytes().decode().split("\n"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).touch()
    faces = {}
    for i, rel in enumerate(names):
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
        faces[str(p)] = cv2.imdecode(blob[offsets[i] : offsets[i + 1]], cv2.IMREAD_GRAYSCALE)
    roots = str(data / "ferplus"), str(data / "ckplus"), str(data / "sfew")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for ds in _datasets(*roots).values():
        arr = np.stack([faces[s.path] for s in ds.samples])
        key = cache_key(ds)
        np.save(cache_dir / f"{key}.npy", arr)
        (cache_dir / f"{key}.json").write_text(json.dumps({"dataset": ds.name, "n": len(ds), "bad": {}}))
        print(f"{ds.name}: {arr.shape} cached as {key}", flush=True)
    return roots


def split_ensemble(path: str | Path, out: Path) -> list[str]:
    """Each member of an ensemble checkpoint as a checkpoint of its own (for ``--init``)."""
    import torch

    from emolens.checkpoint import load_checkpoint

    c = load_checkpoint(path)
    base, _, k = c["model"].rpartition("_x")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(int(k)):
        prefix = f"members.{i}."
        sd = {n[len(prefix) :]: v.float() if v.is_floating_point() else v for n, v in c["state_dict"].items()
              if n.startswith(prefix)}  # fmt: skip
        member = {**{x: c[x] for x in ("format", "classes", "num_classes", "preprocess") if x in c}, "model": base}
        torch.save({**member, "state_dict": sd}, out / f"member{i}.pt")
        paths.append(str(out / f"member{i}.pt"))
    return paths


def _epochs_done(run: Path) -> list[dict]:
    f = run / "metrics.jsonl"
    rows = []
    for line in f.read_text().splitlines() if f.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def _start(name: str, args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from emolens.cli import main; sys.exit(main())", "train", *args]
    return subprocess.Popen(cmd, stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _strip(src: Path, dst: Path, half: bool) -> None:
    """An inference checkpoint (no optimiser state) of ``src``; ``half`` stores the weights as float16."""
    import torch

    from emolens.checkpoint import load_checkpoint

    c = load_checkpoint(src)
    for k in ("optimizer", "scheduler"):
        c.pop(k, None)
    if half:
        c["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in c["state_dict"].items()}
    torch.save(c, dst)


def run(a: argparse.Namespace) -> None:
    t0 = time.time()
    deadline = t0 + a.budget
    work = Path(a.work)
    os.environ["EMOLENS_CACHE"] = str(work / "cache")
    os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    if a.pack:
        ferplus, ck, sfew = unpack(a.pack, work / "data", work / "cache")
    else:
        d = Path(a.shared) / "data"
        ferplus, ck, sfew = str(d / "ferplus"), str(d / "ckplus"), str(d / "sfew")
    print(f"data ready in {time.time() - t0:.0f}s", flush=True)
    names = a.configs or [n for n in CONFIGS if not n.startswith("kd_")]
    data = ["--root", ferplus, "--extra-data", *[e.format(ck=ck, sfew=sfew) for e in EXTRA]]
    runs = {n: work / "runs" / n for n in names}
    fill = {}
    if a.teacher:
        fill = {"teacher": a.teacher, **{f"member{i}": p for i, p in enumerate(split_ensemble(a.teacher, work))}}
    args = {n: [x.format(**fill) for x in CONFIGS[n]] for n in names}
    full = {n: [*COMMON, *data, *args[n], *a.train_args, "--out", str(runs[n])] for n in names}
    procs = {n: _start(n, [*full[n], "--epochs", str(a.max_epochs)], work / f"{n}.log") for n in names}
    # phase 1: time two epochs of every run while all share the GPU
    while any(len(_epochs_done(runs[n])) < 2 and procs[n].poll() is None for n in names) and time.time() < deadline:
        time.sleep(1)
    plan = {}
    for n in names:
        _stop(procs[n])
        done = _epochs_done(runs[n])
        if len(done) < 2:
            print(f"{n}: stopped before 2 epochs; see its log", flush=True)
            continue
        per_epoch = done[-1]["seconds"]
        left = deadline - time.time() - a.margin
        plan[n] = int(min(a.max_epochs, max(len(done) + 1, len(done) + left // per_epoch)))
        print(f"{n}: {per_epoch:.1f} s/epoch shared -> {plan[n]} epochs", flush=True)
    procs = {n: _start(n, ["--resume", "--out", str(runs[n]), "--epochs", str(plan[n])], work / f"{n}.log")
             for n in plan}  # fmt: skip
    while any(p.poll() is None for p in procs.values()) and time.time() < deadline:
        time.sleep(2)
    for n, p in procs.items():
        if p.poll() is None:
            print(f"{n}: still running at the deadline; stopped", flush=True)
        _stop(p)
    # results: one tar per run (inference checkpoints, metrics, log)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"plan": plan, "seconds": time.time() - t0, "runs": {}}
    for n in names:
        r = runs[n]
        hist = _epochs_done(r)
        summary["runs"][n] = {"epochs": len(hist), "last": hist[-1] if hist else None, "args": full[n]}
        tmp = work / "pack" / n
        tmp.mkdir(parents=True, exist_ok=True)
        for ck_name in ("last.pt", "best.pt"):
            if (r / ck_name).is_file():
                _strip(r / ck_name, tmp / ck_name, a.half)
        for f in ("metrics.jsonl", "config.json"):
            if (r / f).is_file():
                shutil.copy(r / f, tmp / f)
        shutil.copy(work / f"{n}.log", tmp / "train.log")
        with tarfile.open(out / f"{n}.tar", "w") as tf:
            tf.add(tmp, arcname=n)
        if hist:
            h = hist[-1]
            print(
                f"{n:10s} {len(hist):4d} epochs  val acc {h['val_accuracy']:.4f} bal {h['val_balanced_accuracy']:.4f} "
                f"F1 {h['val_macro_f1']:.4f}  best bal {max(x['val_balanced_accuracy'] for x in hist):.4f}",
                flush=True,
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="store the training/validation faces in one lossless file")
    p.add_argument("--shared", default=os.environ.get("EMOLENS_SHARED", "../shared"))
    p.add_argument("--out", default=".gpu/data.npz")
    r = sub.add_parser("run", help="train the configurations concurrently within --budget seconds")
    r.add_argument("--pack", help="data file from 'pack' (else the datasets under --shared)")
    r.add_argument("--shared", default=os.environ.get("EMOLENS_SHARED", "../shared"))
    r.add_argument("--configs", nargs="+", choices=sorted(CONFIGS))
    r.add_argument("--teacher", help="ensemble checkpoint for the kd_* configs (its members start them)")
    r.add_argument("--budget", type=float, default=470, help="seconds for everything, data included")
    r.add_argument("--margin", type=float, default=25, help="seconds kept free at the end")
    r.add_argument("--max-epochs", type=int, default=250)
    r.add_argument("--half", action="store_true", help="keep float16 weights (smaller files)")
    r.add_argument("--work", default="/tmp/emolens_sweep")
    r.add_argument("--out", required=True)
    r.add_argument("--train-args", nargs=argparse.REMAINDER, default=[], help="more 'emolens train' flags, last")
    a = ap.parse_args()
    pack(a) if a.cmd == "pack" else run(a)


if __name__ == "__main__":
    main()
