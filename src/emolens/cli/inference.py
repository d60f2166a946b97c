"""``emolens predict``, ``live``, ``batch``, ``export``, ``serve`` and ``models``."""

from __future__ import annotations

import argparse
import sys

from ..options import BATCH, PORT, SERVE, STREAM, Range
from .common import (
    CHECKPOINT_HELP,
    EXIT_STATUS,
    _add_pipeline_flags,
    _limited,
    _pipeline,
    command,
)


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--csv", help="write one row per face to this CSV file")
    p.add_argument("--annotate", help="folder for annotated copies of the images")
    p.add_argument("--whole-image", action="store_true", help="images are already face crops: skip detection")
    _add_pipeline_flags(p)


@command(
    "predict",
    "emotions of every face in images or folders",
    predict_arguments,
    epilog="Every image gets a result (a --csv row, a --json record, a line): its faces, 'no face found', or "
    f"why it could not be read; the run ends with the counts. {EXIT_STATUS}",
    defaults={"smooth": "none"},
)
def cmd_predict(a: argparse.Namespace) -> int:
    import csv
    import json
    import os
    from pathlib import Path

    from ..live.images import ERROR, FACES, expand_inputs, predict_images

    pipe = _pipeline(a)
    paths = expand_inputs(a.inputs)
    # Results are written as they come (a JSON-lines file beside --json, CSV rows), flushed per image, so a
    # crash at image N keeps the N-1 before it; the --json file is assembled from the lines at the end.
    partial = Path(a.json).with_name(Path(a.json).name + ".partial.jsonl") if a.json else None
    jl = open(partial, "w", encoding="utf-8") if partial else None
    cf = open(a.csv, "w", newline="", encoding="utf-8") if a.csv else None
    w = csv.writer(cf) if cf else None
    columns = ["file", "status", "face", "x", "y", "w", "h", "label", "confidence", *[f"p_{c}" for c in pipe.classes]]
    if w:
        w.writerow([*columns, "error"])
    count = dict.fromkeys((FACES, ERROR), 0)
    n = 0
    try:
        for rec in predict_images(pipe, paths, whole_image=a.whole_image, annotate=a.annotate, progress=not a.quiet):
            n += 1
            count[rec["status"]] = count.get(rec["status"], 0) + 1
            if jl:
                jl.write(json.dumps(rec) + "\n")
                jl.flush()
            if w:  # one row per face; an image without faces, or not read, gets one row that says so
                for k, face in enumerate(rec["faces"]):
                    row = [*face["box"].values(), face["label"], face["confidence"], *face["probs"].values()]
                    w.writerow([rec["file"], rec["status"], k, *row, ""])
                if not rec["faces"]:
                    w.writerow([rec["file"], rec["status"], *[""] * (len(columns) - 2), rec.get("error", "")])
                cf.flush()
            if not (a.json or a.csv):  # results on stdout, one line per image
                faces = ", ".join(f"{f['label']} {100 * f['confidence']:.0f}%" for f in rec["faces"])
                print(f"{rec['file']}: {faces or rec.get('error') or rec['status']}")
            elif rec["status"] == ERROR:  # results go to the files; the images not read are named here too
                print(f"{rec['file']}: {rec['error']}", file=sys.stderr)
            if rec.get("annotate_error"):
                print(f"{rec['file']}: annotated copy not written: {rec['annotate_error']}", file=sys.stderr)
    finally:
        if cf:
            cf.close()
        if jl:
            jl.close()
    if partial:
        records = [json.loads(line) for line in partial.read_text(encoding="utf-8").splitlines()]
        tmp = Path(a.json).with_name(f".{Path(a.json).name}.tmp")
        tmp.write_text(json.dumps({"classes": pipe.classes, "images": records}, indent=1), encoding="utf-8")
        os.replace(tmp, a.json)
        partial.unlink()
    bad = count[ERROR]
    print(
        f"{n} image(s): {count[FACES]} with faces, {n - count[FACES] - bad} without, {bad} unreadable", file=sys.stderr
    )
    return 1 if bad else 0


