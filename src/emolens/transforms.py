"""Preprocessing shared by training and inference, and training-time augmentation (torchvision v2).

The :class:`Preprocess` of a run is saved in its checkpoint, so inference always resizes, converts
colour and normalises exactly as training did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class Preprocess:
    """Input contract of a model: square size, 1 (grey) or 3 (RGB) channels, normalisation."""

    image_size: int = 48
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)

    @classmethod
    def for_channels(cls, image_size: int, channels: int) -> Preprocess:
        if channels == 1:
            return cls(image_size, 1, (0.5,), (0.25,))
        if channels == 3:  # ImageNet statistics, as pretrained torchvision backbones expect
            return cls(image_size, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        raise ValueError(f"channels must be 1 or 3, got {channels}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        return cls(int(d["image_size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


def eval_transform(pre: Preprocess) -> v2.Compose:
    """uint8 CxHxW tensor (already ``image_size`` square) -> normalised float tensor."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)])


def train_transform(pre: Preprocess, strength: str = "default") -> v2.Compose:
    """Augmentation: flip, small affine, brightness/contrast jitter, random erasing (``strength="none"`` off)."""
    if strength == "none":
        return eval_transform(pre)
    if strength not in ("light", "default"):
        raise ValueError(f"unknown augmentation strength {strength!r}")
    light = strength == "light"
    ops = [
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=8 if light else 12, translate=(0.08, 0.08), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre.mean, pre.std),
    ]
    if not light:
        ops.append(v2.RandomErasing(p=0.25, scale=(0.02, 0.15)))
    return v2.Compose(ops)
