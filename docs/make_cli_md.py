"""Write ``docs/cli.md``, the command reference, from the ``emolens`` parser itself: every subcommand's ``--help``.

python docs/make_cli_md.py           # rewrite it
python docs/make_cli_md.py --check   # exit 1 if it is out of date (the test suite runs this)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "cli.md"
WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the file does not depend on the terminal


def reference() -> str:
    os.environ["COLUMNS"] = WIDTH
    from emolens.cli import COMMANDS, build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    parts = [
        "# Command reference",
        "",
        "Generated from the parser by `python docs/make_cli_md.py` (the test suite checks it is current): what",
        "`emolens COMMAND --help` prints. Examples: [README](../README.md#commands).",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name in COMMANDS:
        parts += ["", f"## `emolens {name}`", "", "```text", subs[name].format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = reference()
    if a.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/make_cli_md.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
