"""What every subcommand shares: the parser class, range-checked flags, the subcommand registry
(:func:`command`), the model, detector and runtime flags, and the one-line messages."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from collections.abc import Callable

from ..options import DEVICE, PIPELINE, Limit, OneOf


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
    """One flag per :class:`TrainConfig` field, in the argument groups of ``GROUPS``, with ``HELP``'s text."""
    from ..training.config import GROUPS, HELP, LIMITS, METAVARS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for title, names in GROUPS.items():
        g = p.add_argument_group(title)
        for name in names:
            flag, t, default = "--" + name.replace("_", "-"), hints[name], defaults[name]
            shown = default not in ("", None, dataclasses.MISSING)
            note = f"default {default}" if shown else ""
            text = f"{HELP[name]} ({note})" if shown else HELP[name]
            if t is bool:
                g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
            elif typing.get_origin(t) is list:
                g.add_argument(flag, nargs="+", default=None, metavar=METAVARS[name], help=text)
            elif name in LIMITS:
                _limited(g, flag, LIMITS[name], HELP[name], note=note, default=None)
            else:
                base = next((a for a in typing.get_args(t) if a is not type(None)), t) if typing.get_args(t) else t
                g.add_argument(flag, type=base, default=None, help=text)


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


def _pipeline(a: argparse.Namespace):
    from ..live.settings import PipelineSettings

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


def _add_pipeline_flags(p: argparse.ArgumentParser) -> None:
    from ..live.settings import PipelineSettings

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
        "average the classifier over views of each face: the mirror image (flip, twice the classifier's work), "
        "mirror x four 1.4 px shifts (shift-flip, ten times), or the face read also at 8/7 of its side (scale); "
        "for photos more than live video",
        default=d.tta,
    )
    _limited(p, "--smooth", PIPELINE["smooth"], "temporal smoothing per face", default=d.smooth)
    _limited(p, "--alpha", PIPELINE["alpha"], "EMA weight of the newest frame", default=d.alpha)
    _limited(p, "--window", PIPELINE["window"], "frames averaged by --smooth window", default=d.window)
    _add_runtime_flags(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    from ..live.settings import PipelineSettings

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
    _limited(
        p,
        "--runtime",
        PIPELINE["runtime"],
        "what runs the classifier: auto (ONNX Runtime on the CPU, the checkpoint exported once and cached: "
        "half the classifier's time for a 112 px colour model; PyTorch with --tta, on a GPU or if the export "
        "fails), torch, or onnxruntime",
        default=d.runtime,
    )
