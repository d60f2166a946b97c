"""Command-line interface: the ``emolens`` command and its subcommands.

Each subcommand is one unit: a ``*_arguments(parser)`` function defining its flags, right above the ``cmd_*``
function that runs it, which ``@command(name, help, arguments)`` registers in ``COMMANDS`` (:mod:`.common`);
:func:`build_parser` makes one subparser per entry, in registration order. Training commands live in
:mod:`.training`, the ones that run a model on media in :mod:`.inference`; flags several subcommands share come
from :mod:`.common`. Adding a subcommand is writing those two functions.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from .common import COMMANDS, EXIT_STATUS, Parser  # noqa: F401 - EXIT_STATUS re-exported

# the subcommands register themselves (``@command``) in ``emolens --help``'s order: train ... ensemble, then the rest
# isort: split
from . import training as _training

# isort: split
from . import inference as _inference


def build_parser() -> argparse.ArgumentParser:
    """``emolens`` and one subparser per :data:`COMMANDS` entry (its flags, and ``func``: its ``cmd_*``)."""
    from .. import __version__

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


_SHARED = ("cmd_", "serve_settings", "batch_options")  # the subcommands' functions, as emolens.cli.<name> too
for _module in (_training, _inference):
    globals().update({k: v for k, v in vars(_module).items() if k.startswith(_SHARED)})
