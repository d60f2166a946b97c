"""Helpers shared by the benchmark scripts: shared-data lookup, table printing, JSON results."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import emolens  # noqa: F401  - before torch, as in the CLI: emolens sets OpenMP's wait policy before PyTorch loads

# isort: split
import torch

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EMOLENS_SHARED", HERE.parent.parent / "shared"))
RESULTS = HERE / "results"


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        sys.exit(f"SKIP: shared data not found at {p} (set EMOLENS_SHARED to the shared data folder)")
    return p


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def print_table(rows: list[dict], cols: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths, strict=True)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return "" if v is None else str(v)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"\nwrote {path}")
    return path
