"""Face-pretrained backbones, rebuilt in PyTorch from their TensorFlow.js graphs.

* :class:`FaceResMobileNet`: MobileNet v1 (1.0, Keras layout) of ``faceres-deep`` / ``faceres``
  (HSE-asavchenko/HSE_FaceRec_tf: trained on VGGFace2 identities, then age and gender), 1024-d pooled
  features. The original takes RGB pixel values 0-255 at 224 px (here: 0-1, first kernel x 255).
* :class:`MobileFaceNet`: MobileFaceNet (sirius-ai/MobileFaceNet_TF, face identity), 512-d features
  from its global depthwise convolution. The original takes RGB ``(x - 127.5) / 128`` at 112 px.

Both take emolens' usual input (RGB normalised with :class:`emolens.transforms.Preprocess`'s ImageNet
statistics) and undo it in a fixed first step, so each backbone sees the pixel scale it was trained on.
The graphs hold BatchNorm folded into the convolutions; here each folded conv is a bias-free
``nn.Conv2d`` followed by an ``nn.BatchNorm2d`` whose running statistics are the identity
(mean 0, variance 1) and whose affine weight/bias hold the folded scale/shift, so that
``emolens train --freeze-bn`` fine-tuning (statistics fixed, affine trainable) starts from exactly the original.

TensorFlow's ``SAME`` padding (asymmetric for stride 2 on even sizes) is reproduced, so outputs match
the original graphs (``tests/test_face_backbones.py`` checks against a reference computed by
TensorFlow.js itself).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tfjs import graph_nodes, node_attr, read_weights

#: BatchNorm epsilon of the rebuilt layers; running_var = 1 - EPS makes the frozen layer an exact affine map.
EPS = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PixelScale(nn.Module):
    """Fixed map from ImageNet-normalised RGB to ``(pixel_0_255 - offset) * scale`` (no parameters).

    ``offset`` is one number or one per channel.
    """

    def __init__(self, offset: float | tuple[float, float, float] = 0.0, scale: float = 1.0):
        super().__init__()
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        off = torch.as_tensor(offset, dtype=torch.float32).reshape(-1, 1, 1)
        # x_norm = (p/255 - mean)/std  ->  p = 255 * (x_norm * std + mean)
        self.register_buffer("a", 255.0 * std * scale, persistent=False)
        self.register_buffer("b", (255.0 * mean - off) * scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow ``SAME`` padding for a ``k`` x ``k`` kernel at stride ``s`` (extra pixel at bottom/right)."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
    pw = max((math.ceil(w / s) - 1) * s + k - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class ConvBN(nn.Module):
    """Conv (TF ``SAME`` or ``VALID`` padding, no bias) + BatchNorm + activation (``relu6``, ``relu``,
    ``prelu`` or ``none``)."""

    def __init__(
        self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: str = "relu6", same: bool = True
    ) -> None:
        super().__init__()
        self.k, self.stride, self.same = k, stride, same
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=EPS)
        with torch.no_grad():
            self.bn.running_var.fill_(1.0 - EPS)
        self.act: nn.Module
        if act == "relu6":
            self.act = nn.ReLU6(inplace=True)
        elif act == "relu":
            self.act = nn.ReLU(inplace=True)
        elif act == "prelu":
            self.act = nn.PReLU(cout)
        elif act == "none":
            self.act = nn.Identity()
        else:
            raise ValueError(f"unknown activation {act!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same and self.k > 1:
            x = _same_pad(x, self.k, self.stride)
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def load_tf(self, kernel: np.ndarray, shift: np.ndarray, scale: np.ndarray | None = None, depthwise=False) -> None:
        """Set from a TF kernel (HWIO, or HW C 1 for depthwise), the folded BN shift and an optional scale."""
        k = torch.from_numpy(np.array(kernel, dtype=np.float32))
        w = k.permute(2, 3, 0, 1) if depthwise else k.permute(3, 2, 0, 1)  # depthwise: C,1,H,W; else O,I,H,W
        if w.shape != self.conv.weight.shape:
            raise ValueError(f"kernel {tuple(kernel.shape)} does not fit {tuple(self.conv.weight.shape)}")
        self.conv.weight.copy_(w)
        self.bn.weight.copy_(
            torch.from_numpy(np.array(scale, np.float32)) if scale is not None else torch.ones_like(self.bn.weight)
        )
        self.bn.bias.copy_(torch.from_numpy(np.array(shift, np.float32)))
        self.bn.running_mean.zero_()
        self.bn.running_var.fill_(1.0 - EPS)


class _Backbone(nn.Module):
    """Shared head: pooled features -> dropout -> linear ``num_classes``."""

    features_dim: int

    def _make_head(self, num_classes: int, dropout: float, norm: bool = False) -> None:
        # norm: a BatchNorm1d on the features first, for a backbone whose features share a large constant part
        # (MobileFaceNet's reach ~25 on average while varying by ~0.9 between faces: cosine 0.9996 between two
        # different people's faces). It standardises each feature over the data, which a LayerNorm (per face,
        # across features) does not: with one, the head-only epoch collapsed to a single class. It is the new
        # head's own layer, so it learns its statistics even under --freeze-bn (see head_modules).
        self.norm = nn.BatchNorm1d(self.features_dim) if norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.features_dim, num_classes)

    def head_modules(self) -> list[nn.Module]:
        """The new layers on top of the pretrained backbone."""
        return [self.norm, self.dropout, self.fc]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.head_modules() for p in m.parameters()]

    # Subclasses define stages(): the backbone's layers in input-to-output order, grouped as the original's
    # blocks (``emolens train --freeze-stages N`` keeps the first N as loaded).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.norm(self.features(x))))


#: MobileNet v1 (alpha 1.0): (output channels, stride of the depthwise conv) of blocks 1..13.
MOBILENET_V1 = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)  # fmt: skip


class FaceResMobileNet(_Backbone):
    """MobileNet v1 on faces (``faceres-deep``): 1024-d global-average-pooled features, new linear head."""

    features_dim = 1024

    def __init__(self, num_classes: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        # The original graph takes pixel values 0-255; here the first conv reads 0-1 and holds its kernel x 255
        # (the same outputs, zero padding included). Its kernel is then of the size of the others (~0.4, not
        # ~0.0015), so one optimizer step does not rewrite it: Adam's steps are about lr whatever the weight's
        # scale, and at 0-255 a 3e-4 step moved the first layer's weights by 20 % and training collapsed.
        self.scale = PixelScale(0.0, 1 / 255)  # RGB pixel values 0-255, as the ``human`` library feeds the graph
        layers = [ConvBN(3, 32, 3, 2)]
        cin = 32
        for cout, s in MOBILENET_V1:
            layers += [ConvBN(cin, cin, 3, s, groups=cin), ConvBN(cin, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self._make_head(num_classes, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.scale(x)).mean((2, 3))

    def stages(self) -> list[nn.Module]:
        """14 stages: the first conv, then each of the 13 depthwise-separable blocks (depthwise + pointwise)."""
        body = list(self.body)
        return [body[0], *(nn.ModuleList(body[i : i + 2]) for i in range(1, len(body), 2))]

    def load_tfjs(self, model_json: str | Path) -> FaceResMobileNet:
        """Load the backbone from a ``faceres(-deep).json`` TFJS model (the head is left as it is)."""
        w = read_weights(model_json)
        self.body[0].load_tf(w["conv1/convolution/merged_input"] * 255.0, w["conv1_bn/batchnorm_1/sub"])
        for i in range(1, 14):
            dw, pw = self.body[2 * i - 1], self.body[2 * i]
            dw.load_tf(
                w[f"conv_dw_{i}/depthwise_kernel"],
                w[f"conv_dw_{i}_bn/batchnorm_1/sub"],
                w[f"conv_dw_{i}_bn/batchnorm_1/mul"],
                depthwise=True,
            )
            pw.load_tf(w[f"conv_pw_{i}/convolution/merged_input"], w[f"conv_pw_{i}_bn/batchnorm_1/sub"])
        return self


class _InvRes(nn.Module):
    """MobileFaceNet bottleneck: 1x1 expand (PReLU), 3x3 depthwise (ReLU), 1x1 linear projection (+ residual)."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.expand = ConvBN(cin, hidden, 1, act="prelu")
        self.dw = ConvBN(hidden, hidden, 3, stride, groups=hidden, act="relu")
        self.project = ConvBN(hidden, cout, 1, act="none")
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class MobileFaceNet(_Backbone):
    """MobileFaceNet (face identity) as a feature extractor: 512-d output of its global depthwise conv.

    The block layout (widths, strides, residuals) is read from the TFJS graph by :meth:`from_tfjs`;
    :data:`MOBILEFACENET_BLOCKS` is the layout of ``mobilefacenet.json`` for building without weights.
    """

    features_dim = 512

    def __init__(self, num_classes: int = 8, dropout: float = 0.2, blocks=None) -> None:
        super().__init__()
        self.scale = PixelScale(127.5, 1 / 128)
        self.stem = nn.Sequential(ConvBN(3, 64, 3, 2, act="prelu"), ConvBN(64, 64, 3, 1, groups=64, act="relu"))
        self.stem_project = ConvBN(64, 64, 1, act="none")
        self.blocks = nn.Sequential(*(_InvRes(*b) for b in (blocks or MOBILEFACENET_BLOCKS)))
        self.conv7 = ConvBN(self.blocks[-1].project.conv.out_channels, 512, 1, act="prelu")
        self.gdconv = ConvBN(512, 512, 7, 1, groups=512, act="none", same=False)  # 7x7 VALID: global depthwise
        self._make_head(num_classes, dropout, norm=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv7(self.blocks(self.stem_project(self.stem(self.scale(x)))))
        if x.shape[-2:] != (7, 7):  # other input sizes than 112 px: pool to the 7x7 the kernel expects
            x = F.adaptive_avg_pool2d(x, 7)
        return self.gdconv(x).flatten(1)

    def stages(self) -> list[nn.Module]:
        """The stem (two convs and its projection), each bottleneck, the last 1x1 conv, the global depthwise."""
        return [nn.ModuleList([self.stem, self.stem_project]), *self.blocks, self.conv7, self.gdconv]

    def load_tfjs(self, model_json: str | Path) -> MobileFaceNet:
        """Load the backbone from ``mobilefacenet.json`` (the head is left as it is)."""
        w = read_weights(model_json)
        pre = "MobileFaceNet/MobileFaceNet/"

        def load(layer: ConvBN, name: str, depthwise: bool = False) -> None:
            suffix = "depthwise" if depthwise else "Conv2D"
            layer.load_tf(w[f"{name}/{suffix}_weights"], w[f"{name}/{suffix}_bn_offset"], depthwise=depthwise)
            if isinstance(layer.act, nn.PReLU):  # graph: relu(x) + mul * (x - |x|) = PReLU with slope 2 * mul
                layer.act.weight.data.copy_(torch.from_numpy(2 * np.array(w[f"{name}/mul"], np.float32)))

        load(self.stem[0], pre + "Conv2d_0")
        load(self.stem[1], pre + "SeparableConv2d", depthwise=True)
        load(self.stem_project, pre + "Conv")
        for blk, name in zip(self.blocks, _block_names(w), strict=True):
            load(blk.expand, f"{pre}{name}/Conv")
            load(blk.dw, f"{pre}{name}/SeparableConv2d", depthwise=True)
            load(blk.project, f"{pre}{name}/Conv_1")
        load(self.conv7, pre + "Conv2d_7")
        load(self.gdconv, "MobileFaceNet/Logits/SeparableConv2d", depthwise=True)
        return self

    @classmethod
    def from_tfjs(cls, model_json: str | Path, num_classes: int = 8, dropout: float = 0.2) -> MobileFaceNet:
        """Build with the block layout read from the graph, then load its weights."""
        return cls(num_classes, dropout, blocks=mobilefacenet_layout(model_json)).load_tfjs(model_json)


def _block_names(w: dict) -> list[str]:
    names = {k.split("/")[2] for k in w if "InvResBlock" in k}
    return sorted(names, key=lambda n: (int(n.split("_")[1]), int(n.rsplit("_", 1)[1])))


def mobilefacenet_layout(model_json: str | Path) -> list[tuple[int, int, int, int, bool]]:
    """(in, hidden, out, stride, residual) of every bottleneck of a MobileFaceNet TFJS graph."""
    w = read_weights(model_json)
    nodes = {n["name"]: n for n in graph_nodes(model_json)}
    pre = "MobileFaceNet/MobileFaceNet/"
    out = []
    for name in _block_names(w):
        cin, hidden = w[f"{pre}{name}/Conv/Conv2D_weights"].shape[2:]
        cout = w[f"{pre}{name}/Conv_1/Conv2D_weights"].shape[3]
        stride = node_attr(nodes[f"{pre}{name}/SeparableConv2d/depthwise"], "strides")[1]
        out.append((int(cin), int(hidden), int(cout), int(stride), f"{pre}{name}/Add" in nodes))
    return out


#: Bottlenecks of ``mobilefacenet.json`` (what :func:`mobilefacenet_layout` reads from it).
MOBILEFACENET_BLOCKS = (
    [(64, 128, 64, 2, False)] + [(64, 128, 64, 1, True)] * 4
    + [(64, 256, 128, 2, False)]
    + [(128, 256, 128, 1, True)] * 6
    + [(128, 512, 128, 2, False)]
    + [(128, 256, 128, 1, True)] * 2
)  # fmt: skip


def faceres_mobilenet(
    num_classes: int = 8, pretrained: bool = False, weights: str | Path | None = None, **_
) -> nn.Module:
    """:class:`FaceResMobileNet`; ``pretrained``/``weights`` load ``faceres-deep`` (see :mod:`.pretrained`)."""
    net = FaceResMobileNet(num_classes)
    if pretrained or weights:
        from .pretrained import pretrained_model_json

        net.load_tfjs(pretrained_model_json("faceres-deep", weights))
    return net


def mobilefacenet(num_classes: int = 8, pretrained: bool = False, weights: str | Path | None = None, **_) -> nn.Module:
    """:class:`MobileFaceNet`; ``pretrained``/``weights`` load ``mobilefacenet`` (see :mod:`.pretrained`)."""
    net = MobileFaceNet(num_classes)
    if pretrained or weights:
        from .pretrained import pretrained_model_json

        net.load_tfjs(pretrained_model_json("mobilefacenet", weights))
    return net
