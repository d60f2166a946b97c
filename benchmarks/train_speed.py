"""Training and inference images/second for every registered model at its own input size, plus the data
pipeline on real FER+ files with and without the decoded-face cache.

    python benchmarks/train_speed.py [--models fernet,resnet18] [--steps 5] [--device cpu] [--precision both]
    python benchmarks/train_speed.py --models faceres_mobilenet --freeze-stages 0,4,7,11 --no-data

``--freeze-stages`` gives a row per value: the model's first N stages kept as loaded, as ``emolens train
--freeze-stages N`` runs them (no gradient, BatchNorm in eval mode); ``--freeze-bn`` puts every BatchNorm in eval
mode, as ``emolens train --freeze-bn``. ``--image-size`` overrides the models' own.

``--precision auto`` (the default) measures what ``emolens train`` runs: bf16 autocast where it is native (a
CUDA GPU; a CPU with AMX / AVX512-BF16, :func:`emolens.runtime.native_bf16`), else float32.
``both`` gives a float32 and a bf16 row per model. Set ``OMP_NUM_THREADS`` (or ``--threads``) and say which.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_table, save  # noqa: E402

from emolens import models  # noqa: E402
from emolens.runtime import native_bf16  # noqa: E402
from emolens.training.finetune import batchnorm_eval  # noqa: E402


def freeze_stages(model: nn.Module, n: int) -> list[nn.Module]:
    """Keep the first ``n`` of ``model.stages()`` as loaded and return them (``emolens train --freeze-stages``,
    removed: it did not help; kept here for the ``--freeze-stages`` measurements).

    Their parameters get no gradient, so backward stops at the first trained stage (the CPU lever: the early,
    high-resolution stages cost most of a backward pass); the trainer also keeps them in eval mode, so their
    BatchNorm statistics stay as loaded too.
    """
    if n == 0:
        return []
    if not hasattr(model, "stages"):
        raise ValueError(
            f"freeze_stages: {type(model).__name__} does not list its stages "
            "(the face-pretrained backbones faceres_mobilenet and mobilefacenet do)"
        )
    stages = list(model.stages())
    if n > len(stages):
        raise ValueError(f"freeze_stages: {type(model).__name__} has {len(stages)} stages (got {n})")
    for m in stages[:n]:
        m.requires_grad_(False)
    return stages[:n]


def model_speed(
    name: str,
    device: torch.device,
    steps: int,
    batch: int,
    amp: bool,
    frozen: int = 0,
    size: int | None = None,
    freeze_bn: bool = False,
) -> dict:
    s = models.spec(name)
    size = size or s.image_size
    m = models.create(name, num_classes=8, image_size=size).to(device).to(memory_format=torch.channels_last)
    kept = freeze_stages(m, frozen)
    x = torch.randn(batch, s.channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 8, (batch,), device=device)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], 1e-3)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(m(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    m.train()
    for k in kept:
        k.eval()
    if freeze_bn:  # as emolens train --freeze-bn
        batchnorm_eval(m)
    train_step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        train_step()
    sync()
    train_ips = batch * steps / (time.perf_counter() - t)
    m.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        m(x)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            m(x)
        sync()
    infer_ips = batch * steps / (time.perf_counter() - t)
    params = sum(p.numel() for p in m.parameters())
    return {
        "model": name,
        "input": f"{size}px x{s.channels}",
        "frozen_stages": frozen,
        "freeze_bn": freeze_bn,
        "params_M": params / 1e6,
        "precision": "bf16" if amp else "fp32",
        "train_img_s": train_ips,
        "infer_img_s": infer_ips,
        "batch": batch,
    }


def data_speed(n: int, workers: int) -> list[dict]:
    from emolens.data import open_dataset
    from emolens.transforms import Preprocess, train_transform

    root = SHARED / "data" / "ferplus"
    if not root.exists():
        print(f"SKIP data pipeline: {root} not found (set EMOLENS_SHARED)")
        return []
    pre = Preprocess.for_channels(48, 1)
    rows = []
    for cache in (False, True):
        ds = open_dataset("ferplus", root, "train", transform=train_transform(pre))
        ds.samples = ds.samples[:n]
        build = 0.0
        if cache:
            from emolens.data import attach_cache

            t = time.perf_counter()
            attach_cache(ds, tempfile.mkdtemp(), progress=False)
            build = time.perf_counter() - t
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
        t = time.perf_counter()
        count = sum(len(b[1]) for b in loader)
        rows.append(
            {
                "pipeline": f"FER+ train, {'cached memmap' if cache else 'PNG decode'}",
                "images": count,
                "workers": workers,
                "img_s": count / (time.perf_counter() - t),
                "cache_build_s": build,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default=",".join(models.available()))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-images", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "both"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--no-data", action="store_true", help="skip the data-pipeline rows")
    ap.add_argument("--freeze-stages", default="0", help="comma list: a row per number of frozen first stages")
    ap.add_argument("--image-size", type=int, default=None, help="input size (default: each model's own)")
    ap.add_argument("--freeze-bn", action="store_true", help="BatchNorm in eval mode, as emolens train --freeze-bn")
    ap.add_argument("--out", default=None, help="results name (default train_speed_<device>)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    amps = {"auto": [native_bf16(dev)], "fp32": [False], "bf16": [True], "both": [False, True]}[a.precision]
    rows = [
        model_speed(n, dev, a.steps, a.batch, amp, int(k), a.image_size, a.freeze_bn)
        for n in a.models.split(",")
        for amp in amps
        for k in a.freeze_stages.split(",")
    ]
    cols = ["model", "input", "params_M", "precision", "frozen_stages", "freeze_bn", "batch", "train_img_s"]
    cols += ["infer_img_s"]
    print_table(rows, cols)
    drows = [] if a.no_data else data_speed(a.data_images, a.workers)
    if drows:
        print()
        print_table(drows, ["pipeline", "images", "workers", "img_s", "cache_build_s"])
    payload = {"command": shlex.join(["benchmarks/train_speed.py", *sys.argv[1:]]), "device": str(dev)}
    save(a.out or f"train_speed_{dev.type}", {**payload, "models": rows, "data_pipeline": drows})


if __name__ == "__main__":
    main()
