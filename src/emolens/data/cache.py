"""One-time cache of decoded, cropped, resized faces as a uint8 memmap (``.npy``).

An epoch then reads contiguous bytes instead of decoding JPEG/PNG files; see
``benchmarks/train_speed.py`` for the measured effect.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..download import default_cache_dir
from ..runtime import pid_alive
from .base import DataError, FaceDataset


def cache_key(ds: FaceDataset) -> str:
    h = hashlib.sha256()
    h.update(f"{ds.image_size}|{ds.channels}|{len(ds)}".encode())
    for s in ds.samples:
        h.update(f"{s.name}|{s.box}|{s.face}\n".encode())
    return h.hexdigest()[:20]


class _CachedFaces:
    """Memmap view that raises :class:`DataError` for images that failed to decode at build time."""

    def __init__(self, arr: np.ndarray, bad: dict[int, str]):
        self.arr, self.bad = arr, bad

    def __getitem__(self, i: int) -> np.ndarray:
        if i in self.bad:
            raise DataError(self.bad[i])
        return np.array(self.arr[i])  # a writable copy (torch warns on read-only memmap views)


def _remove_stale_temps(cache_dir: Path, key: str) -> None:
    """Delete temp files of builds of ``key`` whose process is gone (killed mid-build)."""
    for tmp in cache_dir.glob(f"{key}.tmp*.npy"):
        pid = tmp.name[len(key) + 4 : -4]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def attach_cache(ds: FaceDataset, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Build (once) and attach the decoded-face cache of ``ds``; returns the cache file path.

    Unreadable images are recorded in the cache's metadata; with ``on_error="raise"`` building stops
    at the first one (naming it), with ``"skip"`` they are skipped at training time as without cache.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(ds)
    path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    _remove_stale_temps(cache_dir, key)
    if path.is_file() and meta_path.is_file():
        bad = {int(k): v for k, v in json.loads(meta_path.read_text())["bad"].items()}
    else:
        shape = (len(ds), ds.image_size, ds.image_size) + ((ds.channels,) if ds.channels == 3 else ())
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        bad = {}
        for i in tqdm(range(len(ds)), desc=f"caching {ds.name}", disable=not progress, unit="img"):
            try:
                arr[i] = ds.load_face(i)
            except DataError as e:
                if ds.on_error == "raise":
                    del arr
                    tmp.unlink(missing_ok=True)
                    raise
                bad[i] = str(e)
        arr.flush()
        del arr
        os.replace(tmp, path)
        meta_path.write_text(json.dumps({"dataset": ds.name, "n": len(ds), "bad": bad}))
    ds._cache = _CachedFaces(np.load(path, mmap_mode="r"), bad)  # type: ignore[assignment]
    return path
