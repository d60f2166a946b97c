"""The paper's shallow baseline: five 3x3 zero-padded convs with ReLU + max-pool, one linear layer."""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    """Baseline CNN from CMU 24-787 "Recognition and Classification of Human Emotions".

    Each of the five blocks is ``Conv2d(3x3, padding=1) -> ReLU -> MaxPool2d(2)``; the flattened
    feature map feeds a single ``Linear`` layer. ``image_size`` must be divisible by 32.
    """

    #: the flattened map fits one input size (another size may floor to the same map and read part of the face)
    accepts_other_sizes = False

    def __init__(
        self,
        num_classes: int = 8,
        in_channels: int = 3,
        image_size: int = 224,
        widths: tuple[int, ...] = (16, 32, 64, 128, 128),
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError("PaperCNN has exactly five conv layers")
        if image_size % 32:
            raise ValueError(f"image_size must be divisible by 32 (five 2x pools), got {image_size}")
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, kernel_size=3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.classifier = nn.Linear(c * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
