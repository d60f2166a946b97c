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
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _common import print_table, save, shared  # noqa: E402
from prior_frontier import TAUS, frontier, summary  # noqa: E402

MODES = ("none", "batch", "per-image", "per-image-nearest", "clean")


# ---- removed from emolens (``emolens average`` and ``--precise-bn`` did not help); kept here to re-run this study


def _forward_all(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Run ``model`` on every batch (outputs dropped); returns the number of faces."""
    n = 0
    for x in batches:
        model(x)
        n += len(x)
    return n


@torch.no_grad()
def precise_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """``--precise-bn``: recompute the running statistics of every BatchNorm in training mode as the plain average
    over ``batches`` with the model's current weights (PreciseBN; Wu & Johnson 2021); returns the faces seen.

    A running average with momentum 0.1 lags behind weights that move fast: a layer whose input drifts by many of
    its standard deviations per epoch (MobileFaceNet's last layers, fine-tuned) is then evaluated with the
    statistics of earlier weights. BatchNorms in eval mode (``--freeze-bn``, ``--freeze-stages``) are left as
    they are; the model's modes are restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    for m in dropouts:
        m.eval()
    try:
        n = _forward_all(model, batches)
    finally:
        for m, mom in zip(bns, momenta, strict=True):
            m.momentum = mom
        for m in dropouts:
            m.train()
    if n == 0:  # nothing measured: keep what they held
        for m, (rm, rv, nb) in zip(bns, saved, strict=True):
            m.running_mean.copy_(rm)
            m.running_var.copy_(rv)
            m.num_batches_tracked.copy_(nb)
    return n


def recompute_batchnorm(model, dataset, samples: int = 8192, batch_size: int = 128, seed: int = 0) -> int:
    """Reset and re-measure every BatchNorm's running mean/var on ``samples`` faces of ``dataset`` (a fixed random
    subset, ``seed``) as one cumulative average; returns how many faces were used."""
    from torch.utils.data import DataLoader, Subset

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[: min(samples, len(dataset))].tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    torch.manual_seed(seed)  # the augmentation's random draws
    model.train()
    precise_batchnorm(model, (x for x, *_ in loader))
    model.eval()
    return len(idx)


def remeasured(ckpt: dict, path: str, mode: str, samples: int) -> dict:
    """``ckpt`` with every BatchNorm statistic re-measured through pipeline ``mode``."""
    from torchvision.transforms import v2

    from emolens.checkpoint import build_from_checkpoint
    from emolens.data import open_dataset
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
