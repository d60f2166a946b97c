"""Does the training augmentation a run uses match the one a model was trained with? Ask its BatchNorm.

Every BatchNorm layer of a checkpoint is reset and re-measured on 8,192 training faces seen through one
augmentation pipeline, and the result is scored on validation (FER+ Valid + CK+/SFEW val) by the
criterion that chose the bundled model (best mean of accuracy and balanced accuracy over the prior shift,
``benchmarks/experiments/prior_frontier.py``). A pipeline the model was trained with costs (almost) nothing; one that
shows it different faces moves every statistic and costs accuracy before a single weight changes.

Pipelines: ``batch`` (BatchAugment, the GPU path the bundled model was trained with), ``per-image``
(``train_transform``, the CPU path), ``per-image-nearest`` (the CPU path as it was before it resampled
bilinearly: torchvision's default nearest-neighbour affine), ``clean`` (no augmentation).

    python benchmarks/experiments/augment_bn.py [CKPT] [--modes batch per-image ...] [--out augment_bn]
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import print_table, save, shared  # noqa: E402
from prior_frontier import TAUS, frontier, summary  # noqa: E402

MODES = ("none", "batch", "per-image", "per-image-nearest", "clean")


def remeasured(ckpt: dict, path: str, mode: str, samples: int) -> dict:
    """``ckpt`` with every BatchNorm statistic re-measured through pipeline ``mode``."""
    from torchvision.transforms import v2

    from emolens.checkpoint import build_from_checkpoint
    from emolens.data import open_dataset
    from emolens.training.averaging import recompute_batchnorm
    from emolens.transforms import BatchAugment, eval_transform, train_transform

    model, pre = build_from_checkpoint(ckpt, path)
    if mode == "batch":
        batch_aug = BatchAugment(pre)
        tf = lambda x: batch_aug(x[None])[0]  # noqa: E731  (each face its own draw, as in a batch)
    else:
        tf = eval_transform(pre) if mode == "clean" else train_transform(pre)
    if mode == "per-image-nearest":
        next(t for t in tf.transforms if isinstance(t, v2.RandomAffine)).interpolation = v2.InterpolationMode.NEAREST
    s = shared("data")
    extra = [f"ckplus={s / 'ckplus'}*3", f"sfew={s / 'sfew'}*3"]
    ds = open_dataset("ferplus", s / "ferplus", "train", pre.image_size, pre.channels, tf, extra=extra)
    recompute_batchnorm(model, ds, samples, seed=0)
    out = copy.copy(ckpt)
    out["state_dict"] = model.state_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bundled = Path(__file__).resolve().parents[2] / "src/emolens/weights/fernet_v3.pt"
    ap.add_argument("checkpoint", nargs="?", default=str(bundled))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="none: the checkpoint as it is")
    ap.add_argument("--samples", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="augment_bn")
    a = ap.parse_args()
    from emolens.checkpoint import load_checkpoint

    torch.set_num_threads(a.threads)
    s = shared("data")
    extra = [f"ckplus={s / 'ckplus'}", f"sfew={s / 'sfew'}"]
    ckpt = load_checkpoint(a.checkpoint)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes:
            path = a.checkpoint
            if mode != "none":
                path = str(Path(tmp) / f"{mode}.pt")
                torch.save(remeasured(ckpt, a.checkpoint, mode, a.samples), path)
            rows.append(summary(f"BatchNorm: {mode}", frontier(path, "val", extra, TAUS), [0.77, 0.75]))
            print(rows[-1], flush=True)
    cols = ["model", "acc_bal", "at_tau", "acc", "bal", "acc@bal>=0.77", "acc@bal>=0.75"]
    print(f"\n{a.checkpoint}: BatchNorm re-measured on {a.samples} training faces; FER+ val + CK+/SFEW val")
    print_table(rows, cols)
    save(
        a.out,
        {
            "command": shlex.join(["benchmarks/experiments/augment_bn.py", *sys.argv[1:]]),
            "samples": a.samples,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
