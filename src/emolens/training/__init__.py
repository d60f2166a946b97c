"""Training: config, losses, sampler, checkpoints and the training loop."""

from .checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint
from .config import TrainConfig
from .losses import class_weights, weighted_cross_entropy
from .trainer import Trainer, train

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "Trainer",
    "build_from_checkpoint",
    "class_weights",
    "load_checkpoint",
    "train",
    "weighted_cross_entropy",
]
