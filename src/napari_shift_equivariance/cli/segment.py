"""``nse segment``, ``nse compare`` and ``nse sweep``."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from ..batch import expand_inputs
from ..errors import NSEError
from ..options import BACKENDS, PADS, SCOPES
from ._batch import add_batch, batch_segment
from ._blockwise import add_blockwise, maybe_run
from ._common import (
    Progress,
    add_common,
    add_image_options,
    add_tiling,
    emit,
    image_options,
    int_list,
    resolve_mode,
)


def add_clustering(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bandwidth", type=float, default=None,
                   help="mean-shift bandwidth (default: the model's calibrated one)")
    p.add_argument("--scope", choices=SCOPES, default="component",
                   help="cluster each foreground component (default), the whole plane, or blocks")
    p.add_argument("--min-size", type=int, default=None,
                   help="remove instances with fewer pixels (default: the model's)")
    p.add_argument("--relative-min-size", type=float, default=None, metavar="FRACTION",
                   help="also remove instances smaller than this fraction of the image's "
                   "median instance size, 0..1; 0: off (default: the model's, else 0)")
    p.add_argument("--fg-threshold", type=float, default=None,
                   help="foreground probability threshold (default: the model's, else 0.5)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="mean-shift implementation: ours (torch, default) or scikit-learn's "
                   "(a slow reference)")
    p.add_argument("--relative-bandwidth", type=float, default=None, metavar="FRACTION",
                   help="a bandwidth that follows the objects' size: this fraction of the "
                   "embedding span of an object of the image's median diameter (found in a "
                   "central sample at --bandwidth); 0: off (default: the model's, else 0; off "
                   "when --bandwidth is given)")
    p.add_argument("--spatial-radius", type=float, default=None,
                   help="cluster embeddings and pixel positions together, this many pixels "
                   "weighing one bandwidth (about the objects' radius to diameter); 0: "
                   "embeddings only (default: the model's, else 0)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="predict + mean-shift -> instance labels")
    p.add_argument("image")
    p.add_argument("--model", default="default", help="a model file or 'default'")
    p.add_argument("--out", required=True, help="labels: .tif, .tiff, .npy or .zarr (uint32); "
                   "a folder when IMAGE is a folder or a 'GLOB'")
    p.add_argument("--overwrite", action="store_true")
    add_batch(p, ".tif")
    add_tiling(p)
    add_image_options(p)
    add_clustering(p)
    add_blockwise(p)
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("compare", help="naive vs correct stitching: seam splits, AP, figure")
    p.add_argument("image")
    p.add_argument("--model", default="default", help="a model file or 'default'")
    p.add_argument("--tile", type=int_list, required=True, help="output tile size request")
    p.add_argument("--gt", help="ground-truth labels (same shape as the image's spatial axes)")
    p.add_argument("--out", help="folder for labels, split map, summary.json and compare.png")
    p.add_argument("--overwrite", action="store_true")
    _add_predict_options(p)
    add_image_options(p)
    add_clustering(p)
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", help="naive stitching over output tile sizes: splits and AP")
    p.add_argument("image")
    p.add_argument("--model", default="default", help="a model file or 'default'")
    p.add_argument("--gt", required=True, help="ground-truth labels")
    p.add_argument("--tiles", required=True,
                   help="comma list of output tile sizes (one size for every axis)")
    p.add_argument("--out", required=True, help="folder for sweep.csv, sweep.json, sweep.png")
    p.add_argument("--overwrite", action="store_true")
    _add_predict_options(p)
    add_image_options(p)
    add_clustering(p)
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_sweep)


def _add_predict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: auto, from the tile size)")
    p.add_argument("--pad", default="reflect", choices=PADS)
    p.add_argument("--channel-axis", type=int, default=None, help="channel axis of the image")


def _seg_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "bandwidth": args.bandwidth, "scope": args.scope, "min_size": args.min_size,
        "fg_threshold": args.fg_threshold, "backend": args.backend,
        "spatial_radius": args.spatial_radius, "relative_min_size": args.relative_min_size,
        "relative_bandwidth": args.relative_bandwidth, "device": args.device,
        "batch_size": args.batch_size, "pad": args.pad, "channel_axis": args.channel_axis,
    }


class StageBars:
    """One progress bar per stage for the API's ``progress(stage, done, total)``."""

    def __init__(self, quiet: bool, prefix: str = ""):
        self.quiet, self.prefix = quiet, prefix
        self.bars: dict[str, Progress] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.bars:
            for bar in self.bars.values():
                bar.close()
            self.bars[stage] = Progress(f"{self.prefix}{stage}", self.quiet)
        self.bars[stage](done, total)

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self.bars.values():
            bar.close()


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _warn_to_stderr(caught: list[warnings.WarningMessage], command: str) -> list[str]:
    notes = [str(w.message) for w in caught]
    for note in dict.fromkeys(notes):
        print(f"nse {command}: warning: {note}", file=sys.stderr)
    return list(dict.fromkeys(notes))


