"""The optimiser and the learning-rate schedule of a training run."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .finetune import param_groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over ``model``'s head and backbone groups (the backbone at ``cfg.backbone_lr``)."""
    params = param_groups(model, cfg.lr, cfg.backbone_lr)
    if cfg.optimizer == "adamw":
        fused = device.type == "cuda"  # one kernel per step instead of one per tensor
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)


def build_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``cfg.schedule`` over ``cfg.epochs`` epochs, stepped once per batch."""
    steps = steps_per_epoch * cfg.epochs
    if cfg.schedule == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(steps, steps_per_epoch * cfg.warmup_epochs))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def cosine_with_warmup(total: int, warmup: int):
    """The factor of the peak rate at each step: linear warm-up over ``warmup`` steps, then a half cosine to 0."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, progress))))  # a plain float: checkpoints stay plain data

    return f
