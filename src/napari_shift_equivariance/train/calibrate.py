"""Calibration: the clustering settings that segment a model's validation images best.

:func:`calibrate` predicts each image once, then clusters that prediction on a small grid of
mean-shift bandwidths x foreground thresholds x spatial radii (positions in the clustering
space, in multiples of the annotated objects' typical diameter; 0 = embeddings only), filters
each result by a few minimum sizes (absolute, then relative to the image's median instance
size), and keeps the combination with the best mean AP@0.5, preferring the widest bandwidth
that comes within :data:`WIDE_TOLERANCE` of it (the middle of those when even the grid's
widest does).
:meth:`Calibration.apply` stores it in ``model.config.extra`` (``"bandwidth"``,
``"fg_threshold"``, ``"min_size"``, ``"relative_min_size"``, ``"spatial_radius"`` and the
record ``"calibration"``), where ``segment`` and the widgets pick it up
(``options.ClusterOptions.resolve``). The size filters come after clustering, so trying
several costs no extra clustering.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Cancelled, NSEError, is_cancelled
from ..geometry import object_diameter
from ..labels import check_labels, instance_ids, instance_sizes, remove_relative, remove_small
from ..model import ModelConfig, UNet
from ..options import CALIBRATION_KEYS as SETTING_KEYS
from ..options import (
    check_fraction,
    check_off_or_positive,
    check_spatial_radius,
    model_coord_scale,
)

#: keys of ``model.config.extra`` written by :meth:`Calibration.apply`: the settings that
#: ``ClusterOptions.resolve`` reads, and the record
CALIBRATION_KEYS = (*SETTING_KEYS, "calibration")
#: bandwidths tried, as multiples of the bandwidth the loss margins imply
BANDWIDTH_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)
FG_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: relative minimum sizes tried (fractions of each image's median instance size)
RELATIVE_MIN_SIZES = (0.0, 0.1, 0.2, 0.3)
#: spatial radii tried besides 0, as multiples of the median annotated object diameter
SPATIAL_FACTORS = (0.5, 0.75, 1.0, 1.5)
#: relative bandwidths tried for models with coordinates (fractions of the embedding span of
#: an object of each image's median diameter: :mod:`..clustering.scale`)
RELATIVE_BANDWIDTHS = (0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.35, 0.4)
#: a relative bandwidth is kept only when it beats the best fixed one by more than this
#: mean AP@0.5: on images of one object size the two are the same clustering
RELATIVE_GAIN = 0.02
DEFAULT_FG = 0.5
#: settings within this much AP@0.5 of the best count as tied, and the widest bandwidth
#: among them wins (their middle one when they reach the grid's end): a model clusters the
#: images it was trained on (and their crops) more tightly than new ones, so their best
#: bandwidth errs small (docs/training.md, "The widest bandwidth within 0.02")
WIDE_TOLERANCE = 0.02
SEARCHES = ("coordinate", "full")


def margin_bandwidth(config: ModelConfig) -> float:
    """The bandwidth the model's loss margins imply (the uncalibrated default)."""
    from ..clustering import estimate_bandwidth_from_margins
    from ..loss import DEFAULT_DELTA_D, DEFAULT_DELTA_V

    loss = config.loss or {}
    return float(estimate_bandwidth_from_margins(float(loss.get("delta_v", DEFAULT_DELTA_V)),
                                                 float(loss.get("delta_d", DEFAULT_DELTA_D))))


def default_min_size(ndim: int) -> int:
    from ..options import DEFAULT_MIN_SIZE

    return int(DEFAULT_MIN_SIZE[ndim])


def default_grid(config: ModelConfig, labels: Sequence[np.ndarray] = ()) -> dict[str, list]:
    """The grid :func:`calibrate` searches by default: bandwidths around the margin bandwidth,
    thresholds 0.3..0.9, minimum sizes (the default one and fractions of the smaller
    annotated objects, ``labels``), relative minimum sizes 0..0.3 and spatial radii (0, and
    fractions of the median object diameter; only 0 for a model with coordinates, whose
    embeddings hold the positions already)."""
    b0 = margin_bandwidth(config)
    ms0 = default_min_size(config.ndim)
    sizes = [s for lab in labels for s in instance_sizes(np.asarray(lab)).values()]
    min_sizes = {0, ms0}
    radii = [0.0]
    relative = list(RELATIVE_BANDWIDTHS) if model_coord_scale(config) else []
    if sizes:
        small = float(np.percentile(sizes, 10))
        min_sizes |= {int(small * f) for f in (0.25, 0.5)}
        d = object_diameter(float(np.median(sizes)), config.ndim)
        if not model_coord_scale(config):
            radii += [round(d * f, 1) for f in SPATIAL_FACTORS]
    return {"bandwidth": [round(b0 * f, 4) for f in BANDWIDTH_FACTORS],
            "fg_threshold": list(FG_THRESHOLDS),
            "min_size": sorted(min_sizes),
            "relative_min_size": list(RELATIVE_MIN_SIZES),
            "spatial_radius": radii,
            "relative_bandwidth": relative}


