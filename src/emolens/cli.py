"""Command-line interface: the ``emolens`` command and its subcommands.

Each subcommand is one unit: a ``*_arguments(parser)`` function defining its flags, right above the ``cmd_*``
function that runs it, which ``@command(name, help, arguments)`` registers in :data:`COMMANDS`;
:func:`build_parser` makes one subparser per entry, in registration (file) order, and lists them in the
``--help`` description. Adding a subcommand is writing those two functions. Flags several subcommands share come
from ``_add_pipeline_flags``, ``_add_runtime_flags``, ``_add_config_flags`` and ``_limited``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import typing
from collections.abc import Callable

from .options import BATCH, DATASETS, DEVICE, PIPELINE, PORT, SERVE, SPLIT, STREAM, Limit, OneOf, Range


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``emolens live: error: --every must be >= 1 (got 0)``, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        # a checked flag's message names the flag itself: "argument --every: --every must be" -> "--every must be"
        message = re.sub(r"^argument [^:]+: (--\S+ must be )", r"\1", message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _limited(p: argparse.ArgumentParser, flag: str, limit: Limit, help: str = "", note: str = "", **kw) -> None:
    """``p.add_argument(flag)`` whose value ``limit`` checks as it is parsed; the range (and ``note``) end the
    help text."""
    notes = [note] if note else []
    if isinstance(limit, OneOf):
        kw["choices"] = [v for v in limit.values if v is not None]  # --help shows them: {a,b,c}
    else:
        notes.insert(0, limit.describe())
    if notes:
        help = f"{help} ({'; '.join(notes)})".lstrip()
    p.add_argument(flag, type=limit.arg_type(flag), help=help, **kw)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from .training.config import LIMITS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t = hints[f.name]
        if t is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {f.default})")
        elif typing.get_origin(t) is list:
            p.add_argument(flag, nargs="+", default=None, metavar="KIND=ROOT", help="(default: none)")
        elif f.name in LIMITS:
            _limited(p, flag, LIMITS[f.name], note=f"default {f.default}", default=None)
        else:
            base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
            p.add_argument(flag, type=base, default=None, help=f"(default {f.default})")


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand, ``emolens NAME``: its line in ``emolens --help`` (``help``) and its own help's ``epilog``,
    the function defining its flags (``arguments(parser)``), its ``cmd_*`` function (``run(namespace)``, the exit
    status) and ``defaults`` for its namespace beyond those of its flags."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]
    epilog: str | None = None
    defaults: dict = dataclasses.field(default_factory=dict)


#: The subcommands by name, in the order of ``emolens --help`` (the order their ``cmd_*`` functions are defined).
COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    epilog: str | None = None,
    defaults: dict | None = None,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator registering a ``cmd_*`` function as ``emolens NAME`` in :data:`COMMANDS` (the function itself is
    returned unchanged): ``help`` for ``emolens --help``, ``arguments(parser)`` adding its flags, ``epilog`` ending
    its own --help, ``defaults`` set on its parser after the flags (they override flag defaults)."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in COMMANDS:
            raise ValueError(f"emolens {name}: registered twice ({COMMANDS[name].run.__name__}, {run.__name__})")
        COMMANDS[name] = Command(name, help, arguments, run, epilog, dict(defaults or {}))
        return run

    return register


#: ``--checkpoint`` help, the same for every subcommand that runs a model.
CHECKPOINT_HELP = (
    "a checkpoint from `emolens train`, or a bundled model: fernet_v3 (48 px grey) or faceres_v2 (112 px colour, "
    "for photos of real people); `emolens models` lists them, README 'Choosing a model' compares them"
)

#: TrainConfig fields a resumed run may not change (the rest: epochs, workers, progress, device, ...).
RESUME_FROZEN = (
    "dataset",
    "root",
    "extra_data",
    "model",
    "pretrained",
    "weights",
    "init",
    "image_size",
    "channels",
    "protocol",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "schedule",
    "warmup_epochs",
    "freeze_bn",
    "backbone_lr",
    "head_warmup_epochs",
    "class_weights",
    "balanced_sampler",
    "loss",
    "la_prior",
    "label_smoothing",
    "soft_labels",
    "mixup",
    "cutmix",
    "teacher",
    "kd_weight",
    "kd_temperature",
    "teacher_views",
    "teacher_offline",
    "augment",
    "seed",
    "max_samples",
)


def _data_paths(key: str, value):
    """``root`` / ``extra_data`` values with absolute paths (other keys unchanged)."""
    from pathlib import Path

    if key in ("root", "teacher") and value:
        return str(Path(value).resolve())
    if key == "extra_data" and value:
        from .data import parse_data_spec

        specs = [parse_data_spec(x) for x in value]
        return [f"{k}={Path(r).resolve()}" + (f"*{n}" if n != 1 else "") for k, r, n in specs]
    return value


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config (e.g. a run's config.json); flags override it")
    p.add_argument("--resume", action="store_true", help="continue OUT/last.pt at the last finished epoch")
    _add_config_flags(p)


@command("train", "train a model on a dataset", train_arguments)
def cmd_train(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .training import TrainConfig, train

    config = a.config
    if not config and a.resume and a.out and (Path(a.out) / "config.json").is_file():
        config = Path(a.out) / "config.json"  # --resume --out RUN continues RUN with its own settings
    cfg = TrainConfig.load(config) if config else TrainConfig()
    if a.resume and config:
        # a resumed run continues the same model, data and optimiser: flags that would change them are refused
        changed = [
            f"--{k.replace('_', '-')} ({getattr(cfg, k)!r} -> {getattr(a, k)!r})"
            for k in RESUME_FROZEN
            if getattr(a, k) is not None and _data_paths(k, getattr(a, k)) != _data_paths(k, getattr(cfg, k))
        ]
        if changed:
            raise ValueError(f"--resume keeps the run's settings; these would change it: {', '.join(changed)}")
    for f in dataclasses.fields(TrainConfig):
        v = getattr(a, f.name)
        if v is not None:
            setattr(cfg, f.name, v)
    if not cfg.root:
        raise ValueError("--root is required (the dataset folder)")
    if not a.resume:  # config.json records absolute data paths, so the run resumes from any folder
        cfg.root, cfg.extra_data = _data_paths("root", cfg.root), _data_paths("extra_data", cfg.extra_data)
        cfg.teacher = _data_paths("teacher", cfg.teacher)
    out = train(cfg, resume=a.resume)
    print(f"run folder: {out}  (best checkpoint: {out / 'best.pt'})")
    return 0


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help=CHECKPOINT_HELP + " (default: fernet_v3)")
    _limited(p, "--dataset", OneOf(*DATASETS), required=True)
    p.add_argument("--root", required=True)
    _limited(p, "--split", SPLIT, default="test")
    p.add_argument("--out", help="folder for metrics.json, CSVs, PNGs and report.md/html")
    _limited(
        p,
        "--tta",
        OneOf("flip", "shift-flip", "scale"),
        "test-time augmentation: average over the mirror image (flip, the default), ten views (shift-flip: "
        "mirror x four 1.4 px shifts) or the face read also at 8/7 of its side (scale)",
        nargs="?",
        const="flip",
    )
    _limited(p, "--protocol", OneOf("paper", "official"), "AffectNet split protocol", default="paper")
    _limited(p, "--workers", Range(int, 0), "data-loading processes (0: in this process)", default=0)
    _limited(p, "--device", DEVICE, default="cpu")


@command("evaluate", "evaluate a checkpoint: metrics, confusion matrices, plots, report", evaluate_arguments)
def cmd_evaluate(a: argparse.Namespace) -> int:
    from .checkpoint import resolve_checkpoint
    from .evaluation.evaluate import evaluate

    m = evaluate(
        resolve_checkpoint(a.checkpoint),
        a.dataset,
        a.root,
        split=a.split,
        out=a.out,
        tta=a.tta,
        workers=a.workers,
        protocol=a.protocol,
        device=a.device,
    )
    print(
        f"{m['model']} on {a.dataset}/{a.split}: n={m['n']} accuracy={m['accuracy']:.4f} "
        f"balanced_accuracy={m['balanced_accuracy']:.4f} macro_f1={m['macro_f1']:.4f}"
    )
    if a.out:
        print(f"report: {a.out}/report.md")
    return 0


def rebalance_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint")
    _limited(p, "--dataset", OneOf(*DATASETS), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--extra-data", nargs="+", metavar="KIND=ROOT", help="more datasets (as for train)")
    _limited(p, "--split", SPLIT, default="val")
    p.add_argument(
        "--metric",
        default="acc_bal",
        choices=["accuracy", "balanced_accuracy", "macro_f1", "acc_bal"],
        help="what to maximise (acc_bal: mean of accuracy and balanced accuracy)",
    )
    _limited(
        p,
        "--min-balanced-accuracy",
        Range(float, 0, 1),
        "only shifts whose balanced accuracy on the split is >= B",
        default=0.0,
        metavar="B",
    )
    _limited(p, "--min-recall", Range(float, 0, 1), "only shifts with every recall >= R", default=0.0, metavar="R")
    _limited(
        p, "--tau", Range(float), "fold this shift instead of choosing one (e.g. -0.5 takes fernet_v3's out again)"
    )
    p.add_argument("--out", required=True, help="the corrected checkpoint")


@command(
    "rebalance",
    "post-hoc prior correction: trade accuracy for rare-class recall, chosen on a validation split",
    rebalance_arguments,
)
def cmd_rebalance(a: argparse.Namespace) -> int:
    from .evaluation.prior import rebalance

    r = rebalance(
        a.checkpoint,
        a.dataset,
        a.root,
        a.out,
        split=a.split,
        extra=a.extra_data or (),
        metric=a.metric,
        tau=a.tau,
        min_bal=a.min_balanced_accuracy,
        min_recall=a.min_recall,
    )
    print(f"{'tau':>6s} {'accuracy':>9s} {'balanced':>9s} {'macro_f1':>9s} {'min_recall':>10s}")
    for row in r["table"]:
        mark = "  <- chosen" if row["tau"] == r["tau"] else ""
        print(
            f"{row['tau']:6.2f} {row['accuracy']:9.4f} {row['balanced_accuracy']:9.4f} {row['macro_f1']:9.4f} "
            f"{row['min_recall']:10.4f}{mark}"
        )
    how = "as given" if r["metric"] == "fixed" else f"chosen by {r['metric']}"
    if r["metric"] != "fixed" and (a.min_balanced_accuracy or a.min_recall):
        how += f" with balanced accuracy >= {a.min_balanced_accuracy} and every recall >= {a.min_recall}"
    print(f"wrote {r['out']} (tau={r['tau']:+.2f}, {how}; table on {r['selected_on']})")
    return 0


def ensemble_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoints or bundled model names (different models may mix)")
    p.add_argument("--out", required=True)
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")


@command("ensemble", "combine models into one checkpoint (mean log-probs)", ensemble_arguments)
def cmd_ensemble(a: argparse.Namespace) -> int:
    from .checkpoint import build_from_checkpoint, ensemble_checkpoints, half_state, save_atomic

    payload = ensemble_checkpoints(a.checkpoints)
    if a.half:  # what float16 storage changes: the float32 ensemble's answers against the stored one's
        import torch

        full, pre = build_from_checkpoint(payload)
        payload = {**payload, "state_dict": half_state(payload["state_dict"])}
        stored, _ = build_from_checkpoint(payload)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, pre.channels, pre.image_size, pre.image_size, generator=gen)
        with torch.no_grad():
            diff = (full(x).softmax(1) - stored(x).softmax(1)).abs().max().item()
    save_atomic(payload, a.out)
    pre = payload["preprocess"]
    print(
        f"wrote {a.out} ({payload['model']}: {len(a.checkpoints)} members; input {pre['image_size']} px "
        f"{'grey' if pre['channels'] == 1 else 'RGB'})"
    )
    if a.half:
        print(f"float16 storage: largest probability change on random faces {diff:.2e}")
    return 0


def _pipeline(a: argparse.Namespace):
    from .live.settings import PipelineSettings

    settings = PipelineSettings.from_namespace(a)
    det = settings.make_detector()
    if settings.align and det.name != "yunet":
        print(
            f"emolens {a.command}: warning: --align needs YuNet's eye landmarks; {det.name} has none", file=sys.stderr
        )
    return settings.build(detector=det)


#: The exit status rule of ``predict`` and ``batch`` (in their --help).
EXIT_STATUS = (
    "Exit status: 0 when every file was read (with or without faces), 1 when any could not be, "
    "2 for a refused option or a setup problem."
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

    from .live.images import ERROR, FACES, expand_inputs, predict_images

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
        from .live.synthetic import sample_video

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

    from .download import default_cache_dir
    from .live.synthetic import SAMPLE_NAME

    outputs = [Path(p) for p in (a.output, a.csv, a.jsonl) if p]
    folders = [p.parent for p in outputs] + ([Path(a.summary)] if a.summary else [])
    path = (folders[0] if folders else default_cache_dir()) / SAMPLE_NAME
    if any(path.resolve() == p.resolve() for p in outputs):  # an output of that name: keep the two apart
        path = default_cache_dir() / SAMPLE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def batch_options(a: argparse.Namespace):
    """The :class:`~emolens.batch.BatchOptions` that ``emolens batch`` flags ask for."""
    from .batch import BatchOptions
    from .live.settings import PipelineSettings

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
    from .batch import run_batch

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
    from .checkpoint import resolve_checkpoint
    from .export import export_onnx

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

    from .live.settings import PipelineSettings
    from .serve import ServeSettings
    from .serve.app import LOOPBACK

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
    from .serve.folders import default_data_dir

    data = Path(a.data_dir) if a.data_dir else default_data_dir()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(data.resolve() / "tmp" / "torchinductor"))
    try:
        import uvicorn

        from .serve import create_app
        from .serve.app import settings_env
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
    from . import models
    from .checkpoint import BUNDLED, DEFAULT_BUNDLED, bundled_checkpoint, load_checkpoint

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


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    from .live.settings import PipelineSettings

    d = PipelineSettings()
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP + " (default: fernet_v3)")
    p.add_argument(
        "--onnx", help="run this ONNX export (from `emolens export`; it records its input and classes) in ONNX Runtime"
    )
    _limited(
        p,
        "--detector",
        PIPELINE["detector"],
        "face detector (auto: YuNet, bundled with emolens; Haar only if that model cannot be loaded)",
        default=d.detector,
    )
    p.add_argument("--detector-model", help="another YuNet ONNX file than the bundled one (or set $EMOLENS_YUNET)")
    _limited(
        p,
        "--margin",
        PIPELINE["margin"],
        "extra context per side around the FER-like face crop the model was trained on, as a share of it "
        "(0: that crop; 0.1: a 20%% larger side)",
        default=d.margin,
    )
    p.add_argument("--align", action="store_true", help="rotate faces so the eyes are level (YuNet landmarks)")
    _limited(
        p,
        "--tta",
        PIPELINE["tta"],
        "average the classifier over views of each face: the mirror image (flip, 2x the classifier's cost) "
        "or mirror x four 1.4 px shifts (shift-flip, 10x), or the face read also at 8/7 of its side (scale, "
        "2.3x the arithmetic); for photos more than live video",
        default=d.tta,
    )
    _limited(p, "--smooth", PIPELINE["smooth"], "temporal smoothing per face", default=d.smooth)
    _limited(p, "--alpha", PIPELINE["alpha"], "EMA weight of the newest frame", default=d.alpha)
    _limited(p, "--window", PIPELINE["window"], "frames averaged by --smooth window", default=d.window)
    _add_runtime_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    from .live.settings import PipelineSettings

    d = PipelineSettings()
    _limited(
        p,
        "--threads",
        PIPELINE["threads"],
        "PyTorch threads for the classifier (default 0: one for a frame of 1-2 faces, else the CPU cores; serve "
        "shares the cores out among --workers)",
        default=d.threads,
    )
    _limited(p, "--device", DEVICE, "where the classifier runs (auto: cuda if available)", default=d.device)


def build_parser() -> argparse.ArgumentParser:
    """``emolens`` and one subparser per :data:`COMMANDS` entry (its flags, and ``func``: its ``cmd_*``)."""
    from . import __version__

    description = (
        "Emotions from facial expressions: train and evaluate models, and label every face in photos, videos, "
        "webcams and whole collections. `emolens COMMAND --help` for each command."
    )
    p = Parser(prog="emolens", description=description)
    p.add_argument("--version", action="version", version=f"emolens {__version__}")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for c in COMMANDS.values():
        sp = sub.add_parser(c.name, help=c.help, epilog=c.epilog)
        if c.arguments:
            c.arguments(sp)
        sp.set_defaults(func=c.run, **c.defaults)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a refused flag (its one line already printed): the status
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return a.func(a)
    except KeyboardInterrupt:
        print("interrupted; finished work is saved", file=sys.stderr)
        return 130
    except Exception as e:
        # a broken install, or a user error (bad values, files, offline downloads, missing extras; DataError,
        # CheckpointError and SourceError are ValueError/RuntimeError): one line; -v shows the traceback
        problem = install_problem(e)
        if a.verbose or (problem is None and not isinstance(e, (ValueError, RuntimeError, ImportError, OSError))):
            raise
        print(f"emolens {a.command}: error: {problem or e}", file=sys.stderr)
        return 2


#: Packages (import name -> what to install) without which nothing runs; a failing import of one is reported as
#: a broken install.
REQUIRED_PACKAGES = {
    "torch": "torch torchvision",
    "torchvision": "torch torchvision",
    "cv2": "opencv-python-headless",
    "numpy": "numpy",
}
#: PyTorch's CPU-only wheels (a few hundred MB instead of several GB of CUDA ones).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def install_problem(e: BaseException) -> str | None:
    """One line naming the broken package and the fix when ``e`` (or an exception it was raised from) says the
    install is broken: torch, torchvision, OpenCV or NumPy failing to import, or a torchvision built for another
    torch (``operator torchvision::nms does not exist``); ``None`` for any other error."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, RuntimeError) and re.search(r"operator torchvision::\w+ does not exist", first):
            return (
                f"broken install: torchvision {_version('torchvision')} does not match torch {_version('torch')} "
                f"({first}); install a matching pair: pip install --force-reinstall torch torchvision "
                f"(CPU-only: add --index-url {TORCH_CPU_INDEX})"
            )
        package = _failed_import(e)
        if package:
            fix, name = REQUIRED_PACKAGES[package], "OpenCV (cv2)" if package == "cv2" else package
            if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == package:
                how = f"{name} is not installed; install it: pip install {fix}"
            else:
                how = f"{name} {_version(package)} cannot be imported ({type(e).__name__}: {first}); "
                how += f"reinstall it: pip install --force-reinstall {fix}"
            if fix.startswith("torch"):
                how += f" (CPU-only: add --index-url {TORCH_CPU_INDEX})"
            return f"broken install: {how}"
        e = e.__cause__ or e.__context__
    return None


def _failed_import(e: BaseException) -> str | None:
    """The required package whose import raised ``e``: the one named by an ImportError, or the one whose
    module-level code (in site-packages) is on the traceback of an ImportError/OSError."""
    import traceback
    from pathlib import Path

    if not isinstance(e, (ImportError, OSError)):
        return None
    if isinstance(e, ImportError) and (e.name or "").split(".")[0] in REQUIRED_PACKAGES:
        return e.name.split(".")[0]
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        parts = Path(frame.filename).parts
        if frame.name == "<module>":  # code run by an import (not e.g. torch.load opening a missing file)
            for marker in ("site-packages", "dist-packages"):
                if marker in parts[:-1] and parts[parts.index(marker) + 1] in REQUIRED_PACKAGES:
                    return parts[parts.index(marker) + 1]
    return None


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = ["opencv-python-headless", "opencv-python", "opencv-contrib-python"] if package == "cv2" else [package]
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            pass
    return "(version unknown)"


if __name__ == "__main__":
    sys.exit(main())
