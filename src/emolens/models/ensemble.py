"""An ensemble of same-input classifiers as one ``nn.Module``: the mean of their log-probabilities.

One forward pass runs every member on the same batch, so an ensemble is an ordinary model for the live
pipeline, ``evaluate`` and ONNX export. ``logit_bias`` is added to the output (post-hoc prior correction,
:mod:`emolens.evaluation.prior`, folds into it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Ensemble(nn.Module):
    """``mean_k log_softmax(member_k(x)) + logit_bias``."""

    def __init__(self, members: Sequence[nn.Module], num_classes: int) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.register_buffer("logit_bias", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([m(x).log_softmax(1) for m in self.members]).mean(0)
        return out + self.logit_bias
