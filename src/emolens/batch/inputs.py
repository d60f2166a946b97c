"""What a batch run reads: files, folders, glob patterns and path lists, expanded to one sorted list."""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from ..imageio import IMAGE_EXT, DataError, file_problem

#: File extensions read as videos (decoded by OpenCV/FFmpeg).
VIDEO_EXT = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
#: A text (one path per line) or CSV (a ``path``/``file`` column, else the first) file listing inputs.
LIST_EXT = (".txt", ".lst", ".csv")


@dataclass(frozen=True)
class MediaFile:
    """One input file: its absolute path, kind (``image`` or ``video``), size and modification time.

    ``size`` and ``mtime_ns`` tell a finished result from a stale one when a run is repeated.
    """

    path: str
    kind: str
    size: int
    mtime_ns: int
    #: why the file cannot be read (a dangling link, a FIFO...): it is never opened and ends as a failed row
    problem: str | None = None


def media_kind(path: str | Path) -> str | None:
    """``"image"``, ``"video"`` or ``None`` (not a media file), from the extension."""
    ext = Path(path).suffix.lower()
    return "image" if ext in IMAGE_EXT else "video" if ext in VIDEO_EXT else None


def _list_file(path: Path) -> list[str]:
    """Paths listed in a text or CSV file; relative ones are taken relative to the list's folder."""
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        header = [h.strip().lower() for h in rows[0]]
        col = next((header.index(h) for h in ("path", "file", "filename") if h in header), None)
        body = rows[1:] if col is not None else rows
        items = [r[col or 0].strip() for r in body if r and r[col or 0].strip()]
    else:
        items = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [str(p if Path(p).is_absolute() else path.parent / p) for p in items]


def _glob(pattern: str) -> list[Path]:
    """Paths matching ``pattern`` (``**`` recurses) without following symbolic links to folders, so a link
    loop (``ln -s . L/a``) cannot make the search endless, as it does with ``glob.glob(recursive=True)``."""
    parts = Path(pattern).parts
    i = next(k for k, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:i]) if i else Path(".")
    return sorted(base.glob(str(Path(*parts[i:]))))


def _expand(item: str, listed: bool) -> list[Path]:
    p = Path(item)
    if p.is_dir():
        # not only regular files: a dangling link or a FIFO named like media ends as a failed row, not silence
        found = sorted(f for f in p.rglob("*") if media_kind(f) and not f.is_dir())
        if not found:
            raise DataError(f"{p}: folder contains no images or videos")
        return found
    if (p.is_symlink() or p.exists()) and not p.is_file():  # a dangling link, a FIFO...: a failed row, unopened
        return [p]
    if p.is_file():
        if media_kind(p):
            return [p]
        if not listed and p.suffix.lower() in LIST_EXT:
            out: list[Path] = []
            for entry in _list_file(p):
                out += _expand(entry, listed=True)
            if not out:
                raise DataError(f"{p}: the list names no files")
            return out
        # listed explicitly: let it be decoded (and fail with its own error if it is no media file)
        return [p]
    if glob.has_magic(item):
        matches = _glob(item)
        found = [m for m in matches if media_kind(m) and not m.is_dir()]
        for d in (m for m in matches if m.is_dir()):
            found += _expand(str(d), listed)
        if not found:
            raise DataError(f"{item}: the pattern matches no images or videos")
        return found
    raise DataError(f"{p}: no such file or folder")


def discover(inputs: list[str | Path]) -> list[MediaFile]:
    """Every image and video named by ``inputs``: files, folders (searched recursively), glob patterns
    (``**`` recurses) and list files (``.txt``: one path per line; ``.csv``: a ``path`` or ``file``
    column). Duplicates are dropped; the order is that of ``inputs``, sorted within each folder or pattern.

    Files of unknown type named directly (or in a list) are kept: they end up in the failures table
    with the decoder's error, instead of being silently skipped.
    """
    seen: set[str] = set()
    out: list[MediaFile] = []
    for item in inputs:
        for p in _expand(str(item), listed=False):
            path = os.path.abspath(p)
            real = os.path.realpath(path)  # one file reached through links (or ..) is analysed once
            if real in seen:
                continue
            seen.add(real)
            problem = file_problem(path)
            st = os.lstat(path) if problem else os.stat(path)
            out.append(MediaFile(path, media_kind(path) or "video", st.st_size, st.st_mtime_ns, problem))
    if not out:
        raise DataError("no input files")
    return out
