"""FERNet: a small VGG-style net (BatchNorm, global pooling) for 48-112 px grey faces.

Chosen by measurement for the bundled model (``benchmarks/train_speed.py``, ``benchmarks/accuracy.py``):
plain 3x3 convs run far faster per FLOP on a CPU than depthwise ones, and VGG-style nets are the
strongest family on FER2013/FER+ at 48 px (Barsoum et al. 2016; Khaireddin & Chen 2021).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class FERNet(nn.Module):
    """Four stages of ``n`` 3x3 conv-BN-ReLU + max-pool, global average pool, dropout, linear."""

    def __init__(
        self,
        num_classes: int = 8,
        in_channels: int = 1,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        convs_per_stage: int = 2,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        stages, c = [], in_channels
        for w in widths:
            stages.append(_block(c, w, convs_per_stage))
            c = w
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))
