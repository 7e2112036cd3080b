"""``nse evaluate``: AP@0.5, the DSB score, TP/FP/FN, false splits and merges against ground truth.

``nse evaluate PRED --gt GT`` scores a label image; ``nse evaluate IMAGE --gt GT --model M``
segments IMAGE with M first (every ``nse segment`` option applies); ``--baseline`` segments it
with the Otsu + distance-transform watershed baseline instead (no model).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..batch import error_message as _message
from ..errors import Cancelled, NSEError
from ._common import add_common, add_tiling, emit, resolve_mode
from .segment import StageBars, _seg_kwargs, _warn_to_stderr, add_clustering


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="AP@0.5, DSB AP@0.5:0.95, false splits/merges vs ground truth",
        description="Score instance labels against ground truth. Matching is one to one "
        "(Hungarian, IoU >= t) as in the 2018 Data Science Bowl: AP@t = TP / (TP + FP + FN); "
        "the DSB score is its mean over t = 0.5, 0.55, ..., 0.95. False splits / merges "
        "(Caicedo et al. 2019): objects are associated when their IoU exceeds --split-iou "
        "(0.1); a split is a true object associated with several predicted ones, a merge a "
        "predicted object associated with several true ones.")
    p.add_argument("pred", metavar="PRED|IMAGE",
                   help="predicted labels, or an image to segment with --model / --baseline; "
                   "a folder or a glob scores every file (counts pooled over the files)")
    p.add_argument("--gt", required=True, help="ground-truth labels (same shape); for a "
                   "folder/glob: a folder/glob holding files of the same names")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="segment PRED (an image) with this model file or "
                     "'default' / 'default3d' first")
    src.add_argument("--baseline", action="store_true",
                     help="segment PRED (an image) with the Otsu + watershed baseline first")
    p.add_argument("--split-iou", type=float, default=0.1,
                   help="IoU above which objects count as associated for splits/merges")
    p.add_argument("--save", metavar="LABELS",
                   help="also write the labels that were scored (.tif, .npy, .zarr; one "
                   "image only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save file")
    add_tiling(p)
    add_clustering(p)
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_evaluate)


def _pairs(pred: str, gt: str) -> list[tuple[Path, Path]]:
    """The (prediction-or-image, ground-truth) files to score: one pair, or for a folder /
    glob every file paired by name with the file of the same stem in ``--gt``."""
    from ..batch import expand_inputs, pair_by_stem

    sources = expand_inputs(pred)
    if sources is None:
        if expand_inputs(gt) is not None:
            raise NSEError(f"--gt {gt} names several files but {pred} is one")
        return [(Path(pred), Path(gt))]
    return pair_by_stem(sources, gt)


def _labels_for(args: argparse.Namespace, path: Path, bars: StageBars) -> tuple[np.ndarray, dict]:
    from ..io import read_image

    if args.baseline:
        from ..baseline import watershed_baseline

        image = np.asarray(read_image(path, lazy=False))
        return watershed_baseline(image), {"source": "baseline"}
    if args.model is None:
        labels = np.asarray(read_image(path, lazy=False))
        if labels.dtype.kind not in "iu":
            raise NSEError(f"{path} holds {labels.dtype} values, not labels; pass --model M "
                           f"(or --baseline) to segment an image first")
        return labels, {"source": "labels"}
    from ..model import load_model
    from ..segment import segment

    model = load_model(args.model)
    mode, tile = resolve_mode(args)
    result = segment(model, read_image(path), mode, tile, amp=args.amp, progress=bars,
                     **_seg_kwargs(args))
    info = {k: result.info.get(k) for k in ("mode", "bandwidth", "scope", "fg_threshold",
                                             "min_size", "relative_min_size", "relative_bandwidth",
                                             "diameter", "n_tiles")}
    return result.labels, {"source": "model", "model": str(args.model), **info}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..io import check_output_path, read_image, write_labels
    from ..metrics import evaluate, pool

    pairs = _pairs(args.pred, args.gt)
    if args.save is not None:
        if len(pairs) > 1:
            raise NSEError("--save writes one label image; it cannot be used with a folder")
        check_output_path(args.save, args.overwrite)
    rows: list[dict[str, Any]] = []
    results = []
    failed: list[dict[str, Any]] = []
    for pred_path, gt_path in pairs:
        try:
            gt = np.asarray(read_image(gt_path, lazy=False))
            with warnings.catch_warnings(record=True) as caught, StageBars(args.quiet) as bars:
                warnings.simplefilter("always")
                labels, info = _labels_for(args, pred_path, bars)
            notes = _warn_to_stderr(caught, "evaluate")
            if labels.shape != gt.shape:
                raise NSEError(f"labels {pred_path} have shape {labels.shape}, ground truth "
                               f"{gt_path} {gt.shape}")
            ev = evaluate(gt, labels, split_iou=args.split_iou)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - in a folder one bad file must not stop the rest
            if len(pairs) == 1:
                raise
            failed.append({"pred": str(pred_path), "gt": str(gt_path), "status": "failed",
                           "error": _message(exc)})
            print(f"nse evaluate: FAILED: {pred_path.name}: {_message(exc)}", file=sys.stderr)
            continue
        results.append(ev)
        rows.append({"pred": str(pred_path), "gt": str(gt_path), **info, **ev.to_dict(),
                     "warnings": notes})
        if args.save is not None:
            write_labels(args.save, np.asarray(labels, np.uint32), overwrite=args.overwrite)
    if not results:
        raise NSEError(f"none of the {len(pairs)} files could be scored")
    total = pool(results)
    text = total.summary()
    if len(rows) > 1:
        text = "\n".join([*(f"{Path(r['pred']).name}: AP@0.5 {r['ap50']:.3f}  DSB "
                             f"{r['dsb']:.3f}" for r in rows), f"all {len(rows)}: {text}"])
    if args.save is not None:
        text += f"\nwrote {args.save}"
    if failed:
        text += f"\n{len(failed)} of {len(pairs)} files failed: " + ", ".join(
            Path(f["pred"]).name for f in failed)
    emit(args, {**total.to_dict(), "images": rows, "failed": failed}, text)
    return 1 if failed else 0
