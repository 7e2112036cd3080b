"""The ``nse`` command line: a thin layer over the package's API.

Every command prints a clear one-line error on bad input (exit code 2, no traceback unless
``--debug``), a progress bar on stderr for long work, and one JSON document with ``--json``.
Each module in this package registers its commands with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from .. import __version__
from ..errors import Cancelled, NSEError

# command modules, in the order their commands appear in --help
MODULES = ("core", "train", "segment", "evaluate", "export", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nse",
        description="Metric-learning instance segmentation with exact tile-and-stitch "
        "(Rumberger et al., ICCV 2021).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in MODULES:
        try:
            module = import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (NSEError, Cancelled, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"nse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nse {args.command}: interrupted; no output was left behind", file=sys.stderr)
        return 130
