"""Naive vs correct stitching on one image, the tile-size sweep, and their figures.

:func:`compare` segments an image twice with the same model, tile request and (deterministic)
clustering: once with naive tiles (exactly the requested size, at multiples of it) and once with
correct tiles (``n * f^l`` on the global ``f^l`` grid, equal to the whole-image pass). Objects
of the correct segmentation that the naive one splits at its tile borders are false splits
caused by stitching (the *split map*).

:func:`sweep` repeats the naive segmentation over many output tile sizes against ground
truth (the paper's Fig. 6), with the correct segmentation as the reference.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .clustering.components import with_coordinate_image
from .errors import NSEError
from .model import UNet, load_model
from .segment import SegmentResult, relabel_sequential, segment
from .tiling import TilePlan

SPLIT_DEFINITION = (
    "Caicedo et al. 2019: a GT and a predicted object are associated when IoU > 0.1; a false "
    "split is a GT object associated with more than one predicted object, a false merge a "
    "predicted object associated with more than one GT object; each object counts once"
)
SEAM_DEFINITION = (
    "objects of the reference (the ground truth when given, else the other stitching's "
    "segmentation) that touch a tile border of this plan and of which at least two labels of "
    "this segmentation each cover >= 10 %; without ground truth the correct figure is a "
    "control (naive objects cut by correct stitching): naive minus correct estimates the "
    "splits due to seams"
)
SPLIT_MAP_DEFINITION = (
    "objects of the correct segmentation that touch a naive tile border and of which at least "
    "two naive labels each cover >= 10 % (split only by naive stitching)"
)
EMBEDDING_DEFINITION = (
    "mean L2 distance of the embeddings (plus the model's coordinates, as clustered) of "
    "neighbouring foreground pixels across tile borders divided by the same mean within "
    "tiles (about 1: no seam)"
)
AP_DEFINITION = "AP@0.5 = TP / (TP + FP + FN), optimal 1:1 matching at IoU >= 0.5"


# -- output folders ---------------------------------------------------------------------------


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty folder unless ``overwrite``; the parent must exist."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise NSEError(f"{path} exists and is not a folder")
        if any(path.iterdir()) and not overwrite:
            raise NSEError(f"{path} exists and is not empty; refusing to overwrite it "
                           f"(pass --overwrite)")
    elif not path.parent.exists():
        raise NSEError(f"output folder {path.parent} does not exist")
    return path


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder ``<path>.partial``; its files land in ``path`` only when the
    block succeeds (a new folder is renamed; into an existing one files are moved one by one,
    ``summary.json`` last, and the folder's other files are kept)."""
    path = check_output_dir(path, overwrite)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not path.exists():
        os.replace(tmp, path)
        return
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == "summary.json"):
        target = path / f.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(f, target)
    tmp.rmdir()


# -- scores -----------------------------------------------------------------------------------


def _check_gt(gt: Any, shape: Sequence[int], ndim: int) -> np.ndarray | None:
    """Ground truth of the labels' shape; with leading axes (a 2D model on a stack) each plane's
    objects get ids of their own, since the segmentation is made plane by plane too."""
    if gt is None:
        return None
    gt = np.asarray(gt)
    if tuple(gt.shape) != tuple(shape):
        raise NSEError(f"ground truth has shape {tuple(gt.shape)} but the labels have shape "
                       f"{tuple(shape)}; they must match")
    if gt.dtype.kind not in "iub":
        raise NSEError(f"ground truth must hold integer labels, got dtype {gt.dtype}")
    if gt.dtype.kind == "i" and gt.size and gt.min() < 0:
        raise NSEError("ground truth has negative labels")
    if gt.ndim == ndim:
        return gt.astype(np.uint32) if gt.dtype.kind == "b" else gt
    out = np.zeros(gt.shape, np.uint32)
    count = 0
    for idx in np.ndindex(*gt.shape[: gt.ndim - ndim]):
        out[idx], k = relabel_sequential(gt[idx], start=count + 1)
        count += k
    return out


