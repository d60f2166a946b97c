"""Test-time views of a face (shifted, mirrored, rescaled) and the model's answer averaged over them: test-time
augmentation for every command, and the multi-view answer of a distillation teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import accepts_other_sizes

#: Test-time views of a face: (shift right, shift down) as fractions of the side, whether to mirror it, and the
#: factor its side is resized by (a model with global pooling reads any size; one with a fixed-size layer does not).
View = tuple[float, float, bool, float]
_SHIFT = 0.03  # 1.4 px of a 48 px face
#: ``scale`` reads the face also at 8/7 of its side (112 -> 128 px for ``faceres_v2``, 48 -> 55 for ``fernet_v3``):
#: on RAF-DB and FER+ validation it lifts both bundled models, more than ``flip`` does (README, --tta)
_SCALE = 8 / 7
VIEWS: dict[str, list[View]] = {
    "single": [(0.0, 0.0, False, 1.0)],
    "flip": [(0.0, 0.0, False, 1.0), (0.0, 0.0, True, 1.0)],
    "shift-flip": [
        (dx, dy, flip, 1.0)
        for dx, dy in ((0.0, 0.0), (_SHIFT, 0.0), (-_SHIFT, 0.0), (0.0, _SHIFT), (0.0, -_SHIFT))
        for flip in (False, True)
    ],
    "scale": [(0.0, 0.0, False, 1.0), (0.0, 0.0, False, _SCALE)],
}


def view_batch(x: torch.Tensor, dx: float, dy: float, flip: bool, scale: float = 1.0) -> torch.Tensor:
    """``x`` (NxCxHxW) shifted by ``dx``/``dy`` of its side (bilinear, edge pixels repeated), resized by ``scale``
    (bilinear, antialiased; the side rounded to whole pixels), then mirrored."""
    if dx or dy:
        theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        # affine_grid maps output -> input in [-1, 1] coordinates (side = 2): content moves by +dx*side
        theta[:, 0, 2], theta[:, 1, 2] = -2 * dx, -2 * dy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if scale != 1.0:
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return torch.flip(x, dims=[3]) if flip else x


@torch.no_grad()
def multi_view_log_probs(model: nn.Module, x: torch.Tensor, views: str | list[View] = "shift-flip") -> torch.Tensor:
    """Log of the model's class probabilities averaged over ``views`` of ``x`` (a name in
    :data:`VIEWS`): test-time augmentation, and the multi-view distillation teacher."""
    vs = VIEWS[views] if isinstance(views, str) else views
    p = sum(_view_probs(model, x, v) for v in vs) / len(vs)
    return torch.log(p.clamp_min(1e-12))


def _view_probs(model: nn.Module, x: torch.Tensor, view: View) -> torch.Tensor:
    xv = view_batch(x, *view)
    if xv.shape[-2:] == x.shape[-2:]:
        return model(xv).float().softmax(1)
    refusal = (
        f"this model reads {x.shape[-1]} px faces only (a layer of fixed size), so it cannot answer the "
        f"{xv.shape[-1]} px view of test-time augmentation 'scale'"
    )
    if not accepts_other_sizes(model):
        raise ValueError(refusal)
    try:
        return model(xv).float().softmax(1)
    except RuntimeError as e:  # a model that does not say so, failing on the size
        raise ValueError(f"{refusal}: {str(e)[:200]}") from None
