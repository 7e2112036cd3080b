"""The blockwise flags of ``nse segment`` and ``nse predict`` and their dispatch."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import NSEError
from ._common import emit, int_list

ZARR_SUFFIXES = (".zarr",)


def add_blockwise(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("blockwise (bounded memory; output .zarr or .ome.zarr)")
    g.add_argument("--block", type=int_list, default=None,
                   help="output block size, N or a comma list (a multiple of the tile; "
                   "default 2048 in 2D, 256 in 3D)")
    g.add_argument("--workers", type=int, default=None,
                   help="run on N local dask worker processes")
    g.add_argument("--scheduler", default=None,
                   help="run on an existing dask scheduler (address, e.g. tcp://host:8786)")
    g.add_argument("--resume", action="store_true",
                   help="finish an interrupted blockwise run into the same --out")
    g.add_argument("--memory-limit", default=None,
                   help="memory budget, e.g. 8GB (default: half the machine's memory); "
                   "larger images go blockwise")


def wants_blockwise(args: argparse.Namespace, image_shape: tuple[int, ...],
                    out_channels: int, ndim: int) -> bool:
    """Blockwise when a blockwise flag is given, or when the in-memory run would not fit."""
    from ..blockwise import needs_blockwise, parse_size

    explicit = (args.block is not None or args.workers is not None or
                args.scheduler is not None or args.resume)
    if explicit:
        return True
    limit = parse_size(args.memory_limit)
    if not needs_blockwise(image_shape, out_channels, ndim, limit):
        return False
    if not _is_zarr(Path(args.out)):
        from ..blockwise.memory import in_memory_bytes

        need = in_memory_bytes(image_shape, out_channels, ndim) / 1e9
        raise NSEError(f"the image needs about {need:.1f} GB in memory, over the memory limit; "
                       f"write to a .zarr (--out NAME.zarr) to run blockwise, or raise "
                       f"--memory-limit")
    return True


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() in ZARR_SUFFIXES


def run(args: argparse.Namespace, kind: str) -> int:
    """``nse segment|predict`` blockwise."""
    from ..blockwise import ImageRef, run_blockwise
    from ..model import load_model
    from ..omezarr import is_omezarr
    from .segment import StageBars, _warn_to_stderr

    out = Path(args.out)
    if not _is_zarr(out):
        raise NSEError(f"blockwise output must be .zarr or .ome.zarr, got {out.name}")
    if out.resolve() == Path(args.image).resolve() and not (kind == "segment" and is_omezarr(out)):
        raise NSEError("--out is the input image; choose another file (only labels can go "
                       "into an OME-Zarr image)")
    if getattr(args, "whole", False) or args.stitch != "correct":
        raise NSEError("blockwise runs use correct tiles (n*f^l on the global grid); "
                       "drop --whole / --stitch naive")
    if args.workers is not None and args.scheduler is not None:
        raise NSEError("--workers and --scheduler exclude each other")
    kw: dict[str, Any] = {}
    if kind == "segment":
        if args.scope != "component":
            raise NSEError("blockwise segmentation is exact for --scope component only")
        kw = {"bandwidth": args.bandwidth, "fg_threshold": args.fg_threshold,
              "min_size": args.min_size, "spatial_radius": args.spatial_radius,
              "relative_min_size": args.relative_min_size,
              "relative_bandwidth": args.relative_bandwidth}
    from ..blockwise.memory import fixed_mmap_threshold

    fixed_mmap_threshold()  # this process is ours: keep the peak flat block after block
    client = _client(args)
    # local workers share the cores; a remote cluster's workers keep their own settings
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None
    model = load_model(args.model)
    try:
        with warnings.catch_warnings(record=True) as caught, StageBars(args.quiet) as bars:
            warnings.simplefilter("always")
            result = None
            for ev in run_blockwise(
                    model, ImageRef(str(args.image)), out, kind=kind, block=args.block,
                    tile=args.tile, client=client, device=args.device,
                    batch_size=args.batch_size, amp=None if args.amp == "none" else args.amp,
                    pad=args.pad, channel_axis=args.channel_axis, resume=args.resume,
                    overwrite=args.overwrite, threads_per_worker=threads, **kw):
                if ev.result is not None:
                    result = ev.result
                else:
                    bars(ev.stage, ev.done, ev.total)
    finally:
        if client is not None and args.scheduler is None:
            cluster = client.cluster
            client.close()
            cluster.close()
        elif client is not None:
            client.close()
    notes = _warn_to_stderr(caught, kind)
    info = result.info
    data = {"out": str(out), **info, "warnings": notes}
    where = f"{info['workers']} dask workers" if info["workers"] else "this process"
    what = (f"{info['n_instances']} instances" if kind == "segment" else "prediction")
    done = "already complete:" if info.get("already_complete") else "wrote"
    emit(args, data, f"{done} {out}: {what}, shape {tuple(info['shape'])}, "
         f"{info['n_blocks']} blocks of {tuple(info['block'])} on {where}")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from ..blockwise import parse_size
    from ..blockwise.distributed import connect, local_client

    parse_size(args.memory_limit)  # a bad size fails before any work
    if args.scheduler is not None:
        return connect(args.scheduler)
    if args.workers is not None:
        return local_client(args.workers, args.memory_limit)
    return None


def maybe_run(args: argparse.Namespace, kind: str) -> int | None:
    """Run blockwise and return the exit code when the flags or the memory budget say so;
    ``None``: the caller runs in memory."""
    from ..io import read_image
    from ..model import load_model
    from ..predict import axis_layout

    image = read_image(args.image)
    cfg = load_model(args.model).config
    layout = axis_layout(image.shape, cfg.ndim, cfg.in_channels, args.channel_axis)
    shape = tuple(image.shape[a] for a in (*layout.leading, *layout.spatial))
    if not wants_blockwise(args, shape, cfg.out_channels, cfg.ndim):
        return None
    return run(args, kind)
