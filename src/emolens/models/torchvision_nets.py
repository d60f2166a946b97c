"""Pretrained torchvision backbones with a new classification head.

``pretrained=True`` goes through torchvision's normal download (hash-checked, cached under
``$TORCH_HOME``); ``weights="path.pth"`` loads a local state dict instead (offline use).
Grey input (``in_channels=1``) sums the pretrained RGB filters into one channel.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn


def _load_backbone(builder, weights_enum, pretrained: bool, weights: str | Path | None) -> nn.Module:
    if weights is not None:
        net = builder(weights=None)
        p = Path(weights)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: backbone weights file not found")
        state = torch.load(p, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{p}: weights do not fit {builder.__name__}: {str(e)[:300]}") from None
        return net
    return builder(weights=weights_enum.DEFAULT if pretrained else None)


def _grey_conv(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    return new


def resnet18(
    num_classes: int = 8,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | Path | None = None,
    small_input: bool = False,
) -> nn.Module:
    """ResNet18 with a new ``num_classes`` head; ``small_input`` swaps the stem for 48-64 px faces."""
    net = _load_backbone(torchvision.models.resnet18, torchvision.models.ResNet18_Weights, pretrained, weights)
    if small_input:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    if in_channels == 1:
        net.conv1 = _grey_conv(net.conv1)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def mobilenet_v3_small(
    num_classes: int = 8, in_channels: int = 3, pretrained: bool = False, weights: str | Path | None = None
) -> nn.Module:
    """MobileNetV3-Small with a new ``num_classes`` head."""
    net = _load_backbone(
        torchvision.models.mobilenet_v3_small, torchvision.models.MobileNet_V3_Small_Weights, pretrained, weights
    )
    if in_channels == 1:
        net.features[0][0] = _grey_conv(net.features[0][0])
    last = net.classifier[-1]
    net.classifier[-1] = nn.Linear(last.in_features, num_classes)
    return net