@dataclass
class Calibration:
    """The chosen clustering settings and how they were found.

    ``ap`` is the mean AP@0.5 at the chosen settings, ``default_ap`` at the uncalibrated
    defaults (margin bandwidth, threshold 0.5, default minimum size, no positions);
    ``heldout_ap`` (set by ``train`` when it calibrated on the training images too) the
    AP@0.5 of the held-out split alone at the chosen settings (with ``heldout_iteration``,
    at the settings of a calibration made after that many iterations, before the split joined
    training: ``TrainConfig.refit``);
    ``scores`` holds every grid point as ``{"bandwidth", "fg_threshold", "min_size",
    "relative_min_size", "spatial_radius", "ap"}``; ``data`` says which images were used.
    ``relative_bandwidth`` (0: off) is the relative bandwidth chosen at the best fixed
    point's other settings, ``relative_scores`` its grid as ``{"relative_bandwidth",
    "ap"}`` and ``fixed_ap`` the best fixed point's AP (``ap`` is then the relative one's).
    """

    bandwidth: float
    fg_threshold: float
    min_size: int
    ap: float
    default_ap: float
    grid: dict[str, list] = field(default_factory=dict)
    scores: list[dict] = field(default_factory=list)
    data: str = ""
    n_images: int = 0
    n_instances: int = 0
    seconds: float = 0.0
    search: str = "coordinate"
    complete: bool = True
    spatial_radius: float = 0.0
    relative_min_size: float = 0.0
    heldout_ap: float | None = None
    tolerance: float = 0.0
    heldout_iteration: int | None = None
    relative_bandwidth: float = 0.0
    relative_scores: list[dict] = field(default_factory=list)
    fixed_ap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def validation_ap(self) -> float:
        """AP@0.5 on held-out data at the chosen settings: ``heldout_ap`` when the
        calibration data also held training images, else ``ap``."""
        return self.ap if self.heldout_ap is None else self.heldout_ap

    def ap_text(self) -> str:
        """The AP figures in words, for messages."""
        held = ("" if self.heldout_ap is None else
                f", {self.heldout_ap:.3f} on the held-out crop alone")
        if self.heldout_ap is not None and self.heldout_iteration is not None:
            held += f" (after {self.heldout_iteration} iterations, before it joined training)"
        return (f"AP@0.5 {self.ap:.3f} on the calibration data{held} (uncalibrated "
                f"{self.default_ap:.3f})")

    def describe(self) -> str:
        """The chosen settings in words, for messages."""
        rel = (f" and {self.relative_min_size:.2g} x the median size"
               if self.relative_min_size else "")
        radius = f", spatial radius {self.spatial_radius:.3g} px" if self.spatial_radius else ""
        scale = (f" ({self.relative_bandwidth:.3g} x the median object's span; "
                 f"{self.bandwidth:.3g} finds that object)" if self.relative_bandwidth else "")
        return (f"bandwidth {self.bandwidth:.3g}{scale}, foreground threshold "
                f"{self.fg_threshold:.2g}, "
                f"min size {self.min_size}{rel}{radius}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**d)

    def apply(self, model: UNet) -> UNet:
        """Store the settings in ``model.config.extra`` (in place; returns ``model``)."""
        model.config.extra = {
            **(model.config.extra or {}),
            "bandwidth": float(self.bandwidth), "fg_threshold": float(self.fg_threshold),
            "min_size": int(self.min_size), "spatial_radius": float(self.spatial_radius),
            "relative_min_size": float(self.relative_min_size),
            "relative_bandwidth": float(self.relative_bandwidth),
            "calibration": self.to_dict(),
        }
        return model


def clear_calibration(config: ModelConfig) -> None:
    """Drop calibration keys (they belong to other weights, e.g. a fine-tuning start)."""
    config.extra = {k: v for k, v in (config.extra or {}).items() if k not in CALIBRATION_KEYS}


def _cluster(prediction: np.ndarray, config: ModelConfig, bandwidth: float,
             fg_threshold: float, device: str, spatial_radius: float = 0.0) -> np.ndarray:
    """Labels of one prediction with minimum size 0 (size filters come after)."""
    from ..options import ClusterOptions
    from ..segment import instances_from_prediction

    opts = ClusterOptions(bandwidth=bandwidth, fg_threshold=fg_threshold, min_size=0,
                          spatial_radius=spatial_radius,
                          coord_scale=model_coord_scale(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels, _ = instances_from_prediction(prediction, config.ndim, opts, device=device)
    return labels


def _without_ignored(gt: np.ndarray, pred: np.ndarray, ignore_index: int | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Predicted objects lying mostly on unannotated pixels are dropped before matching."""
    if ignore_index is None:
        return gt, pred
    unannotated = gt == ignore_index
    ids, counts = np.unique(pred[pred > 0], return_counts=True)
    bad = np.bincount(pred[unannotated & (pred > 0)].ravel(), minlength=int(pred.max()) + 1)
    drop = ids[bad[ids] * 2 > counts]
    return np.where(unannotated, 0, gt), np.where(np.isin(pred, drop), 0, pred)


def ap50(gt: np.ndarray, pred: np.ndarray, ignore_index: int | None = None) -> float:
    """AP@0.5 of one prediction (objects mostly on ``ignore_index`` pixels dropped)."""
    from ..metrics import match

    gt, pred = _without_ignored(np.asarray(gt), np.asarray(pred), ignore_index)
    return float(match(gt.astype(np.int64), pred.astype(np.int64), 0.5)["ap"])


def _pick(scores: list[dict], ms0: int, tolerance: float = 0.0) -> dict:
    """The best mean AP; ties go to the smallest spatial radius (0 first), the threshold
    nearest 0.5, then the middle of the tied bandwidths (the widest plateau is the safest),
    then the default minimum size, then the smallest relative minimum size.

    ``tolerance`` > 0: at that spatial radius, the widest bandwidth whose best point lies
    within ``tolerance`` of the best AP, then that bandwidth's best point (same ties). If
    even the grid's widest bandwidth lies within it, the data never shows where merging
    starts (its touching objects are few or already apart in the foreground): then the
    middle of the bandwidths within the tolerance, as for exact ties."""
    best = max(s["ap"] for s in scores)
    tied = [s for s in scores if s["ap"] >= best - 1e-9]
    r = min(s.get("spatial_radius", 0.0) for s in tied)
    if tolerance > 0:
        pool = [s for s in scores if s.get("spatial_radius", 0.0) == r]
        near = sorted({s["bandwidth"] for s in pool if s["ap"] >= best - tolerance - 1e-9})
        flat = near[-1] >= max(s["bandwidth"] for s in pool)
        bw = near[(len(near) - 1) // 2] if flat else near[-1]
        pool = [s for s in pool if s["bandwidth"] == bw]
        top = max(s["ap"] for s in pool)
        tied = [s for s in pool if s["ap"] >= top - 1e-9]
    tied = [s for s in tied if s.get("spatial_radius", 0.0) == r]
    fg = min({s["fg_threshold"] for s in tied}, key=lambda t: (abs(t - 0.5), t))
    tied = [s for s in tied if s["fg_threshold"] == fg]
    bws = sorted({s["bandwidth"] for s in tied})
    bw = bws[(len(bws) - 1) // 2] if len(bws) > 1 else bws[0]
    tied = [s for s in tied if s["bandwidth"] == bw]
    return min(tied, key=lambda s: (abs(s["min_size"] - ms0), s["min_size"],
                                    s.get("relative_min_size", 0.0)))


def calibrate(
    model: UNet,
    images: Sequence[Any],
    labels: Sequence[Any],
    *,
    bandwidths: Sequence[float] | None = None,
    fg_thresholds: Sequence[float] | None = None,
    min_sizes: Sequence[int] | None = None,
    relative_min_sizes: Sequence[float] | None = None,
    spatial_radii: Sequence[float] | None = None,
    relative_bandwidths: Sequence[float] | None = None,
    ignore_index: int | None = None,
    mode: str = "correct",
    tile: Any = None,
    device: str = "auto",
    data: str = "",
    search: str = "coordinate",
    tolerance: float = WIDE_TOLERANCE,
    time_limit: float | None = None,
    predictions: Sequence[np.ndarray] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> Calibration:
    """Choose bandwidth, foreground threshold and minimum size by AP@0.5 on ``images``.

    Parameters
    ----------
    model
        The trained model (not changed: store the result with :meth:`Calibration.apply`).
    images, labels
        Validation images (raw, as ``segment`` takes them) and their instance labels; images
        the model was trained on give optimistic settings.
    bandwidths, fg_thresholds, min_sizes, relative_min_sizes, spatial_radii
        The grid (``None``: :func:`default_grid`). Every minimum size and relative minimum
        size is scored at every clustering (filters after it, no extra cost).
        ``spatial_radii`` and ``relative_min_sizes`` always include 0.
    relative_bandwidths
        For a model with coordinates and no spatial radius chosen: after the search, each
        image's median object diameter is found at the best point (as ``segment`` finds
        it), and these relative bandwidths are tried there
        (:data:`RELATIVE_BANDWIDTHS`; ``[]``: none). The best is kept when it beats the
        fixed bandwidth by more than :data:`RELATIVE_GAIN`.
    search
        ``"coordinate"`` (default): bandwidths at threshold 0.5, thresholds at the best
        bandwidth, bandwidths again at the best threshold, then bandwidths at every other
        spatial radius, and thresholds at the best of those (``2 * B + T - 2 + (R - 1) * B
        + T - 1`` clusterings at most); ``"full"``: every bandwidth x threshold x radius
        (``B * T * R``). Bandwidths are tried from the margin bandwidth outwards, larger
        ones first.
    tolerance
        Mean AP@0.5 within this much of the best counts as tied, and the widest bandwidth
        among the tied settings wins, or their middle one when the grid's widest is among
        them (:data:`WIDE_TOLERANCE`; 0: the best alone).
    time_limit
        Seconds for the whole call: the search stops when they are spent (after at least
        the first clustering) and keeps the best found, and the relative bandwidths after
        it stop before the next one, keeping the fixed bandwidth when none of those tried
        beats it (``complete`` is then False).
    predictions
        Network outputs of ``images`` if already computed (``(E + 1, *spatial)`` each).
    data
        A description of the images, kept in the record.
    progress, cancel
        ``progress(done, total)``; ``cancel`` (callable or ``threading.Event``) stops with
        :class:`~..errors.Cancelled`.
    """
    from ..predict import Predictor

    t0 = time.perf_counter()
    images, labels = list(images), list(labels)
    if len(images) != len(labels) or not images:
        raise NSEError("calibration needs at least one image and exactly one labels image "
                       "per image")
    gts = [check_labels(lab, f"calibration labels {i}", ignore_index)
           for i, lab in enumerate(labels, start=1)]
    n_inst = sum(len(instance_ids(g, ignore_index)) for g in gts)
    if n_inst == 0:
        raise NSEError("the calibration labels hold no instance")
    config = model.config
    grid = default_grid(config, [np.where(g == ignore_index, 0, g) if ignore_index is not None
                                 else g for g in gts])
    if relative_bandwidths is not None:
        rb = sorted({check_off_or_positive(v, "relative bandwidth") for v in relative_bandwidths})
        if any(v == 0 for v in rb):
            raise NSEError("relative bandwidths must be positive (leave them out for none)")
        if rb and not model_coord_scale(config):
            raise NSEError("relative bandwidths need a model trained with coordinates "
                           "(coord_scale > 0)")
        grid["relative_bandwidth"] = rb
    for key, given in (("bandwidth", bandwidths), ("fg_threshold", fg_thresholds),
                       ("min_size", min_sizes), ("relative_min_size", relative_min_sizes),
                       ("spatial_radius", spatial_radii)):
        if given is not None:
            grid[key] = sorted({float(v) if key != "min_size" else int(v) for v in given})
            if not grid[key]:
                raise NSEError(f"calibration grid for {key} is empty")
    grid["spatial_radius"] = sorted({0.0, *map(check_spatial_radius, grid["spatial_radius"])})
    grid["relative_min_size"] = sorted({0.0, *(check_fraction(v, "relative min size")
                                               for v in grid["relative_min_size"])})
    for b in grid["bandwidth"]:
        if not (math.isfinite(b) and b > 0):
            raise NSEError(f"bandwidths must be positive, got {b}")
    for t in grid["fg_threshold"]:
        if not 0 < t < 1:
            raise NSEError(f"foreground thresholds lie strictly between 0 and 1, got {t}")
    if any(m < 0 for m in grid["min_size"]):
        raise NSEError("minimum sizes must be non-negative")
    b0, ms0 = margin_bandwidth(config), default_min_size(config.ndim)

    bws, fgs, mss = grid["bandwidth"], grid["fg_threshold"], grid["min_size"]
    radii, rels = grid["spatial_radius"], grid["relative_min_size"]
    if not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise NSEError(f"the calibration tolerance lies in [0, 1), got {tolerance}")
    if search not in SEARCHES:
        raise NSEError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    n_points = len(bws) * len(fgs) * len(radii) if search == "full" else (
        2 * len(bws) + len(fgs) - 2 + (len(radii) - 1) * len(bws)
        + (len(fgs) - 1 if len(radii) > 1 else 0))
    n_relative = len(grid["relative_bandwidth"])
    total = len(images) * (1 + n_points + (n_relative + 1 if n_relative else 0))
    done = 0

    def step(n: int = 1) -> None:
        nonlocal done
        done = min(done + n, total)
        if progress is not None:
            progress(done, total)
        if is_cancelled(cancel):
            raise Cancelled("calibration cancelled")

    dev = device
    if predictions is None or len(predictions) != len(images):
        predictor = Predictor(model, device)
        dev = str(predictor.device)
        preds = []
        for image in images:
            preds.append(predictor.run(np.asarray(image), mode, tile))
            step()
    else:
        preds = [np.asarray(p) for p in predictions]
        step(len(images))

    table: dict[tuple[float, float, float, int, float], float] = {}
    complete = True

    def late() -> bool:
        return time_limit is not None and time.perf_counter() - t0 > time_limit

    def point(b: float, t: float, r: float = 0.0) -> float:
        """Score ``(b, t, r)`` at every (relative) minimum size; the best of them (-1 once
        out of time)."""
        nonlocal complete
        if (b, t, r, mss[0], rels[0]) not in table:
            if table and late():
                complete = False
                return -1.0
            aps: dict[tuple[int, float], list[float]] = {(m, f): [] for m in mss for f in rels}
            for pred, gt in zip(preds, gts):
                lab = _cluster(pred, config, b, t, dev, r)
                for m in mss:
                    kept = remove_small(lab, m)
                    for f in rels:
                        aps[m, f].append(ap50(gt, remove_relative(kept, f)[0], ignore_index))
                step()
            table.update({(b, t, r, m, f): float(np.mean(v)) for (m, f), v in aps.items()})
        return max(table[(b, t, r, m, f)] for m in mss for f in rels)

    # the margin bandwidth first, then outwards (larger first: over-splitting is the usual
    # failure), so that a search cut short by the time limit has tried the likeliest
    order = sorted(bws, key=lambda v: (abs(math.log(v / b0)), -v))
    if search == "full":
        for r in radii:
            for b in order:
                for t in fgs:
                    point(b, t, r)
    else:
        # coordinate search: bandwidths at the threshold nearest 0.5, thresholds at the best
        # bandwidth, then bandwidths again at the best threshold
        t = min(fgs, key=lambda v: (abs(v - DEFAULT_FG), v))
        b = max(order, key=lambda v: (point(v, t), -abs(v - b0)))
        t_best = max(fgs, key=lambda v: (point(b, v), -abs(v - DEFAULT_FG)))
        if t_best != t:
            for v in order:
                point(v, t_best)
        # positions: bandwidths at every other radius (the best bandwidth moves with it),
        # then thresholds at the best radius and bandwidth
        if len(radii) > 1:
            t = t_best
            for r in radii[1:]:
                for v in order:
                    point(v, t, r)
            b, r = max(((v, r) for r in radii for v in order
                        if (v, t, r, mss[0], rels[0]) in table),
                       key=lambda vr: (point(vr[0], t, vr[1]), -vr[1]))
            if r > 0:
                for v in fgs:
                    point(b, v, r)
    step(max(0, len(images) * (1 + n_points) - done))
    scores = [{"bandwidth": b, "fg_threshold": t, "spatial_radius": r, "min_size": m,
               "relative_min_size": f, "ap": ap} for (b, t, r, m, f), ap in table.items()]
    best = _pick(scores, ms0, tolerance)
    default = _nearest(scores, b0, DEFAULT_FG, ms0)
    relative, rel_scores, rel_ap = 0.0, [], float(best["ap"])
    if n_relative and best["spatial_radius"] == 0 and complete:
        rel_scores = _relative_scores(preds, gts, config, best, grid["relative_bandwidth"],
                                      dev, ignore_index, step, late)
        complete = len(rel_scores) == n_relative
        top_ap = max((s["ap"] for s in rel_scores), default=-1.0)
        tied = [s for s in rel_scores if s["ap"] >= top_ap - 1e-9]
        top = tied[(len(tied) - 1) // 2] if tied else None  # the middle of a plateau
        if top is not None and top["ap"] > best["ap"] + RELATIVE_GAIN:
            relative, rel_ap = float(top["relative_bandwidth"]), float(top["ap"])
    step(total)
    return Calibration(
        bandwidth=float(best["bandwidth"]), fg_threshold=float(best["fg_threshold"]),
        min_size=int(best["min_size"]), ap=rel_ap,
        relative_bandwidth=relative, relative_scores=rel_scores,
        fixed_ap=float(best["ap"]) if rel_scores else None,
        spatial_radius=float(best["spatial_radius"]),
        relative_min_size=float(best["relative_min_size"]),
        default_ap=float(default["ap"]), grid=grid, scores=scores, data=data,
        n_images=len(images), n_instances=int(n_inst), seconds=time.perf_counter() - t0,
        search=search, complete=complete, tolerance=float(tolerance))


def _relative_scores(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                     config: ModelConfig, best: dict, relatives: Sequence[float], device: str,
                     ignore_index: int | None, step: Callable[[], None],
                     late: Callable[[], bool]) -> list[dict]:
    """Mean AP@0.5 at each relative bandwidth, the other settings those of ``best``: each
    image's diameter found at ``best`` on its central sample, as ``segment`` does. Stops
    before the next relative bandwidth once ``late()``: the scores of those tried."""
    from ..clustering.scale import scaled_bandwidth
    from ..options import ClusterOptions
    from ..segment import fix_bandwidth

    s = model_coord_scale(config)
    t, m, f = best["fg_threshold"], best["min_size"], best["relative_min_size"]
    found = ClusterOptions(bandwidth=best["bandwidth"], fg_threshold=t, min_size=m,
                           relative_min_size=f, spatial_radius=0.0, coord_scale=s,
                           relative_bandwidth=1.0)
    if late():
        return []
    diameters = []
    for pred in preds:
        diameters.append(fix_bandwidth(pred, config.ndim, found, device=device)[1])
        step()
    out: list[dict] = []
    for r in relatives:
        if late():
            break
        aps = []
        for pred, gt, d in zip(preds, gts, diameters):
            b = scaled_bandwidth(r, s, d) if d else best["bandwidth"]
            kept = remove_small(_cluster(pred, config, b, t, device), m)
            aps.append(ap50(gt, remove_relative(kept, f)[0], ignore_index))
            step()
        out.append({"relative_bandwidth": float(r), "ap": float(np.mean(aps))})
    return out


def _nearest(scores: list[dict], b: float, t: float, m: int) -> dict:
    return min(scores, key=lambda s: (s["spatial_radius"], s["relative_min_size"],
                                      abs(s["bandwidth"] - b), abs(s["fg_threshold"] - t),
                                      abs(s["min_size"] - m)))


def evaluate(model: UNet, images: Sequence[Any], labels: Sequence[Any], *,
             bandwidth: float | None = None, ignore_index: int | None = None,
             mode: str = "correct", tile: Any = None, device: str = "auto",
             thresh: float = 0.5) -> dict[str, Any]:
    """Segment each image (the model's own clustering settings unless ``bandwidth`` is given)
    and match it to its labels: mean AP@``thresh`` and counts.

    Predicted objects lying mostly on ``ignore_index`` pixels are dropped before matching.
    """
    from ..metrics import match
    from ..segment import segment

    aps, per_image = [], []
    for image, gt in zip(images, labels):
        gt = np.asarray(gt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = segment(model, np.asarray(image), mode, tile, bandwidth=bandwidth,
                           device=device).labels
        gt, pred = _without_ignored(gt, pred, ignore_index)
        m = match(gt.astype(np.int64), pred.astype(np.int64), thresh)
        aps.append(float(m["ap"]))
        per_image.append({"ap": float(m["ap"]), "n_gt": int(len(np.unique(gt[gt > 0]))),
                          "n_pred": int(len(np.unique(pred[pred > 0])))})
    return {"ap": float(np.mean(aps)) if aps else math.nan, "images": per_image}
