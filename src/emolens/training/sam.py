"""Sharpness-aware minimisation (SAM, Foret et al., ICLR 2021): ``emolens train --sam RHO``.

Each step's gradient is taken at the worst weights within ``rho`` (in L2 norm over all trained parameters) of
the current ones, to first order ``w + rho * g / ||g||``, and the optimizer then steps from the current weights
with that gradient. Minimising the loss of the neighbourhood instead of the point favours flat minima, meant to carry a
fit on training faces to new faces better (on the frozen-BatchNorm face recipe it did not: docs/experiments.md,
ninth session); each step costs two forward and backward passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class SharpnessAware:
    """The two moves of a SAM step around any optimizer.

    After ``loss.backward()``: :meth:`ascend` moves every parameter that has a gradient by
    ``rho * g / ||g||``; the caller computes the loss again there and its gradient (zeroing the first);
    :meth:`descend` puts the weights back, leaving that gradient for ``optimizer.step()``."""

    def __init__(self, params: Iterable[nn.Parameter], rho: float) -> None:
        if rho <= 0:
            raise ValueError(f"rho must be > 0 (got {rho})")
        self.params = list(params)
        self.rho = rho
        self._moved: list[tuple[nn.Parameter, torch.Tensor]] = []

    @torch.no_grad()
    def ascend(self) -> None:
        if self._moved:
            raise RuntimeError("ascend() twice without descend()")
        with_grad = [p for p in self.params if p.grad is not None]
        if not with_grad:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in with_grad]))
        scale = self.rho / (norm + 1e-12)
        for p in with_grad:
            self._moved.append((p, p.detach().clone()))  # restored exactly, not by subtracting the step back
            p.add_((p.grad * scale).to(p.dtype))

    @torch.no_grad()
    def descend(self) -> None:
        for p, before in self._moved:
            p.copy_(before)
        self._moved.clear()


@contextmanager
def batchnorm_statistics_held(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers in training mode normalise with the batch's statistics but leave their running ones
    unchanged (momentum 0): SAM's second pass over the same batch must not count it twice."""
    held = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m, _ in held:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in held:
            m.momentum = momentum
