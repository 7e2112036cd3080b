"""Helpers shared by the ``nse`` commands: argument types, progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..errors import NSEError
from ..options import AMPS, PADS


# -- argument types -------------------------------------------------------------------------
def int_list(text: str) -> tuple[int, ...] | int:
    """``64`` or ``16,64,64``."""
    try:
        parts = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or a comma list, got {text!r}"
        ) from None
    if not parts:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return parts[0] if len(parts) == 1 else tuple(parts)


def emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data))
    else:
        print(text)


class Progress:
    """Progress on stderr, fed by the API's ``progress(done, total)`` callbacks.

    A tqdm bar on a terminal. Anywhere else (a log file, a pipe, a batch job) a bar's
    carriage-return updates would pile up in the log, so a plain line is printed at every
    ``LOG_STEP`` of the total, at most every ``LOG_EVERY_S`` seconds otherwise, and at the end.
    """

    LOG_STEP = 0.1
    LOG_EVERY_S = 60.0

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet, self.bar = desc, quiet, None
        self.tty: bool | None = None
        self._total = self._next = -1
        self._t0 = self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.tty is None:
            self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if not self.tty:
            self._line(done, total)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def _line(self, done: int, total: int) -> None:
        now = time.monotonic()
        if total != self._total:  # a new run (or a new phase) starts its own count
            self._total, self._t0, self._last = total, now, now
            self._next = 0
        step = max(1, int(total * self.LOG_STEP))
        if done < self._next and now - self._last < self.LOG_EVERY_S and done < total:
            return
        if done >= total and self._next > total:
            return  # the end was printed already
        pct = 100 * done / total if total else 100.0
        print(f"{self.desc}: {pct:3.0f}% ({done}/{total}) {now - self._t0:.1f} s",
              file=sys.stderr, flush=True)
        self._last = now
        self._next = total + 1 if done >= total else (done // step + 1) * step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def add_common(p: argparse.ArgumentParser, device: bool = False, json_flag: bool = False) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if device:
        p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (default auto)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def add_tiling(p: argparse.ArgumentParser, whole: bool = True) -> None:
    if whole:
        p.add_argument("--whole", action="store_true", help="one pass over the whole image")
    p.add_argument("--tile", type=int_list, help="output tile size: N or a comma list per axis")
    p.add_argument("--stitch", choices=["correct", "naive"], default="correct",
                   help="correct: n*f^l tiles on the global f^l grid (default); naive: as asked")
    p.add_argument("--pad", default="reflect", choices=PADS,
                   help="how the image is padded at its borders (default reflect)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: auto, from the tile size)")
    p.add_argument("--amp", choices=AMPS, default="none",
                   help="mixed precision on CUDA")
    p.add_argument("--channel-axis", type=int, default=None, help="channel axis of the image")


def resolve_mode(args: argparse.Namespace) -> tuple[str, Any]:
    """``--whole`` or ``--stitch`` + ``--tile`` as (mode, tile)."""
    if getattr(args, "whole", False):
        if args.tile is not None:
            raise NSEError("--whole and --tile exclude each other")
        return "whole", None
    return args.stitch, args.tile


# -- image files ------------------------------------------------------------------------------


def add_image_options(p: argparse.ArgumentParser) -> None:
    """``--scene``/``--channel``/``--level``: which part of a microscopy or OME-Zarr file."""
    p.add_argument("--scene", default=None,
                   help="scene of a czi/nd2/lif/OME-TIFF file: index or name (default: first)")
    p.add_argument("--channel", default=None,
                   help="keep one channel of the image: index or name (default: all)")
    p.add_argument("--level", type=int, default=0,
                   help="resolution level of an OME-Zarr image (default 0 = full resolution)")


def image_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keywords for ``read_image``/``image_metadata`` from :func:`add_image_options`' flags."""
    return {"scene": getattr(args, "scene", None), "channel": getattr(args, "channel", None),
            "level": getattr(args, "level", 0) or 0}
