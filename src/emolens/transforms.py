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
        # bilinear, as BatchAugment: torchvision's default (nearest) leaves jagged edges that shift every
        # BatchNorm statistic away from the on-device pipeline's (v3's BatchNorm re-measured on such faces
        # scores 1.3 points lower on validation: benchmarks/experiments/augment_bn.py)
        v2.RandomAffine(
            degrees=8 if light else 12,
            translate=(0.08, 0.08),
            scale=(0.9, 1.1),
            interpolation=v2.InterpolationMode.BILINEAR,
        ),
        v2.ColorJitter(brightness=0.3, contrast=0.3),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(pre.mean, pre.std),
    ]
    if not light:
        ops.append(v2.RandomErasing(p=0.25, scale=(0.02, 0.15)))
    return v2.Compose(ops)


class BatchAugment(torch.nn.Module):
    """:func:`train_transform` for a whole uint8 batch at once, on the batch's device.

    For GPU training of small faces a per-image CPU pipeline, not the GPU, sets the pace: with the
    data held on the GPU (``emolens train --augment-on-device``) this keeps every step there. The same
    operations and ranges as :func:`train_transform`: horizontal flip, affine (rotation, shift, scale;
    bilinear, zero fill), brightness and contrast, normalisation, random erasing (value 0 after
    normalisation, as torchvision's). Random draws use PyTorch's generator of the batch's device.
    """

    def __init__(self, pre: Preprocess, strength: str = "default") -> None:
        super().__init__()
        if strength not in ("none", "light", "default"):
            raise ValueError(f"unknown augmentation strength {strength!r}")
        self.strength = strength
        self.degrees = 8.0 if strength == "light" else 12.0
        self.translate, self.scale = 0.08, (0.9, 1.1)
        self.jitter = 0.3
        self.erase_p = 0.0 if strength != "default" else 0.25
        self.erase_scale, self.erase_ratio = (0.02, 0.15), (0.3, 3.3)
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, -1, 1, 1), persistent=False)

    def _uniform(self, n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(n, device=like.device).uniform_(lo, hi)

    def affine_matrices(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """``(n, 2, 3)`` sampling matrices for :func:`torch.nn.functional.affine_grid` (flip included)."""
        a = torch.deg2rad(self._uniform(n, -self.degrees, self.degrees, like))
        s = self._uniform(n, *self.scale, like)
        t = self._uniform(2 * n, -2 * self.translate, 2 * self.translate, like).view(n, 2)  # [-1, 1] units
        flip = torch.where(torch.rand(n, device=like.device) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # output pixel -> input pixel: inverse of (flip, then rotate+scale, then shift)
        theta = torch.stack(
            [
                torch.stack([cos * flip, sin * flip, -(cos * t[:, 0] + sin * t[:, 1]) * flip], 1),
                torch.stack([-sin, cos, sin * t[:, 0] - cos * t[:, 1]], 1),
            ],
            1,
        )
        return theta

    def erase_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(n, 1, H, W)`` masks: one random rectangle in a share ``erase_p`` of the images."""
        n, _, h, w = x.shape
        area = self._uniform(n, *self.erase_scale, x) * h * w
        log_r = self._uniform(n, *[float(torch.log(torch.tensor(r))) for r in self.erase_ratio], x)
        r = torch.exp(log_r)
        eh = torch.sqrt(area * r).round().clamp(1, h)
        ew = torch.sqrt(area / r).round().clamp(1, w)
        y0 = (torch.rand(n, device=x.device) * (h - eh + 1)).floor()
        x0 = (torch.rand(n, device=x.device) * (w - ew + 1)).floor()
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        m = (
            (rows >= y0.view(n, 1, 1))
            & (rows < (y0 + eh).view(n, 1, 1))
            & (cols >= x0.view(n, 1, 1))
            & (cols < (x0 + ew).view(n, 1, 1))
        )
        on = torch.rand(n, device=x.device) < self.erase_p
        return (m & on.view(n, 1, 1)).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> augmented, normalised float32 ``(N, C, H, W)``."""
        x = x.float().div_(255.0)
        if self.strength != "none":
            n = len(x)
            grid = torch.nn.functional.affine_grid(self.affine_matrices(n, x), list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            b = self._uniform(n, 1 - self.jitter, 1 + self.jitter, x).view(n, 1, 1, 1)
            x = (x * b).clamp_(0, 1)
            c = self._uniform(n, 1 - self.jitter, 1 + self.jitter, x).view(n, 1, 1, 1)
            grey = x.mean(1, keepdim=True) if x.shape[1] == 1 else _luma(x)
            x = ((x - grey.mean((2, 3), keepdim=True)) * c + grey.mean((2, 3), keepdim=True)).clamp_(0, 1)
        x = (x - self.mean) / self.std
        if self.erase_p > 0:
            x = x.masked_fill(self.erase_masks(x), 0.0)
        return x


def _luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 grey of an RGB batch (as torchvision's contrast adjustment uses)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
