"""Weight averaging: the mean of several snapshots' weights (SWA, Izmailov et al. 2018), and a moving average of
the weights while training (EMA, :func:`ema_model`).

:func:`emolens.checkpoint.average_checkpoints` averages the weights; the averaged net's BatchNorm layers
then need running statistics of their own, which :func:`recompute_batchnorm` measures on training faces
(a cumulative average, as ``torch.optim.swa_utils.update_bn``; BatchNorms a ``--freeze-bn`` run kept frozen are
left as they are). ``emolens average`` does both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Subset


def ema_model(model: nn.Module, decay: float, warmup: bool = True) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers (``torch.optim.swa_utils.AveragedModel``),
    updated by ``ema.update_parameters(model)`` after each optimizer step: ``w_ema <- d * w_ema + (1 - d) * w``.

    ``warmup`` (timm's and TensorFlow's): step ``n`` uses ``d = min(decay, (1 + n) / (10 + n))``, so the average
    forgets the starting weights (a new head's random ones) in tens of steps instead of ``1 / (1 - decay)``.
    Integer buffers (BatchNorm's batch counter) follow the model."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)
            return
        d = min(decay, (1 + float(n)) / (10 + float(n))) if warmup else decay
        torch._foreach_lerp_(averaged, current, 1 - d)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_batchnorm(
    model: nn.Module, dataset, samples: int = 8192, batch_size: int = 128, seed: int = 0, frozen_bn: bool = False
) -> int:
    """Reset and re-measure the BatchNorm layers' running mean/var on ``samples`` faces of ``dataset`` (a fixed
    random subset, ``seed``), as one cumulative average; returns how many faces were used.

    ``frozen_bn``: the run trained with ``--freeze-bn``, so its pretrained BatchNorms hold the statistics they
    were loaded with (a folded graph's identity ones) and are left alone; only a new head's own BatchNorm is
    re-measured. Re-measuring the pretrained ones would change what the net computes."""
    from .trainer import batchnorm_eval, precise_batchnorm

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[: min(samples, len(dataset))].tolist()
    loader = DataLoader(Subset(dataset, idx), batch_size=batch_size, shuffle=False)
    torch.manual_seed(seed)  # the augmentation's random draws
    model.train()
    if frozen_bn:
        batchnorm_eval(model)
    precise_batchnorm(model, (x for x, *_ in loader))
    model.eval()
    return len(idx)


def average(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    dataset: str | None = None,
    root: str | Path | None = None,
    extra: Sequence[str] = (),
    bn_samples: int = 8192,
    seed: int = 0,
) -> dict:
    """Average ``checkpoints`` into ``out``; with a dataset, re-measure BatchNorm statistics on its training
    split (with the training augmentation, as during training). Returns a summary dict (``batchnorm``:
    "re-measured on N training faces", "averaged" or "none")."""
    from ..checkpoint import average_checkpoints, build_from_checkpoint, load_checkpoint, save_atomic, unwrap
    from ..data import open_dataset
    from ..transforms import train_transform

    frozen_bn = bool((load_checkpoint(checkpoints[0]).get("config") or {}).get("freeze_bn"))
    payload = average_checkpoints(list(checkpoints))
    model, pre = build_from_checkpoint(payload, str(checkpoints[0]))
    used, batchnorm = 0, "averaged" if has_batchnorm(model) else "none"
    if dataset and batchnorm == "averaged":
        ds = open_dataset(dataset, root, "train", pre.image_size, pre.channels, train_transform(pre), extra=extra)
        used = recompute_batchnorm(model, ds, bn_samples, seed=seed, frozen_bn=frozen_bn)
        payload["state_dict"] = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        payload["batchnorm_recomputed"] = {"dataset": ds.name, "faces": used, "seed": seed}
        batchnorm = f"re-measured on {used} training faces"
        if frozen_bn:
            batchnorm += " (the head's; --freeze-bn kept the rest)"
    save_atomic(payload, out)
    return {"out": str(out), "members": len(checkpoints), "bn_faces": used, "batchnorm": batchnorm}
