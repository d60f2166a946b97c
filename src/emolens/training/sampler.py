"""One epoch-seeded sampler for shuffled or class-balanced batches, sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices for one epoch, a pure function of ``(seed, epoch)``: resuming replays the same order.

    ``balanced=True`` draws with replacement with probability ``1/n_class`` per sample, so every
    class is equally likely in a batch. With ``world_size > 1`` each rank takes an equal strided shard.
    """

    def __init__(
        self,
        labels: np.ndarray,
        shuffle: bool = True,
        balanced: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = np.asarray(labels)
        self.shuffle, self.balanced, self.seed = shuffle, balanced, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = -(-len(self.labels) // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.balanced:
            counts = np.bincount(self.labels)
            w = torch.tensor(1.0 / counts[self.labels], dtype=torch.float64)
            idx = torch.multinomial(w, n, replacement=True, generator=g)
        elif self.shuffle:
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.arange(n)
        total = self.per_rank * self.world_size
        if total > n:
            idx = torch.cat([idx, idx[: total - n]])
        return iter(idx[self.rank :: self.world_size].tolist())