def gt_scores(gt: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AP@0.5 and false splits / merges (Caicedo et al. 2019) of ``labels`` against ``gt``."""
    m = metrics.match(gt, labels, 0.5)
    sm = metrics.splits_and_merges(gt, labels, iou=0.1)
    return {
        "ap50": float(m["ap"]),
        "tp": int(m["tp"]), "fp": int(m["fp"]), "fn": int(m["fn"]),
        "false_splits": int(sm["false_splits"]),
        "false_merges": int(sm["false_merges"]),
        "n_gt": int(len(np.unique(gt[gt != 0]))),
    }


def _border_mask(plan: TilePlan, shape: Sequence[int], width: int = 1) -> np.ndarray:
    """The plan's border mask broadcast over leading axes to ``shape``."""
    return np.broadcast_to(plan.border_mask(width), tuple(shape))


def seam_figures(result: SegmentResult, reference: np.ndarray) -> dict[str, Any]:
    """Seam splits of ``result`` against ``reference`` at ``result``'s tile borders, and the
    embedding seam statistic (foreground = pixels with a label)."""
    mask = _border_mask(result.plan, result.labels.shape)
    seams = metrics.seam_splits(result.labels, reference, np.ascontiguousarray(mask))
    lead = result.labels.ndim - result.plan.ndim
    # in the space mean-shift clusters: with coordinates the offsets vary inside every object
    # and only their sum with the positions is meant to be constant
    points = with_coordinate_image(result.prediction[:-1], result.info.get("coord_scale") or 0.0,
                                   result.plan.ndim)
    stat = metrics.embedding_seam_statistic(points, result.labels > 0,
                                            [[]] * lead + result.plan.borders())
    return {"seam_splits": int(seams["count"]),
            "embedding_seam_statistic": _finite(stat["ratio"]),
            "embedding_jump_across": _finite(stat["across"]),
            "embedding_jump_within": _finite(stat["within"]),
            "_seams": seams}


def _finite(v: float) -> float | None:
    """JSON has no NaN: undefined figures are ``None``."""
    return float(v) if np.isfinite(v) else None


# -- compare ----------------------------------------------------------------------------------


@dataclass
class CompareResult:
    """Both segmentations, the objects split only by naive stitching, and the figures."""

    naive: SegmentResult
    correct: SegmentResult
    split_map: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def _entry(res: SegmentResult, seams: dict[str, Any], gt: np.ndarray | None) -> dict[str, Any]:
    entry = {
        "n_instances": res.n_instances,
        "tile": res.info["tile"],
        "n_tiles": res.info["n_tiles"],
        **{k: v for k, v in seams.items() if not k.startswith("_")},
        "times": res.info["times"],
    }
    if gt is not None:
        entry.update(gt_scores(gt, res.labels))
    return entry


def compare(model: UNet | str, image: Any, tile: int | Sequence[int], *, gt: Any = None,
            progress: Any = None, **segment_kwargs: Any) -> CompareResult:
    """Segment ``image`` with naive and with correct stitching and compare them.

    ``segment_kwargs`` go to :func:`segment.segment` for both runs (bandwidth, scope, ``cluster``,
    ...); with a relative bandwidth, the one the correct run finds clusters the naive run
    too, so that only the stitching differs. ``gt`` (labels of the image's shape without
    channel axis) adds AP@0.5 and false splits/merges. ``progress(stage, done, total)`` gets
    stages ``correct predict``, ``correct cluster``, ``naive predict``, ``naive cluster``.
    """
    if not isinstance(model, UNet):
        model = load_model(model)
    for key in ("mode", "tile"):
        if key in segment_kwargs:
            raise NSEError(f"compare sets {key} itself")
    runs = {}
    kwargs = dict(segment_kwargs)
    for mode in ("correct", "naive"):
        stage = None if progress is None else (
            lambda s, d, t, m=mode: progress(f"{m} {s}", d, t))
        runs[mode] = segment(model, image, mode, tile, progress=stage, **kwargs)
        kwargs = {**kwargs, **same_clustering(runs[mode])}
    return compare_results(runs["naive"], runs["correct"], gt)


def same_clustering(reference: SegmentResult) -> dict[str, Any]:
    """Keywords for :func:`segment.segment` that cluster at ``reference``'s bandwidth: a
    relative bandwidth found once, on the reference, so that naive and correct stitching
    are clustered alike."""
    if not reference.info.get("diameter"):
        return {}
    return {"bandwidth": reference.info["bandwidth"], "relative_bandwidth": 0.0}


def compare_results(naive: SegmentResult, correct: SegmentResult,
                    gt: Any = None) -> CompareResult:
    """Compare two segmentations of one image made with naive and with correct tiles."""
    gt = _check_gt(gt, naive.labels.shape, naive.plan.ndim)
    naive_seams = seam_figures(naive, correct.labels if gt is None else gt)
    correct_seams = seam_figures(correct, naive.labels if gt is None else gt)
    split = (naive_seams if gt is None else seam_figures(naive, correct.labels))["_seams"]
    info = correct.info
    summary = {
        "naive": _entry(naive, naive_seams, gt),
        "correct": _entry(correct, correct_seams, gt),
        "requested_tile": naive.info["requested_tile"],
        "grid": info["grid"],
        "max_abs_difference": float(np.abs(naive.prediction - correct.prediction).max()),
        "split_objects": int(split["count"]),
        "seam_reference": "other stitching" if gt is None else "ground truth",
        "clustering": {k: info[k] for k in ("bandwidth", "scope", "min_size",
                                            "relative_min_size", "relative_bandwidth", "diameter",
                                            "fg_threshold", "backend")},
        "definitions": {"seam_splits": SEAM_DEFINITION, "split_objects": SPLIT_MAP_DEFINITION,
                        "embedding_seam_statistic": EMBEDDING_DEFINITION,
                        **({"false_splits_merges": SPLIT_DEFINITION, "ap50": AP_DEFINITION}
                           if gt is not None else {})},
    }
    return CompareResult(naive, correct, split["map"], summary)


def format_summary(summary: dict[str, Any]) -> str:
    """The comparison as a small text table."""
    keys = [("n_instances", "instances"), ("n_tiles", "tiles"), ("seam_splits", "seam splits"),
            ("embedding_seam_statistic", "embedding seam statistic")]
    if "ap50" in summary["naive"]:
        keys += [("ap50", "AP@0.5"), ("false_splits", "false splits"),
                 ("false_merges", "false merges")]
    lines = [f"{'':28}{'naive':>12}{'correct':>12}",
             f"{'tile':28}{str(tuple(summary['naive']['tile'])):>12}"
             f"{str(tuple(summary['correct']['tile'])):>12}"]
    for key, name in keys:
        lines.append(f"{name:28}{_fmt(summary['naive'][key])}{_fmt(summary['correct'][key])}")
    if summary.get("seam_reference") == "other stitching":
        lines.append("seam splits without ground truth: naive = correct objects cut at naive "
                     "borders; correct = the control with the roles swapped")
    lines.append(f"max |naive - correct| of the network output: "
                 f"{summary['max_abs_difference']:.3g}; objects split only by naive "
                 f"stitching: {summary['split_objects']}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return f"{'n/a':>12}"
    return f"{v:12.3f}" if isinstance(v, float) else f"{v:12d}"


def save_comparison(result: CompareResult, image: Any, out_dir: str | os.PathLike,
                    overwrite: bool = False,
                    extra: dict[str, np.ndarray] | None = None) -> list[Path]:
    """Write ``naive_labels.tif``, ``correct_labels.tif``, ``split_map.tif``, ``compare.png``
    and ``summary.json`` into ``out_dir`` (refused when it is not empty, unless ``overwrite``);
    ``extra`` maps more ``.tif`` names to arrays. Nothing lands in ``out_dir`` unless all of
    it was written."""
    import tifffile

    arrays = {**(extra or {}), "naive_labels.tif": result.naive.labels,
              "correct_labels.tif": result.correct.labels, "split_map.tif": result.split_map}
    with output_dir(out_dir, overwrite) as tmp:
        for name, array in arrays.items():
            tifffile.imwrite(tmp / name, np.asarray(array), compression="zlib")
        comparison_figure(image, result, tmp / "compare.png")
        (tmp / "summary.json").write_text(json.dumps(result.summary, indent=2))
    names = [*arrays, "compare.png", "summary.json"]
    return [Path(out_dir) / n for n in names]


# -- sweep ------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """One row per naive tile size, plus the correct-stitching reference."""

    rows: list[dict[str, Any]]
    reference: dict[str, Any]
    grid: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "naive": self.rows, "correct": self.reference,
                "definitions": {"false_splits_merges": SPLIT_DEFINITION, "ap50": AP_DEFINITION,
                                "seam_splits": SEAM_DEFINITION,
                                "split_objects": SPLIT_MAP_DEFINITION}}


def sweep(model: UNet | str, image: Any, gt: Any, tiles: Sequence[int | Sequence[int]], *,
          progress: Any = None, cancel: Any = None, **segment_kwargs: Any) -> SweepResult:
    """Naive stitching at each output tile size in ``tiles`` against ``gt``; correct
    stitching once as the reference (every ``n * f^l`` tiling gives the same result)."""
    if not isinstance(model, UNet):
        model = load_model(model)
    if len(tiles) == 0:
        raise NSEError("give at least one tile size")
    if gt is None:
        raise NSEError("a sweep needs ground-truth labels")
    grid = model.config.geometry.grid
    largest = max(tiles, key=lambda t: np.min(t))
    ref_tile = [max(g, (int(t) // g) * g) for t, g in zip(np.broadcast_to(largest, len(grid)),
                                                            grid)]
    reference = segment(model, image, "correct", ref_tile, cancel=cancel, **segment_kwargs)
    segment_kwargs = {**segment_kwargs, **same_clustering(reference)}
    gt = _check_gt(gt, reference.labels.shape, reference.plan.ndim)
    rows = []
    for i, t in enumerate(tiles):
        if progress is not None:
            progress("sweep", i, len(tiles))
        res = segment(model, image, "naive", t, cancel=cancel, **segment_kwargs)
        row = _sweep_row(res, gt, grid)
        row["split_objects"] = seam_figures(res, reference.labels)["seam_splits"]
        rows.append(row)
    if progress is not None:
        progress("sweep", len(tiles), len(tiles))
    return SweepResult(rows, _sweep_row(reference, gt, grid), list(grid))


def _sweep_row(res: SegmentResult, gt: np.ndarray, grid: Sequence[int]) -> dict[str, Any]:
    tile = res.info["requested_tile"]
    return {"tile": tile, "used_tile": res.info["tile"],
            "multiple_of_grid": bool(all(int(a) % g == 0 for a, g in zip(tile, grid))),
            "n_tiles": res.info["n_tiles"], "n_instances": res.n_instances,
            **gt_scores(gt, res.labels), "seam_splits": seam_figures(res, gt)["seam_splits"],
            "time": res.info["times"]["total"]}


def format_sweep(result: SweepResult) -> str:
    lines = [f"{'tile':>10}{'n*f^l':>7}{'AP@0.5':>9}{'splits':>8}{'merges':>8}"
             f"{'seam splits':>13}{'split vs correct':>18}"]
    for r in [*result.rows, result.reference]:
        name = "correct" if r is result.reference else str(r["tile"][0])
        lines.append(f"{name:>10}{'yes' if r['multiple_of_grid'] else '':>7}"
                     f"{r['ap50']:9.3f}{r['false_splits']:8d}{r['false_merges']:8d}"
                     f"{r['seam_splits']:13d}{r.get('split_objects', ''):>18}")
    return "\n".join(lines)


def save_sweep(result: SweepResult, out_dir: str | os.PathLike,
               overwrite: bool = False) -> list[Path]:
    """Write ``sweep.csv``, ``sweep.png`` and ``summary.json`` into ``out_dir``."""
    names = ["sweep.csv", "sweep.png", "summary.json"]
    cols = ["tile", "multiple_of_grid", "n_tiles", "n_instances", "ap50", "false_splits",
            "false_merges", "seam_splits", "split_objects", "time"]
    with output_dir(out_dir, overwrite) as tmp:
        with open(tmp / names[0], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["mode", *cols])
            for r in result.rows:
                w.writerow(["naive", *[_cell(r.get(c)) for c in cols]])
            w.writerow(["correct", *[_cell(result.reference.get(c)) for c in cols]])
        sweep_figure(result, tmp / names[1])
        (tmp / names[2]).write_text(json.dumps(result.to_dict(), indent=2))
    return [Path(out_dir) / n for n in names]


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return "x".join(map(str, v))
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


# -- figures (matplotlib Agg) -----------------------------------------------------------------


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure on the Agg canvas, without pyplot (no global backend state, safe in napari)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols)


def _plane(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The middle 2D plane (last two axes) of an array of label ``shape`` (an image may carry
    one more, channel, axis: averaged)."""
    a = np.asarray(array)
    if a.ndim == len(shape) + 1:
        axis = next(i for i in range(a.ndim) if a.shape[:i] + a.shape[i + 1:] == tuple(shape))
        a = a.mean(axis=axis)
    return a[tuple(s // 2 for s in a.shape[:-2])]


def _label_rgb(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random bright colours per label, black background (shuffled so neighbours differ)."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    colours[0] = 0
    return colours[labels]


def _grid_lines(ax: Any, plan: TilePlan, colour: str) -> None:
    borders = plan.borders()
    for p in borders[-2]:
        ax.axhline(p - 0.5, color=colour, lw=0.8, ls="--")
    for p in borders[-1]:
        ax.axvline(p - 0.5, color=colour, lw=0.8, ls="--")


def _contrast(img: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(img, [1, 99.8])
    return float(lo), float(max(hi, lo + 1e-6))


def _cuts(naive: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Pixels where two naive labels meet inside one split object: where it was cut."""
    cut = np.zeros(naive.shape, bool)
    for axis in range(naive.ndim):
        a = [slice(None)] * naive.ndim
        b = [slice(None)] * naive.ndim
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        here = (split[a] > 0) & (split[a] == split[b]) & (naive[a] != naive[b])
        cut[a] |= here
        cut[b] |= here
    return cut


def comparison_figure(image: Any, result: CompareResult, path: str | os.PathLike) -> Path:
    """Image | naive labels | correct labels | objects split by naive stitching, with the
    tile grids overlaid (middle plane of 3D data / stacks)."""
    shape = result.correct.labels.shape
    img = _plane(image, shape)
    naive, correct = _plane(result.naive.labels, shape), _plane(result.correct.labels, shape)
    split = _plane(result.split_map, shape)
    s = result.summary
    fig, axes = _figure(2, 2, (11, 11.6))
    axes = axes.ravel()
    vmin, vmax = _contrast(img)
    axes[0].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
    axes[0].set_title("image")
    for ax, name, lab, res in ((axes[1], "naive", naive, result.naive),
                               (axes[2], "correct", correct, result.correct)):
        ax.imshow(_label_rgb(lab), interpolation="nearest")
        _grid_lines(ax, res.plan, "white")
        e = s[name]
        extra = f", AP@0.5 {e['ap50']:.2f}, splits {e['false_splits']}" if "ap50" in e else ""
        ax.set_title(f"{name}: tiles {tuple(e['tile'])}\n{e['n_instances']} objects, "
                     f"{e['seam_splits']} seam splits{extra}", fontsize=9)
    axes[3].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
    overlay = np.zeros((*split.shape, 4))
    overlay[split > 0] = (1.0, 0.1, 0.1, 0.6)
    overlay[_cuts(naive, split)] = (1.0, 1.0, 1.0, 1.0)
    axes[3].imshow(overlay, interpolation="nearest")
    _grid_lines(axes[3], result.naive.plan, "yellow")
    axes[3].set_title(f"split only by naive stitching: {s['split_objects']}\n"
                      f"(red; white: where naive labels meet; dashed: naive tiles)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"grid f^l = {tuple(s['grid'])}: naive tiles {tuple(s['naive']['tile'])}, "
                 f"correct tiles {tuple(s['correct']['tile'])} (n*f^l on the f^l grid)",
                 fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)


def sweep_figure(result: SweepResult, path: str | os.PathLike) -> Path:
    """False splits, AP@0.5 and the objects split relative to correct stitching against the
    naive output tile size; multiples of ``f^l`` marked, correct stitching as a reference."""
    x = np.array([r["tile"][0] for r in result.rows])
    order = np.argsort(x)
    x = x[order]
    g = result.grid[0]
    fig, axes = _figure(1, 3, (15, 4))
    panels = ((axes[0], "false_splits", "false splits (Caicedo et al. 2019)"),
              (axes[1], "ap50", "AP@0.5"),
              (axes[2], "split_objects", "objects of correct split at naive seams"))
    for ax, key, name in panels:
        y = np.array([result.rows[i][key] for i in order], dtype=float)
        on = np.array([result.rows[i]["multiple_of_grid"] for i in order])
        ax.plot(x, y, "-", color="tab:blue", lw=1)
        ax.plot(x[~on], y[~on], "o", color="tab:blue", label="naive")
        ax.plot(x[on], y[on], "s", color="tab:green", label=f"naive, tile = n*{g}")
        if key in result.reference:
            ax.axhline(result.reference[key], color="tab:red", ls="--",
                       label="correct (n*f^l on the f^l grid)")
        for m in range(-(-int(x.min()) // g) * g, int(x.max()) + 1, g):
            ax.axvline(m, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("output tile size (px)")
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    fig.suptitle(f"naive stitching vs output tile size (grid f^l = {g}; grey lines: "
                 f"multiples of f^l)", fontsize=10)
    fig.savefig(path, dpi=110)
    return Path(path)
