"""Cached, checksum-verified downloads of model files (the face-pretrained backbones)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path


def default_cache_dir() -> Path:
    """Where emolens keeps what it downloads and decodes: ``$EMOLENS_CACHE`` or ``~/.cache/emolens``."""
    return Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, target: str | os.PathLike, sha256: str, hint: str = "") -> Path:
    """``target`` if it exists, else ``url`` downloaded there (via a ``.part`` file) after its SHA-256 is checked.

    A failed download raises ``RuntimeError`` naming the URL and ``hint`` (how to supply the file by
    hand); a file whose checksum differs is deleted and reported.
    """
    target = Path(target)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not download {url} ({e}){'; ' + hint if hint else ''}") from None
    digest = sha256_of(tmp)
    if digest != sha256:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{url}: checksum mismatch (got {digest}, expected {sha256}); file discarded")
    os.replace(tmp, target)
    return target
