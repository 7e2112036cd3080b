"""``nse segment|predict FOLDER|'GLOB' --out OUTDIR``: the command-line face of :mod:`batch`.

One line per file on stderr (and a bar per file), ``summary.csv`` in OUTDIR, one JSON
document with ``--json``; exit code 1 when any file failed.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import NSEError
from ._common import Progress, emit, image_options, resolve_mode

SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")


def add_batch(p: argparse.ArgumentParser, default_suffix: str) -> None:
    """The options a command gains for folders and globs."""
    p.add_argument("--suffix", default=None, choices=SUFFIXES,
                   help=f"with a FOLDER or 'GLOB': output file type in OUTDIR "
                   f"(default {default_suffix})")


class _PerFile:
    """Fresh progress bars for each file, behind one callback the task keeps."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.prefix = ""
        self.bars: dict[str, Progress] = {}

    def start(self, prefix: str) -> None:
        self.close()
        self.prefix = prefix

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars = {}

    def _bar(self, stage: str) -> Progress:
        if stage not in self.bars:
            for bar in self.bars.values():
                bar.close()
            self.bars[stage] = Progress(f"{self.prefix}{stage}", self.quiet)
        return self.bars[stage]

    def staged_cb(self, stage: str, done: int, total: int) -> None:
        self._bar(stage)(done, total)

    def plain_cb(self, done: int, total: int) -> None:
        self._bar("predict")(done, total)


def _run(args: argparse.Namespace, command: str, sources: Sequence[Path],
         make_task: Callable[[_PerFile], Any], suffix: str) -> int:
    from ..batch import run_batch

    bars = _PerFile(args.quiet)
    inner = make_task(bars)
    n = len(sources)
    position = {Path(s): i for i, s in enumerate(sources, 1)}

    def task(src: Path, out: Path) -> dict[str, Any]:
        bars.start(f"[{position.get(src, '?')}/{n}] {src.name} ")
        try:
            return inner(src, out)
        finally:
            bars.close()

    items = []
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for item in run_batch(sources, args.out, task, suffix=suffix,
                              overwrite=args.overwrite, cancel=None):
            items.append(item)
            if not args.quiet or item.status == "failed":
                print(f"nse {command}: [{item.index + 1}/{item.total}] {_line(item)}",
                      file=sys.stderr)
            for note in item.info.get("warnings", []):
                print(f"nse {command}: warning: {item.source.name}: {note}", file=sys.stderr)
    counts = {s: sum(i.status == s for i in items) for s in ("done", "skipped", "failed")}
    summary = Path(args.out) / "summary.csv"
    text = (f"{command}: {len(items)} files, {counts['done']} done, {counts['skipped']} skipped "
            f"(output exists; --overwrite redoes them), {counts['failed']} failed; "
            f"wrote {summary}")
    for item in items:
        if item.status == "failed":
            text += f"\n  failed: {item.source}: {item.error}"
    emit(args, {"out": str(args.out), "summary": str(summary), **counts,
                "files": [i.to_dict() for i in items]}, text)
    return 1 if counts["failed"] else 0


def _line(item: Any) -> str:
    if item.status == "skipped":
        return f"{item.source.name}: skipped ({item.out.name} exists)"
    if item.status == "failed":
        return f"{item.source.name}: FAILED: {item.error}"
    what = f"{item.instances} instances, " if item.instances is not None else ""
    return f"{item.source.name}: {what}{item.seconds:.1f} s -> {item.out}"


def _check(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.suffix.lower() in SUFFIXES and not out.is_dir():
        raise NSEError(f"with a folder or a glob, --out is a folder for one output per image, "
                       f"got the file name {out.name}")
    for flag in ("block", "resume", "workers", "scheduler"):
        if getattr(args, flag, None):
            raise NSEError(f"--{flag} works on one image; give one image, not a folder/glob")


def batch_segment(args: argparse.Namespace, sources: Sequence[Path]) -> int:
    """``nse segment`` on many images."""
    from ..batch import segment_task
    from .segment import _seg_kwargs

    _check(args)
    mode, tile = resolve_mode(args)
    return _run(args, "segment", sources, lambda bars: segment_task(
        args.model, mode, tile, progress=bars.staged_cb, read=image_options(args),
        amp=args.amp, **_seg_kwargs(args)),
        args.suffix or ".tif")


def batch_predict(args: argparse.Namespace, sources: Sequence[Path]) -> int:
    """``nse predict`` on many images."""
    from ..batch import predict_task

    _check(args)
    mode, tile = resolve_mode(args)
    return _run(args, "predict", sources, lambda bars: predict_task(
        args.model, mode, tile, progress=bars.plain_cb, read=image_options(args),
        device=args.device, amp=args.amp,
        batch_size=args.batch_size, pad=args.pad, channel_axis=args.channel_axis),
        args.suffix or ".zarr")
