"""Moved to :mod:`emolens.checkpoint` (shared by training and inference); kept as an alias."""

from ..checkpoint import (  # noqa: F401
    FORMAT,
    CheckpointError,
    average_checkpoints,
    build_from_checkpoint,
    ensemble_checkpoints,
    load_checkpoint,
    model_payload,
    save_atomic,
    train_counts,
    unwrap,
)
