"""The server's data folder: private to the user who runs it, and the only place the server writes or deletes."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def default_data_dir() -> Path:
    """``$TMPDIR/emolens-serve-<uid>``: one folder per user, so no other local user can prepare it."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return Path(tempfile.gettempdir()) / f"emolens-serve-{uid}"


class UnsafeDataDir(RuntimeError):
    """A data folder the server must not trust: a symlink, another user's, or open to other users."""


def private_data_dir(path: str | os.PathLike, private: bool = True) -> Path:
    """``path`` created (mode 0700) or checked, then resolved: refused with :class:`UnsafeDataDir` if it, or its
    ``tmp``/``cache``/``jobs`` folders or ``jobs.db``, is a symlink or belongs to another user, and (``private``, the
    default folder) if other users may write to it. The server deletes old files only inside it."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeDataDir(f"{p}: the data folder is a symbolic link; give a real folder (--data-dir)")
    mine = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if not mine:
        raise UnsafeDataDir(f"{p}: the data folder belongs to another user; give your own (--data-dir)")
    if private and st.st_mode & 0o022:
        raise UnsafeDataDir(f"{p}: other users may write to the data folder (mode {stat.filemode(st.st_mode)})")
    for name in ("tmp", "cache", "jobs", "jobs.db", "jobs.db-wal", "jobs.db-shm"):
        q = p / name
        if q.is_symlink():
            raise UnsafeDataDir(f"{q}: a symbolic link inside the data folder; remove it or use another --data-dir")
        if q.exists() and hasattr(os, "getuid") and os.lstat(q).st_uid != os.getuid():
            raise UnsafeDataDir(f"{q}: belongs to another user; remove it or use another --data-dir")
    return p.resolve()