def live_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="0", help="camera index, video file, rtsp/http URL, 'screen' or 'sample'")
    p.add_argument("--output", help="annotated video file (.mp4, .avi)")
    p.add_argument("--csv", help="per-frame per-face rows (CSV), flushed every frame")
    p.add_argument("--jsonl", help="the same rows as JSON lines")
    p.add_argument("--summary", help="folder for summary.json and timeline.png")
    p.add_argument("--show", action="store_true", help="open a window (where a display exists)")
    _limited(
        p,
        "--every",
        STREAM["every"],
        "classify every Nth frame of a file (faces are still detected and tracked on every frame)",
        default=1,
    )
    _limited(p, "--max-frames", STREAM["max_frames"], "stop after this many frames")
    p.add_argument("--bars", action="store_true", help="draw probability bars next to each face")
    p.add_argument(
        "--draw-fps",
        action="store_true",
        help="burn the FPS counter into --output too (by default only the --show window has it)",
    )
    _add_pipeline_flags(p)


@command("live", "webcam, video file, stream or screen: label every face, in real time", live_arguments)
def cmd_live(a: argparse.Namespace) -> int:
    import json

    source = a.source
    if source == "sample":
        from ..live.synthetic import sample_video

        source = str(sample_video(_sample_path(a)))
        print(f"sample clip (made from the bundled face): {source}", file=sys.stderr)
    pipe = _pipeline(a)
    summary = pipe.run(
        source,
        output=a.output,
        rows=a.csv or a.jsonl,
        show=a.show,
        every=a.every,
        max_frames=a.max_frames,
        bars=a.bars,
        draw_fps=a.draw_fps,
        summary_dir=a.summary,
        progress=not a.quiet,
    )
    brief = {
        k: summary[k] for k in ("source", "frames_read", "fps", "frames_with_faces", "dropped_frames", "ended_early")
    }
    brief["tracks"] = {t: v["dominant"] for t, v in summary["tracks"].items()}
    print(json.dumps(brief))
    return 0


def _sample_path(a: argparse.Namespace):
    """Where ``live --source sample`` writes its clip: beside the run's first output (``--output``, ``--csv``,
    ``--jsonl``, in ``--summary``), else in the cache folder."""
    from pathlib import Path

    from ..download import default_cache_dir
    from ..live.synthetic import SAMPLE_NAME

    outputs = [Path(p) for p in (a.output, a.csv, a.jsonl) if p]
    folders = [p.parent for p in outputs] + ([Path(a.summary)] if a.summary else [])
    path = (folders[0] if folders else default_cache_dir()) / SAMPLE_NAME
    if any(path.resolve() == p.resolve() for p in outputs):  # an output of that name: keep the two apart
        path = default_cache_dir() / SAMPLE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def batch_options(a: argparse.Namespace):
    """The :class:`~emolens.batch.BatchOptions` that ``emolens batch`` flags ask for."""
    from ..batch import BatchOptions
    from ..live.settings import PipelineSettings

    return BatchOptions(
        out=a.out,
        settings=PipelineSettings.from_namespace(a),
        ray=a.ray,
        workers=a.workers,
        cpus_per_worker=a.cpus_per_worker,
        gpus_per_worker=a.gpus_per_worker,
        every=a.every,
        whole_image=a.whole_image,
        images_per_task=a.images_per_task,
        retry_failed=a.retry_failed,
        csv=a.csv,
        progress=not a.quiet,
    )


def batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="files, folders, glob patterns, or .txt/.csv lists of paths")
    p.add_argument("--out", required=True, help="output folder (faces/files/failures.parquet); re-run to resume")
    p.add_argument("--csv", action="store_true", help="also write the tables as CSV")
    _limited(
        p,
        "--ray",
        BATCH["ray"],
        "auto: a local Ray instance if Ray is installed, else in-process; none: in-process; "
        "ADDRESS: an existing cluster (e.g. 10.0.0.5:6379 or ray://host:10001)",
        default="auto",
        metavar="auto|none|ADDRESS",
    )
    _limited(p, "--workers", BATCH["workers"], "Ray workers (0: as many as the CPUs allow)", default=0)
    _limited(p, "--cpus-per-worker", BATCH["cpus_per_worker"], "CPUs reserved per Ray worker", default=1.0)
    _limited(p, "--gpus-per-worker", BATCH["gpus_per_worker"], "GPUs per Ray worker (0.5: two share one)", default=0.0)
    _limited(p, "--every", BATCH["every"], "classify every Nth video frame (as for live)", default=1)
    p.add_argument("--whole-image", action="store_true", help="images are already face crops: skip detection")
    _limited(p, "--images-per-task", BATCH["images_per_task"], "images analysed (and saved) together", default=32)
    p.add_argument("--retry-failed", action="store_true", help="try again the files that failed last time")
    _add_pipeline_flags(p)


@command(
    "batch",
    "whole collections of videos and photos: one results table, resumable, optionally on Ray",
    batch_arguments,
    epilog="Every file gets a row: in files.parquet (with or without faces) or in failures.parquet (why it "
    f"could not be read); the run ends with the counts. {EXIT_STATUS}",
)
def cmd_batch(a: argparse.Namespace) -> int:
    from ..batch import run_batch

    opts = batch_options(a)
    r = run_batch(a.inputs, opts)
    read, with_faces, bad = r["table_files"], r["table_with_faces"], r["table_failed"]
    print(
        f"{r['files']} file(s): {with_faces} with faces, {read - with_faces} without, {bad} unreadable; "
        f"{r['processed']} analysed now, {r['skipped']} already done",
        file=sys.stderr,
    )
    print(
        f"{r['frames']} frames, {r['faces']} faces in {r['work_seconds']:.1f} s "
        f"({r['frames_per_s']:.1f} frames/s, {r['executor']})",
        file=sys.stderr,
    )
    print(
        f"tables: {r['out']['faces']} ({r['table_faces']} faces), {r['out']['files']} ({r['table_files']} files), "
        f"{r['out']['failures']} ({r['table_failed']} failed)",
        file=sys.stderr,
    )
    return 1 if bad else 0


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (default: fernet_v3)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--output", "-o", default="emolens.onnx")
    _limited(p, "--opset", Range(int, 7), "ONNX operator set", default=17)


