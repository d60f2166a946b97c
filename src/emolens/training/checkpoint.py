"""Checkpoints: atomic writes, and loading that checks model name and class count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import models
from ..transforms import Preprocess

FORMAT = "emolens-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and the mismatch."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill mid-write never leaves a broken file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def model_payload(
    model: nn.Module, name: str, classes: list[str] | tuple[str, ...], pre: Preprocess, **extra: Any
) -> dict:
    """The inference part of a checkpoint: enough to rebuild and run the model anywhere."""
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "model": name,
        "classes": list(classes),
        "num_classes": len(classes),
        "preprocess": pre.to_dict(),
        "state_dict": state,
        **extra,
    }


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def load_checkpoint(path: str | Path, expect_model: str | None = None, expect_classes: int | None = None) -> dict:
    """Read a checkpoint written by emolens and check it matches what the caller expects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an emolens checkpoint (no '{FORMAT}' format tag)")
    if expect_model and ckpt["model"] != expect_model:
        raise CheckpointError(f"{path}: checkpoint is for model {ckpt['model']!r}, not {expect_model!r}")
    if expect_classes and ckpt["num_classes"] != expect_classes:
        raise CheckpointError(f"{path}: checkpoint has {ckpt['num_classes']} classes, expected {expect_classes}")
    return ckpt


def build_from_checkpoint(ckpt: dict, source: str = "checkpoint") -> tuple[nn.Module, Preprocess]:
    """Rebuild the model of a loaded checkpoint, in eval mode, with its preprocessing."""
    pre = Preprocess.from_dict(ckpt["preprocess"])
    model = models.create(
        ckpt["model"], num_classes=ckpt["num_classes"], in_channels=pre.channels, image_size=pre.image_size
    )
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{source}: weights do not fit model {ckpt['model']!r}: {str(e)[:300]}") from None
    return model.eval(), pre
