"""An ensemble of classifiers as one ``nn.Module``: the mean of their log-probabilities.

One forward pass runs every member on the same batch, so an ensemble is an ordinary model for the live
pipeline, ``evaluate`` and ONNX export. ``logit_bias`` is added to the output (post-hoc prior correction,
:mod:`emolens.evaluation.prior`, folds into it).

Members may expect different inputs (a 48 px grey net beside a 112 px colour one): an :class:`InputAdapter`
turns the ensemble's input into each member's, with the same grey conversion and resize that the data
loaders apply (``cv2``), written as matrix products so the ensemble still exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: ``cv2.COLOR_RGB2GRAY``'s weights (ITU-R BT.601), as the loaders make grey faces
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def resize_matrix(src: int, dst: int) -> np.ndarray:
    """``dst x src`` matrix ``R`` with ``R @ X @ R.T == cv2.resize(X, (dst, dst))`` for a float image ``X``,
    with the loaders' interpolation (area when shrinking, bilinear when enlarging: ``data.base.crop_resized``)."""
    import cv2

    interp = cv2.INTER_AREA if src > dst else cv2.INTER_LINEAR
    # cv2 resamples rows and columns separately: resizing the identity's rows gives the 1-D operator
    return cv2.resize(np.eye(src, dtype=np.float32), (src, dst), interpolation=interp)


class InputAdapter(nn.Module):
    """The ensemble's input (``src``: size, channels, normalisation) as a member's (``dst``)."""

    def __init__(self, src, dst) -> None:
        """``src``/``dst``: :class:`emolens.transforms.Preprocess` (or anything with its four fields)."""
        super().__init__()
        if src.channels == 1 and dst.channels == 3:
            raise ValueError("a grey input cannot feed a colour member: give the colour member's input")

        def buf(name, values, shape):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(shape), persistent=False)

        buf("src_mean", src.mean, (1, -1, 1, 1))
        buf("src_std", src.std, (1, -1, 1, 1))
        buf("dst_mean", dst.mean, (1, -1, 1, 1))
        buf("dst_std", dst.std, (1, -1, 1, 1))
        self.grey = src.channels == 3 and dst.channels == 1
        buf("grey_weights", GREY_WEIGHTS, (1, 3, 1, 1))
        self.resize = src.image_size != dst.image_size
        buf("rows", resize_matrix(src.image_size, dst.image_size), (dst.image_size, src.image_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x * self.src_std + self.src_mean  # pixel values / 255
        if self.grey:
            v = (v * self.grey_weights).sum(1, keepdim=True)
        if self.resize:
            v = self.rows @ v @ self.rows.T
        return (v - self.dst_mean) / self.dst_std


class Ensemble(nn.Module):
    """``mean_k log_softmax(member_k(adapter_k(x))) + logit_bias`` (an adapter is the identity where the
    member takes the ensemble's own input)."""

    def __init__(
        self, members: Sequence[nn.Module], num_classes: int, adapters: Sequence[nn.Module] | None = None
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if adapters is not None and len(adapters) != len(members):
            raise ValueError(f"{len(adapters)} input adapters for {len(members)} members")
        self.members = nn.ModuleList(members)
        self.adapters = nn.ModuleList(adapters or [nn.Identity() for _ in members])
        self.register_buffer("logit_bias", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([m(a(x)).log_softmax(1) for m, a in zip(self.members, self.adapters, strict=True)])
        return out.mean(0) + self.logit_bias
