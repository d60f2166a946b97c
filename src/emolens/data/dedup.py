"""Near-duplicate groups of images (a perceptual hash), so a split never puts one photo on both sides.

Re-packs of web face sets (AffectNet's Kaggle copies) hold the same photo several times, cropped a little
differently and sometimes mirrored. :func:`near_duplicate_groups` hashes each image with a DCT perceptual hash
(pHash: the signs of the 8x8 lowest frequencies of a 32x32 grey thumbnail against their median) and its mirror.
A hash alone cannot tell faces apart (two different people in the same pose are often 6-8 bits apart), so a pair
within ``max_bits`` is only a candidate: it is joined when the normalised correlation of the two 24x24 grey
thumbnails (the better of plain and mirrored) is at least ``min_corr``. Groups are the connected components, so
a chain of close crops ends up in one group.

Measured on the AffectNet re-pack (12,029 faces; ``docs/experiments.md``): candidate pairs at
0-4 bits correlate 0.95-1.0 (the same photo); at 10-12 bits the median is 0.55-0.60 (other people); on contact
sheets pairs at 0.85-0.88 were mostly the same photo and pairs at 0.80-0.85 mostly not.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

#: Hamming distance (of 64 bits) up to which two images are a candidate pair.
MAX_BITS = 12
#: Thumbnail correlation from which a candidate pair is the same photo.
MIN_CORR = 0.85
#: Side of the grey thumbnail compared by correlation.
THUMB = 24


def phash(grey: np.ndarray) -> np.ndarray:
    """The 64-bit DCT perceptual hash of a grey uint8 image and of its mirror, as two uint64 values."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    out = np.empty(2, np.uint64)
    for k, img in enumerate((small, small[:, ::-1])):
        low = cv2.dct(np.ascontiguousarray(img))[:8, :8].reshape(-1)
        bits = low > np.median(low[1:])  # the DC term says only brightness
        out[k] = np.packbits(bits).view(">u8")[0]
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The ``THUMB`` px grey thumbnail compared by :func:`group_near_duplicates`."""
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def fingerprints(paths: Sequence[str], cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 2)`` hashes (image, mirror) and ``(n, THUMB, THUMB)`` thumbnails of ``paths``, cached on disk by the
    list of paths, sizes and modification times."""
    from ..download import default_cache_dir
    from .base import DataError, read_image

    sig = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        sig.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    cache = Path(cache_dir or default_cache_dir()) / f"dedup-{sig.hexdigest()[:24]}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as z:
                if z["hashes"].shape == (len(paths), 2):
                    return z["hashes"], z["thumbs"]
        except (OSError, ValueError, KeyError):
            pass
    hashes = np.zeros((len(paths), 2), np.uint64)
    thumbs = np.zeros((len(paths), THUMB, THUMB), np.uint8)
    for i, p in enumerate(paths):
        try:
            grey = read_image(p, 1)
        except DataError as e:  # an unreadable file is its own group (a flat thumbnail matches nothing)
            log.warning("%s", e)
            continue
        hashes[i], thumbs[i] = phash(grey), thumbnail(grey)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, hashes=hashes, thumbs=thumbs)
        os.replace(tmp, cache)
    except OSError as e:  # a read-only cache costs time, not correctness
        log.warning("could not cache image fingerprints in %s: %s", cache.parent, e)
    return hashes, thumbs


def _unit(thumbs: np.ndarray) -> np.ndarray:
    """Thumbnails as zero-mean, unit-norm vectors, plain and mirrored: ``(n, 2, THUMB*THUMB)``."""
    t = np.stack([thumbs, thumbs[:, :, ::-1]], 1).reshape(len(thumbs), 2, -1).astype(np.float32)
    t -= t.mean(-1, keepdims=True)
    norm = np.linalg.norm(t, axis=-1, keepdims=True)
    return np.divide(t, norm, out=np.zeros_like(t), where=norm > 0)


def group_near_duplicates(
    hashes: np.ndarray, thumbs: np.ndarray, max_bits: int = MAX_BITS, min_corr: float = MIN_CORR, block: int = 2048
) -> np.ndarray:
    """Group ids (0..g-1, in order of first appearance) joining near-duplicate images.

    ``hashes`` is ``(n, 2)`` (each image's hash and its mirror's), ``thumbs`` ``(n, THUMB, THUMB)``. Two images
    are joined when one's hash is within ``max_bits`` of the other's hash or mirror hash and their thumbnails
    correlate at least ``min_corr`` (plain or mirrored).
    """
    n = len(hashes)
    unit = _unit(thumbs)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    h, m = hashes[:, 0], hashes[:, 1]
    for s in range(0, n, block):
        a = h[s : s + block, None]
        near = (_popcount(a ^ h[None, :]) <= max_bits) | (_popcount(a ^ m[None, :]) <= max_bits)
        ii, jj = np.nonzero(near)
        ii += s
        keep = ii < jj
        ii, jj = ii[keep], jj[keep]
        corr = np.einsum("kd,kmd->km", unit[ii, 0], unit[jj]).max(1)
        for i, j in zip(ii[corr >= min_corr], jj[corr >= min_corr], strict=True):
            i, j = find(int(i)), find(int(j))
            if i != j:
                parent[max(i, j)] = min(i, j)
    roots = np.array([find(i) for i in range(n)])
    _, ids = np.unique(roots, return_inverse=True)
    first = {}  # renumber by first appearance: stable ids for a stable file order
    return np.array([first.setdefault(g, len(first)) for g in ids], np.int64)


def near_duplicate_groups(paths: Sequence[str]) -> np.ndarray:
    """One group id per file in ``paths``; near-duplicates (also mirrored) share an id."""
    return group_near_duplicates(*fingerprints(paths))