@command("export", "export a checkpoint to ONNX and check it against PyTorch", export_arguments)
def cmd_export(a: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export import export_onnx

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError(f"export needs the onnx extras: pip install 'emolens[onnx]' ({e})") from None

    info = export_onnx(resolve_checkpoint(a.checkpoint), a.output, opset=a.opset)
    print(
        f"wrote {info['onnx']} ({info['model']}, {len(info['classes'])} classes); "
        f"max |p_onnx - p_torch| = {info['max_abs_diff']:.2e}"
    )
    return 0


def serve_settings(a: argparse.Namespace):
    """The :class:`~emolens.serve.app.ServeSettings` that ``emolens serve`` flags ask for."""
    import os

    from ..live.settings import PipelineSettings
    from ..serve import ServeSettings
    from ..serve.settings import LOOPBACK

    settings = ServeSettings(
        pipeline=PipelineSettings.from_namespace(a),
        max_image_mb=a.max_image_mb,
        max_video_mb=a.max_video_mb,
        request_timeout_s=a.timeout,
        body_timeout_s=a.body_timeout,
        max_queued_jobs=a.max_jobs,
        max_pending=a.max_pending,
        max_streams=a.max_streams,
        keep_hours=a.keep_hours,
        max_disk_gb=a.max_disk_gb,
        workers=a.workers,
        api_key=a.api_key or os.environ.get("EMOLENS_API_KEY") or None,
        allow_origins=a.allow_origin or [],
        # bound to localhost: only localhost names (DNS rebinding); beyond it: any name, the API key guards it
        hosts=a.allowed_host or ([] if a.host in LOOPBACK else ["*"]),
    )
    if a.data_dir:
        settings.data_dir = a.data_dir
    if a.host not in LOOPBACK and not settings.api_key:
        raise ValueError(f"serving on {a.host} (beyond this machine) needs --api-key KEY (or $EMOLENS_API_KEY)")
    return settings


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: localhost only)")
    _limited(p, "--port", PORT, default=8000)
    p.add_argument("--data-dir", help="the only folder the server writes to (uploads, job results)")
    _limited(p, "--max-image-mb", SERVE["max_image_mb"], "largest image upload", default=10.0)
    _limited(p, "--max-video-mb", SERVE["max_video_mb"], "largest video upload", default=200.0)
    _limited(p, "--timeout", SERVE["request_timeout_s"], "per-request time limit (s)", default=20.0)
    _limited(
        p,
        "--body-timeout",
        SERVE["body_timeout_s"],
        "drop an upload that sends nothing for this long (s): slow clients cannot hold the server's slots",
        default=10.0,
    )
    _limited(p, "--max-jobs", SERVE["max_queued_jobs"], "video jobs that may wait in the queue", default=4)
    _limited(
        p,
        "--max-pending",
        SERVE["max_pending"],
        "image predictions in flight: uploading, waiting or running (503 beyond)",
        default=8,
    )
    _limited(
        p,
        "--max-streams",
        SERVE["max_streams"],
        "live WebSocket streams open at once (more are closed with code 1013, try again later)",
        default=8,
    )
    _limited(p, "--keep-hours", SERVE["keep_hours"], "delete finished video jobs after this long", default=24.0)
    _limited(
        p,
        "--max-disk-gb",
        SERVE["max_disk_gb"],
        "disk quota for video jobs (oldest finished deleted first)",
        default=10.0,
    )
    _limited(p, "--workers", SERVE["workers"], "worker processes (each loads the model)", default=1)
    p.add_argument("--api-key", help="require this key (X-API-Key header, ?api_key= for the page and WebSocket)")
    p.add_argument(
        "--allow-origin", action="append", metavar="ORIGIN", help="another web origin that may call the API (CORS)"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="a Host name clients use besides localhost (default: none on localhost, any beyond it); '*' for any",
    )
    _add_pipeline_flags(p)


@command("serve", "HTTP API + web page (browser webcam, uploads)", serve_arguments)
def cmd_serve(a: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    # PyTorch creates its compiler cache folder when it loads (default $TMPDIR/torchinductor_<user>): inside the
    # data folder instead, set before anything imports PyTorch (a user's own setting wins)
    from ..serve.folders import default_data_dir

    data = Path(a.data_dir) if a.data_dir else default_data_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data.resolve() / "tmp" / "torchinductor"))
    try:
        import uvicorn

        from ..serve import create_app
        from ..serve.settings import settings_env
    except ImportError as e:
        raise SystemExit(f"emolens serve needs the serve extras: pip install 'emolens[serve]' ({e})") from None
    settings = serve_settings(a)
    if a.workers > 1:  # N processes, each building the app (and loading the model) from the same settings
        os.environ.update(settings_env(settings))
        uvicorn.run(
            "emolens.serve.app:app_from_env",
            factory=True,
            host=a.host,
            port=a.port,
            workers=a.workers,
            log_level="info",
        )
    else:
        uvicorn.run(create_app(settings), host=a.host, port=a.port, log_level="info")
    return 0


@command("models", "list the model registry and the bundled models")
def cmd_models(a: argparse.Namespace) -> int:
    from .. import models
    from ..checkpoint import BUNDLED, DEFAULT_BUNDLED, bundled_checkpoint, load_checkpoint

    print("architectures (emolens train --model NAME):")
    for name in models.available():
        s = models.spec(name)
        print(f"  {name:20s} {s.image_size:>4d}px {'grey' if s.channels == 1 else 'RGB ':4s}  {s.description}")
    print("bundled models (--checkpoint NAME; weights/MODEL_CARD.md):")
    for name in BUNDLED:
        ckpt = load_checkpoint(bundled_checkpoint(name))
        size = ckpt["preprocess"]["image_size"]
        default = "  (default)" if name == DEFAULT_BUNDLED else ""
        print(f"  {name:20s} {size:>4d}px {ckpt['model']}, {len(ckpt['classes'])} classes{default}")
    return 0
