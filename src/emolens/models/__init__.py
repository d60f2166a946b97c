"""Model registry: ``emolens.models.create("resnet18", num_classes=8, pretrained=True)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .ensemble import Ensemble, InputAdapter
from .face_backbones import FaceResMobileNet, MobileFaceNet, faceres_mobilenet, mobilefacenet
from .fernet import FERNet
from .paper_cnn import PaperCNN
from .torchvision_nets import mobilenet_v3_small, resnet18


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model and the input it expects by default."""

    build: Callable[..., nn.Module]
    image_size: int
    channels: int
    pretrainable: bool = False
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    "paper_cnn": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: PaperCNN(num_classes, in_channels, image_size),
        224,
        3,
        False,
        "the paper's baseline: five 3x3 conv+ReLU+max-pool, one linear layer",
    ),
    "resnet18": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: resnet18(num_classes, in_channels, **kw),
        224,
        3,
        True,
        "torchvision ResNet18, ImageNet-pretrained, new head (the paper's fine-tuned model)",
    ),
    "resnet18_small": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: resnet18(num_classes, in_channels, small_input=True, **kw),
        48,
        1,
        True,
        "ResNet18 with a 3x3 stride-1 stem for 48-64 px faces",
    ),
    "mobilenet_v3_small": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: mobilenet_v3_small(num_classes, in_channels, **kw),
        112,
        3,
        True,
        "torchvision MobileNetV3-Small, new head",
    ),
    "faceres_mobilenet": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: _rgb(faceres_mobilenet, num_classes, in_channels, **kw),
        112,
        3,
        True,
        "MobileNet v1 pretrained on faces (faceres-deep: VGGFace2 identity, then age/gender), new head",
    ),
    "mobilefacenet": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: _rgb(mobilefacenet, num_classes, in_channels, **kw),
        112,
        3,
        True,
        "MobileFaceNet pretrained on face identity (sirius-ai), new head",
    ),
    "fernet": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: FERNet(num_classes, in_channels),
        48,
        1,
        False,
        "VGG-style 8-conv net for 48 px grey faces",
    ),
    "fernet_wide": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: FERNet(num_classes, in_channels, widths=(48, 96, 192, 384)),
        48,
        1,
        False,
        "FERNet at 1.5x width (2.6 M parameters)",
    ),
    "fernet_tiny": ModelSpec(
        lambda num_classes, in_channels, image_size, **kw: FERNet(num_classes, in_channels, widths=(16, 32, 64, 128)),
        48,
        1,
        False,
        "FERNet at half width",
    ),
}


def _rgb(build, num_classes: int, in_channels: int, **kw) -> nn.Module:
    if in_channels != 3:
        raise ValueError(f"{build.__name__} takes RGB faces (channels 3), not {in_channels}")
    return build(num_classes, **kw)


def accepts_other_sizes(model: nn.Module) -> bool:
    """Whether ``model`` reads faces of any size: false when it, or any part of it (an ensemble's member), sets
    ``accepts_other_sizes = False`` (:class:`PaperCNN`: its flattened map fits one size)."""
    return all(getattr(m, "accepts_other_sizes", True) for m in model.modules())


def available() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    """The spec of ``name``; ``<model>_x<K>`` is an :class:`Ensemble` of K ``<model>`` s (``emolens ensemble``)."""
    if name in REGISTRY:
        return REGISTRY[name]
    base, sep, k = name.rpartition("_x")
    if sep and k.isdigit() and int(k) >= 1 and base in REGISTRY:
        b = REGISTRY[base]

        def build(num_classes, in_channels, image_size, **kw):
            return Ensemble([b.build(num_classes, in_channels, image_size) for _ in range(int(k))], num_classes)

        return ModelSpec(build, b.image_size, b.channels, False, f"{k} x {base}, log-probabilities averaged")
    raise ValueError(f"unknown model {name!r}; available: {available()} (and <model>_x<K> ensembles)")


def create(
    name: str,
    num_classes: int = 8,
    pretrained: bool = False,
    weights: str | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build model ``name`` with a ``num_classes`` head.

    ``pretrained`` downloads the backbone's weights (ImageNet for torchvision nets, through torchvision's
    cache; face-trained TFJS models for ``faceres_mobilenet``/``mobilefacenet``, see
    :mod:`emolens.models.pretrained`); ``weights`` loads a local backbone file (or folder) instead.
    ``in_channels``/``image_size`` default to the model's own input (see :data:`REGISTRY`).
    """
    s = spec(name)
    kw = {}
    if pretrained or weights:
        if not s.pretrainable:
            raise ValueError(f"model {name!r} has no pretrained weights")
        kw = {"pretrained": pretrained, "weights": weights}
    return s.build(
        num_classes=num_classes, in_channels=in_channels or s.channels, image_size=image_size or s.image_size, **kw
    )


__all__ = [
    "REGISTRY",
    "Ensemble",
    "FERNet",
    "FaceResMobileNet",
    "InputAdapter",
    "MobileFaceNet",
    "ModelSpec",
    "PaperCNN",
    "available",
    "create",
    "spec",
]