def cmd_segment(args: argparse.Namespace) -> int:
    from ..formats import image_metadata
    from ..io import check_output_path, read_image, write_labels
    from ..model import load_model
    from ..segment import segment

    if (sources := expand_inputs(args.image)) is not None:  # a folder or a glob
        return batch_segment(args, sources)
    if (code := maybe_run(args, "segment")) is not None:  # blockwise: by flag or memory
        return code
    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".tif", ".tiff", ".zarr"):
        raise NSEError(f"--out must end in .npy, .tif, .tiff or .zarr, got {out.name}")
    if _same_file(out, args.image):
        raise NSEError("--out is the input image; choose another file")
    check_output_path(out, args.overwrite)
    image = read_image(args.image, **image_options(args))
    mode, tile = resolve_mode(args)
    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught, StageBars(args.quiet) as bars:
        warnings.simplefilter("always")
        result = segment(model, image, mode, tile, amp=args.amp, progress=bars,
                         **_seg_kwargs(args))
    notes = _warn_to_stderr(caught, "segment")
    # the physical pixel size goes with the labels (OME-TIFF / OME-Zarr outputs)
    meta = image_metadata(args.image, **image_options(args))
    write_labels(out, result.labels, overwrite=args.overwrite, metadata=meta)
    info = result.info
    data = {"out": str(out), "shape": list(result.labels.shape), **info, "warnings": notes}
    t = info["times"]
    tiles = ("one pass" if mode == "whole" else
             f"{info['n_tiles']} tiles of {tuple(info['tile'])}")
    scale = (f" ({info['relative_bandwidth']:.3g} x the span of the median object, "
             f"{info['diameter']:.1f} px)" if info.get("diameter") else "")
    emit(args, data,
         f"wrote {out}: {info['n_instances']} instances, shape {result.labels.shape}, "
         f"{mode} ({tiles}), bandwidth {info['bandwidth']:.3g}{scale}, "
         f"scope {args.scope}; predict {t['predict']:.1f} s, cluster {t['cluster']:.1f} s")
    return 0


def _read_gt(path: str | None) -> Any:
    if path is None:
        return None
    import numpy as np

    from ..io import read_image

    return np.asarray(read_image(path, lazy=False))


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import check_output_dir, compare, format_summary, save_comparison
    from ..io import read_image
    from ..model import load_model

    if args.out is not None:
        check_output_dir(args.out, args.overwrite)
    image = read_image(args.image, lazy=False, **image_options(args))
    gt = _read_gt(args.gt)
    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught, StageBars(args.quiet) as bars:
        warnings.simplefilter("always")
        result = compare(model, image, args.tile, gt=gt, progress=bars, **_seg_kwargs(args))
    notes = _warn_to_stderr(caught, "compare")
    summary = {**result.summary, "warnings": notes}
    text = format_summary(summary)
    if args.out is not None:
        files = save_comparison(result, image, args.out, overwrite=args.overwrite)
        summary["files"] = [str(f) for f in files]
        text += f"\nwrote {len(files)} files to {args.out}"
    emit(args, summary, text)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..compare import check_output_dir, format_sweep, save_sweep, sweep
    from ..io import read_image
    from ..model import load_model

    try:
        tiles = [int(t) for t in args.tiles.split(",") if t.strip()]
    except ValueError:
        raise NSEError(f"--tiles must be a comma list of integers, got {args.tiles!r}") from None
    check_output_dir(args.out, args.overwrite)
    image = read_image(args.image, lazy=False, **image_options(args))
    gt = _read_gt(args.gt)
    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught, StageBars(args.quiet) as bars:
        warnings.simplefilter("always")
        result = sweep(model, image, gt, tiles, progress=bars, **_seg_kwargs(args))
    notes = _warn_to_stderr(caught, "sweep")
    files = save_sweep(result, args.out, overwrite=args.overwrite)
    data = {**result.to_dict(), "warnings": notes, "files": [str(f) for f in files]}
    emit(args, data, format_sweep(result) + f"\nwrote {len(files)} files to {args.out}")
    return 0
