"""Where and how a model runs: the device, seeds, bf16 support and the distributed process's place; shared by
training and inference."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "cpu") -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; other names as given (``cuda:1``, ``mps``...)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays off on ``device``: any CUDA GPU; a CPU only with native bf16 units.

    On a CPU with AMX or AVX512-BF16, oneDNN runs bf16 convolutions natively and training is several times faster
    than in float32 (``benchmarks/train_speed.py``); elsewhere bf16 is emulated and slower.
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def dist_info() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` of this process under ``torchrun``; ``(0, 1, 0)`` alone."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
