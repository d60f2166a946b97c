"""Training: config, losses, sampler and the training loop (checkpoints live in :mod:`emolens.checkpoint`).

Imports are lazy, so ``emolens.training.config`` (the CLI's flags) loads without PyTorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CheckpointError": "..checkpoint",
    "build_from_checkpoint": "..checkpoint",
    "load_checkpoint": "..checkpoint",
    "TrainConfig": ".config",
    "class_weights": ".losses",
    "weighted_cross_entropy": ".losses",
    "Trainer": ".trainer",
    "train": ".trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
