"""Where batch results live: one atomic part per finished task, merged into whole-collection tables.

Layout of ``OUT``::

    parts/<task>.parquet   face rows of a finished task (one video, or a group of images)
    parts/<task>.json      its per-file records (written last: a task is finished once this exists)
    faces.parquet          every face of every file        (merged from the parts at the end of a run)
    files.parquet          one summary row per file that was analysed
    failures.parquet       one row per file that could not be read, with its error
    *.csv                  the same tables as CSV (``--csv``)

A re-run reads ``parts/*.json`` and skips every file whose record is there and whose size and modification
time are unchanged, so a crash costs at most the tasks that were in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

from ..live.images import display_name
from .inputs import MediaFile
from .worker import FileResult, face_columns


def _require_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("emolens batch writes Parquet with pyarrow: pip install 'emolens[batch]'") from None
    return pa, pq


def face_schema(classes: list[str]):
    pa, _ = _require_pyarrow()
    types = {
        "file": pa.string(),
        "frame": pa.int32(),
        "time_s": pa.float64(),
        "track_id": pa.int32(),
        "label": pa.string(),
    }
    return pa.schema([(c, types.get(c, pa.float32())) for c in face_columns(classes)])


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ResultStore:
    """Finished tasks of one output folder: what is done, writing new parts, merging the tables."""

    def __init__(self, out: str | Path, run: dict) -> None:
        """``run`` says what produces the results (``classes`` and the settings that shape the answers); an
        output folder holds the results of one such run only, so a re-run with other settings is refused."""
        self.out = Path(out)
        self.parts = self.out / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        self._check_run(run)
        self.classes = list(run["classes"])
        self._schema = face_schema(self.classes)
        for stale in self.parts.glob(".*.tmp"):  # left by a killed run
            stale.unlink(missing_ok=True)

    def _check_run(self, run: dict) -> None:
        path = self.out / "batch.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            changed = [
                f"{k} ({old.get(k)!r} -> {run.get(k)!r})" for k in sorted({*old, *run}) if old.get(k) != run.get(k)
            ]
            if changed:
                raise ValueError(
                    f"{self.out} holds results made with other settings: {', '.join(changed)}; "
                    "use another --out, or the same settings to continue that run"
                )
        else:
            _atomic_write(path, lambda p: p.write_text(json.dumps(run, indent=1), encoding="utf-8"))

    # -- what is done ------------------------------------------------------------------------------------
    def records(self) -> dict[str, tuple[str, dict]]:
        """The newest record of each file: ``path -> (task id, record)``."""
        best: dict[str, tuple[str, dict]] = {}
        for j in self.parts.glob("*.json"):
            try:
                part = json.loads(j.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # unreadable: its files are simply done again
            for rec in part["files"]:
                old = best.get(rec["file"])
                if old is None or rec["finished"] >= old[1]["finished"]:
                    best[rec["file"]] = (j.stem, rec)
        return best

    def done(self, files: Iterable[MediaFile], retry_failed: bool = False) -> set[str]:
        """Paths among ``files`` with a current record (same size and mtime); failed ones too unless
        ``retry_failed``."""
        recs = self.records()
        out = set()
        for f in files:
            r = recs.get(display_name(f.path))
            if r is None or r[1]["size"] != f.size or r[1]["mtime_ns"] != f.mtime_ns:
                continue
            if r[1]["status"] == "failed" and retry_failed:
                continue
            out.add(f.path)
        return out

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, results: list[FileResult]) -> str:
        """Store one finished task atomically (face rows first, then the records that mark it done)."""
        pa, pq = _require_pyarrow()
        key = hashlib.sha1("\0".join(r.file.path for r in results).encode("utf-8", "surrogateescape")).hexdigest()
        task = f"{key[:16]}-{time.time_ns():x}"
        cols: dict[str, list] = {c: [] for c in self._schema.names}
        for r in results:
            for c, v in r.rows.items():
                cols[c] += v
        cols["file"] = [display_name(f) for f in cols["file"]]
        table = pa.table(cols, schema=self._schema)
        _atomic_write(self.parts / f"{task}.parquet", lambda p: pq.write_table(table, p))
        now = time.time()
        recs = [{**r.record, "file": display_name(r.file.path), "finished": now} for r in results]
        _atomic_write(
            self.parts / f"{task}.json",
            lambda p: p.write_text(json.dumps({"files": recs}, allow_nan=False), encoding="utf-8"),
        )
        return task

    # -- merging ------------------------------------------------------------------------------------------
    def merge(self, files: list[MediaFile], csv: bool = False) -> dict:
        """Write ``faces``, ``files`` and ``failures`` tables for ``files`` (in their order) from the parts.

        Returns counts (``files`` read, ``with_faces`` among them, ``failed``, ``faces``) and the paths written.
        Rows are streamed part by part, so memory stays bounded.
        """
        pa, pq = _require_pyarrow()
        recs = self.records()
        chosen = [(f, recs.get(display_name(f.path))) for f in files]
        chosen = [(f, r) for f, r in chosen if r is not None]
        ok = [(f, r) for f, r in chosen if r[1]["status"] == "ok"]
        failed = [r[1] for _, r in chosen if r[1]["status"] != "ok"]

        paths = {"faces": self.out / "faces.parquet", "files": self.out / "files.parquet"}
        paths["failures"] = self.out / "failures.parquet"
        n_faces = 0
        by_task: dict[str, set[str]] = {}
        for _, (task, rec) in ok:
            by_task.setdefault(task, set()).add(rec["file"])
        order = {display_name(f.path): i for i, f in enumerate(files)}

        def write_faces(tmp: Path) -> None:
            nonlocal n_faces
            # parts are read in the order of their first file; within a part, rows keep file + frame order
            tasks = sorted(by_task, key=lambda t: min(order[f] for f in by_task[t]))
            with pq.ParquetWriter(tmp, self._schema) as w:
                for t in tasks:
                    table = pq.read_table(self.parts / f"{t}.parquet", schema=self._schema)
                    keep = pa.array([f in by_task[t] for f in table.column("file").to_pylist()], pa.bool_())
                    table = table.filter(keep)
                    n_faces += table.num_rows
                    w.write_table(table)

        _atomic_write(paths["faces"], write_faces)
        file_rows = [{k: v for k, v in r[1].items() if k != "error"} for _, r in ok]
        _atomic_write(paths["files"], lambda p: pq.write_table(self._records_table(file_rows, "files"), p))
        _atomic_write(paths["failures"], lambda p: pq.write_table(self._records_table(failed, "failures"), p))
        if csv:
            import pyarrow.csv as pcsv

            for name in ("faces", "files", "failures"):
                target = self.out / f"{name}.csv"
                table = pq.read_table(paths[name])
                _atomic_write(target, lambda p, t=table: pcsv.write_csv(t, p))
                paths[f"{name}_csv"] = target
        with_faces = sum(1 for _, r in ok if r[1].get("faces"))
        return {"files": len(ok), "with_faces": with_faces, "failed": len(failed), "faces": n_faces, "paths": paths}

    def _records_table(self, rows: list[dict], kind: str):
        pa, _ = _require_pyarrow()
        if kind == "files":
            first = ["file", "kind", "status", "frames", "frames_with_faces", "faces", "tracks", "dominant"]
            first += [f"share_{c}" for c in self.classes]
            first += ["width", "height", "fps", "duration_s", "warning", "seconds", "worker", "node"]
        else:
            first = ["file", "kind", "status", "error", "seconds", "worker", "node"]
        extra = sorted({k for r in rows for k in r} - set(first) - {"size", "mtime_ns", "finished"})
        cols = first + extra + ["size", "mtime_ns", "finished"]
        types = {
            "file": pa.string(),
            "kind": pa.string(),
            "status": pa.string(),
            "dominant": pa.string(),
            "warning": pa.string(),
            "error": pa.string(),
            "worker": pa.string(),
            "node": pa.string(),
            "frames": pa.int64(),
            "frames_with_faces": pa.int64(),
            "faces": pa.int64(),
            "tracks": pa.int64(),
            "width": pa.int64(),
            "height": pa.int64(),
            "size": pa.int64(),
            "mtime_ns": pa.int64(),
        }
        return pa.table(
            {c: pa.array([r.get(c) for r in rows], types.get(c, pa.float64())) for c in cols},
        )
