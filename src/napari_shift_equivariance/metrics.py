"""Instance segmentation metrics: matching and AP, false splits and merges, seam statistics.

Everything starts from the sparse contingency table of two label images (pixel counts of each
overlapping pair of objects), so the cost is one pass over the pixels plus work proportional
to the number of overlapping pairs, never a loop over objects. Label 0 is background.

Conventions follow ``stardist.matching`` (DSB 2018): a ratio with a zero denominator is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import NSEError

DSB_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _labels(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise NSEError(f"{name} must be an integer label image, got dtype {a.dtype}")
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise NSEError(f"{name} has negative labels")
    return a


def _pair(gt, pred, names=("gt", "pred")) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = _labels(names[0], gt), _labels(names[1], pred)
    if gt.shape != pred.shape:
        raise NSEError(f"{names[0]} and {names[1]} differ in shape: {gt.shape} vs {pred.shape}")
    return gt, pred


def _compact(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, index)``: the object ids present (without 0) and each pixel's index into
    ``[0, *ids]`` (0 for background)."""
    a = a.ravel()
    top = int(a.max()) if a.size else 0
    if top <= 4 * a.size + 1024:  # a lookup table beats sorting
        ids = np.flatnonzero(np.bincount(a, minlength=1))
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(len(ids))
        index = lut[a]
    else:
        ids, index = np.unique(a, return_inverse=True)
        index = index.reshape(-1)
    if len(ids) and ids[0] == 0:
        return ids[1:], index
    return ids, index + 1


class _Overlap:
    """Sparse contingency table of two label images.

    ``ids_a``/``ids_b``: object ids; ``area_a``/``area_b``: their pixel counts; ``i``, ``j``,
    ``inter``: object indices (into the ids) and pixel count of every overlapping pair.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.ids_a, ia = _compact(a)
        self.ids_b, ib = _compact(b)
        na, nb = len(self.ids_a) + 1, len(self.ids_b) + 1
        self.area_a = np.bincount(ia, minlength=na)[1:]
        self.area_b = np.bincount(ib, minlength=nb)[1:]
        key = ia * nb + ib
        if na * nb <= 4 * key.size + 1024:
            counts = np.bincount(key, minlength=na * nb)
            key = np.flatnonzero(counts)
            counts = counts[key]
        else:
            key, counts = np.unique(key, return_counts=True)
        i, j = np.divmod(key, nb)
        objects = (i > 0) & (j > 0)
        self.i, self.j, self.inter = i[objects] - 1, j[objects] - 1, counts[objects]

    def iou(self) -> np.ndarray:
        """Intersection over union of every overlapping pair."""
        return self.inter / (self.area_a[self.i] + self.area_b[self.j] - self.inter)


def _div(x: float, y: float) -> float:
    return float(x) / y if y else 0.0


def _assign(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Scores of an optimal one-to-one matching of the candidate pairs ``(i[k], j[k], s[k])``:
    as many pairs as possible, then the largest total score.

    Each connected component of the candidate graph is solved on its own: a single pair is
    matched as is, the rest with the Hungarian algorithm (scipy's linear_sum_assignment).
    """
    ri, i = np.unique(i, return_inverse=True)
    rj, j = np.unique(j, return_inverse=True)
    graph = coo_matrix((np.ones(len(i)), (i, len(ri) + j)), shape=(len(ri) + len(rj),) * 2)
    comp = connected_components(graph, directed=False)[1][i]
    size = np.bincount(comp)
    single = size[comp] == 1
    matched = [s[single]]
    multi = np.flatnonzero(~single)
    multi = multi[np.argsort(comp[multi], kind="stable")]
    cuts = np.flatnonzero(np.diff(comp[multi])) + 1
    for e in np.split(multi, cuts) if len(multi) else []:
        ui, ei = np.unique(i[e], return_inverse=True)
        uj, ej = np.unique(j[e], return_inverse=True)
        # the score term sums to less than one pair, so the count of pairs comes first
        score = np.zeros((len(ui), len(uj)))
        score[ei, ej] = 1 + s[e] / (2 * min(len(ui), len(uj)))
        rows, cols = linear_sum_assignment(score, maximize=True)
        got = score[rows, cols] > 0
        lookup = np.zeros(score.shape)
        lookup[ei, ej] = s[e]
        matched.append(lookup[rows[got], cols[got]])
    return np.concatenate(matched)


def _match(ov: _Overlap, iou: np.ndarray, thresh: float) -> dict:
    n_true, n_pred = len(ov.ids_a), len(ov.ids_b)
    ok = iou >= thresh
    matched = _assign(ov.i[ok], ov.j[ok], iou[ok]) if ok.any() else np.zeros(0)
    tp = len(matched)
    fp, fn = n_pred - tp, n_true - tp
    return {
        "thresh": float(thresh),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
        "accuracy": _div(tp, tp + fp + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "ap": _div(tp, tp + fp + fn),
        "n_true": n_true,
        "n_pred": n_pred,
        "mean_matched_iou": _div(matched.sum(), tp),
    }


def match(gt, pred, thresh: float = 0.5) -> dict:
    """Match predicted objects to ground-truth objects one to one, as ``stardist.matching``.

    Pairs with IoU >= ``thresh`` are candidates; the matching has as many pairs as possible
    (and among those the largest total IoU), found with the Hungarian algorithm.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``; ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
        ``f1``, ``ap = tp / (tp + fp + fn)`` (the DSB 2018 "average precision" at one
        threshold; ``accuracy`` is stardist's name for the same), ``n_true``, ``n_pred``,
        ``mean_matched_iou`` (mean IoU of the matched pairs, 0 if none) and ``thresh``.
    """
    gt, pred = _pair(gt, pred)
    if not 0 <= thresh <= 1:
        raise NSEError(f"thresh must be within [0, 1], got {thresh}")
    ov = _Overlap(gt, pred)
    return _match(ov, ov.iou(), thresh)


def average_precision(gt, pred, thresholds: Sequence[float] = DSB_THRESHOLDS) -> dict:
    """AP (``tp / (tp + fp + fn)``) at each IoU threshold and their mean, the DSB 2018 score
    with the default thresholds 0.5, 0.55, ..., 0.95.

    Returns ``{"thresholds": [...], "ap": [...], "mean": float}``.
    """
    gt, pred = _pair(gt, pred)
    thresholds = [float(t) for t in np.atleast_1d(thresholds)]
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        raise NSEError("thresholds must be one or more numbers within [0, 1]")
    ov = _Overlap(gt, pred)
    iou = ov.iou()
    ap = [_match(ov, iou, t)["ap"] for t in thresholds]
    return {"thresholds": thresholds, "ap": ap, "mean": float(np.mean(ap))}


def splits_and_merges(gt, pred, iou: float = 0.1) -> dict:
    """False splits and false merges as defined by Caicedo et al. 2019 (Cytometry A).

    A ground-truth and a predicted object are associated when their IoU exceeds ``iou``
    (0.1). A *false merge* is a predicted object associated with more than one ground-truth
    object; a *false split* is a ground-truth object associated with more than one predicted
    object. Each offending object counts once.

    Returns
    -------
    dict
        ``false_splits`` and ``split_ids`` (ground-truth ids), ``false_merges`` and
        ``merge_ids`` (predicted ids).
    """
    gt, pred = _pair(gt, pred)
    ov = _Overlap(gt, pred)
    near = ov.iou() > iou
    per_gt = np.bincount(ov.i[near], minlength=len(ov.ids_a))
    per_pred = np.bincount(ov.j[near], minlength=len(ov.ids_b))
    split_ids, merge_ids = ov.ids_a[per_gt > 1], ov.ids_b[per_pred > 1]
    return {
        "false_splits": len(split_ids),
        "false_merges": len(merge_ids),
        "split_ids": split_ids.tolist(),
        "merge_ids": merge_ids.tolist(),
    }


def seam_splits(naive, correct, border_mask, min_fraction: float = 0.1) -> dict:
    """Objects cut by a tile border that ``naive`` splits and ``correct`` keeps whole.

    An object of ``correct`` is a seam split when it touches ``border_mask`` (pixels on either
    side of a tile border) and at least two labels of ``naive`` each cover at least
    ``min_fraction`` of its pixels.

    Returns
    -------
    dict
        ``count``; ``ids``, the ``correct`` ids of those objects; ``map``, a uint32 image
        holding those objects of ``correct`` (others 0), for a highlight layer.
    """
    naive, correct = _pair(naive, correct, ("naive", "correct"))
    border = np.asarray(border_mask)
    if border.shape != correct.shape:
        raise NSEError(f"border_mask has shape {border.shape}, labels {correct.shape}")
    if border.dtype != bool:
        raise NSEError(f"border_mask must be a boolean array, got dtype {border.dtype}")
    if not 0 < min_fraction <= 1:
        raise NSEError(f"min_fraction must be within (0, 1], got {min_fraction}")
    ov = _Overlap(correct, naive)
    big = ov.inter >= min_fraction * ov.area_a[ov.i]
    cut = np.bincount(ov.i[big], minlength=len(ov.ids_a)) >= 2
    touching = np.isin(ov.ids_a, correct[border])
    ids = ov.ids_a[cut & touching]
    highlight = np.where(np.isin(correct, ids), correct, 0).astype(np.uint32)
    return {"count": len(ids), "ids": ids.tolist(), "map": highlight}


def embedding_seam_statistic(embeddings, foreground, borders: Sequence[Sequence[int]]) -> dict:
    """Mean embedding jump between neighbouring pixels across tile borders vs within tiles.

    Parameters
    ----------
    embeddings
        ``(E, *spatial)`` floats.
    foreground
        Boolean mask of shape ``spatial`` (only pairs of foreground pixels count), or None.
    borders
        ``borders[a]`` lists the coordinates ``p`` along spatial axis ``a`` where a tile
        starts: a border lies between ``p - 1`` and ``p``. Values ``<= 0`` or ``>= size``
        are ignored.

    Returns
    -------
    dict
        ``across`` and ``within``: mean L2 distance between the embeddings of axis-neighbour
        pixels across a border and elsewhere; ``ratio = across / within`` (about 1 when there
        is no seam; NaN where undefined); ``n_across``, ``n_within``: the pair counts.
    """
    emb = np.asarray(embeddings)
    if emb.dtype.kind not in "fiu" or emb.ndim < 2:
        raise NSEError(f"embeddings must be a numeric (E, *spatial) array, got {emb.shape}")
    spatial = emb.shape[1:]
    fg = np.ones(spatial, bool) if foreground is None else np.asarray(foreground)
    if fg.shape != spatial or fg.dtype != bool:
        raise NSEError(f"foreground must be a boolean mask of shape {spatial}")
    if len(borders) != len(spatial):
        raise NSEError(f"borders needs one list per spatial axis ({len(spatial)})")
    sums, counts = np.zeros(2), np.zeros(2, np.int64)  # [across, within]
    for axis, (size, starts) in enumerate(zip(spatial, borders)):
        lo = (slice(None),) * axis + (slice(0, size - 1),)
        hi = (slice(None),) * axis + (slice(1, size),)
        jump = np.zeros(tuple(s - (a == axis) for a, s in enumerate(spatial)))
        for e in emb:  # one channel at a time, to keep memory at one image
            jump += (e[hi].astype(np.float64) - e[lo]) ** 2
        jump = np.sqrt(jump)
        both = fg[lo] & fg[hi]
        across = np.zeros(size - 1, bool)
        starts = np.asarray([p for p in starts if 0 < p < size], np.int64)
        across[starts - 1] = True
        across = np.broadcast_to(across.reshape((-1,) + (1,) * (len(spatial) - axis - 1)),
                                 jump.shape)
        for k, where in enumerate([both & across, both & ~across]):
            sums[k] += jump[where].sum()
            counts[k] += where.sum()
    mean = np.divide(sums, counts, out=np.full(2, np.nan), where=counts > 0)
    ratio = mean[0] / mean[1] if counts.all() and mean[1] > 0 else float("nan")
    return {"across": float(mean[0]), "within": float(mean[1]), "ratio": float(ratio),
            "n_across": int(counts[0]), "n_within": int(counts[1])}


# -- one call for everything a quality table needs ----------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Quality of one predicted label image against its ground truth (or pooled over images).

    ``thresholds`` are IoU thresholds; ``tp``/``fp``/``fn`` hold one count per threshold
    (optimal 1:1 matching, as ``stardist.matching``). ``false_splits`` / ``false_merges``
    follow Caicedo et al. 2019: a ground-truth and a predicted object are associated when
    their IoU exceeds ``split_iou`` (0.1); a split is a ground-truth object associated with
    more than one predicted object, a merge a predicted object associated with more than one
    ground-truth object. ``n_images`` > 1 for a pooled result (counts summed over images).
    """

    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_true: int
    n_pred: int
    false_splits: int
    false_merges: int
    mean_matched_iou: float  # at thresholds[0]
    split_iou: float = 0.1
    n_images: int = 1

    def ap_at(self, thresh: float) -> float:
        """``tp / (tp + fp + fn)`` at one of :attr:`thresholds`."""
        k = int(np.argmin(np.abs(np.asarray(self.thresholds) - thresh)))
        if abs(self.thresholds[k] - thresh) > 1e-9:
            raise NSEError(f"threshold {thresh} was not evaluated ({self.thresholds})")
        return _div(self.tp[k], self.tp[k] + self.fp[k] + self.fn[k])

    @property
    def aps(self) -> tuple[float, ...]:
        return tuple(_div(t, t + p + n) for t, p, n in zip(self.tp, self.fp, self.fn))

    @property
    def ap50(self) -> float:
        """AP at IoU 0.5."""
        return self.ap_at(0.5)

    @property
    def dsb(self) -> float:
        """Mean AP over :attr:`thresholds` (the DSB 2018 score with the default ones)."""
        return float(np.mean(self.aps))

    @property
    def precision(self) -> float:
        return _div(self.tp[0], self.tp[0] + self.fp[0])

    @property
    def recall(self) -> float:
        return _div(self.tp[0], self.tp[0] + self.fn[0])

    def to_dict(self) -> dict:
        """Plain JSON-able figures (those at ``thresholds[0]`` as ``tp``, ``fp``, ``fn``)."""
        return {
            "ap50": self.ap50 if 0.5 in self.thresholds else None, "dsb": self.dsb,
            "tp": self.tp[0], "fp": self.fp[0], "fn": self.fn[0],
            "precision": self.precision, "recall": self.recall,
            "n_true": self.n_true, "n_pred": self.n_pred,
            "false_splits": self.false_splits, "false_merges": self.false_merges,
            "mean_matched_iou": self.mean_matched_iou, "split_iou": self.split_iou,
            "n_images": self.n_images, "thresholds": list(self.thresholds),
            "ap": list(self.aps),
        }

    def summary(self) -> str:
        """One line for a terminal."""
        return (f"AP@0.5 {self.ap50:.3f}  DSB AP@0.5:0.95 {self.dsb:.3f}  "
                f"TP {self.tp[0]} FP {self.fp[0]} FN {self.fn[0]}  "
                f"splits {self.false_splits} merges {self.false_merges}  "
                f"({self.n_true} true, {self.n_pred} predicted)")


def evaluate(gt, pred, thresholds: Sequence[float] = DSB_THRESHOLDS,
             split_iou: float = 0.1) -> Evaluation:
    """AP at each IoU threshold, TP/FP/FN, false splits and merges of ``pred`` vs ``gt``.

    One contingency table serves every figure. See :class:`Evaluation`; pool several
    images with :func:`pool`.
    """
    gt, pred = _pair(gt, pred)
    thresholds = tuple(float(t) for t in np.atleast_1d(thresholds))
    if not thresholds or not all(0 <= t <= 1 for t in thresholds):
        raise NSEError("thresholds must be one or more numbers within [0, 1]")
    if not 0 <= split_iou < 1:
        raise NSEError(f"split_iou must be within [0, 1), got {split_iou}")
    ov = _Overlap(gt, pred)
    iou = ov.iou()
    matches = [_match(ov, iou, t) for t in thresholds]
    near = iou > split_iou
    per_gt = np.bincount(ov.i[near], minlength=len(ov.ids_a))
    per_pred = np.bincount(ov.j[near], minlength=len(ov.ids_b))
    return Evaluation(
        thresholds=thresholds, tp=tuple(m["tp"] for m in matches),
        fp=tuple(m["fp"] for m in matches), fn=tuple(m["fn"] for m in matches),
        n_true=len(ov.ids_a), n_pred=len(ov.ids_b),
        false_splits=int((per_gt > 1).sum()), false_merges=int((per_pred > 1).sum()),
        mean_matched_iou=matches[0]["mean_matched_iou"], split_iou=float(split_iou),
    )


def pool(results: Sequence[Evaluation]) -> Evaluation:
    """Several images' results as one: counts summed (stardist's ``matching_dataset`` with
    ``by_image=False``), so large images weigh more than small ones."""
    results = list(results)
    if not results:
        raise NSEError("nothing to pool")
    th = results[0].thresholds
    if any(r.thresholds != th for r in results):
        raise NSEError("results to pool were evaluated at different thresholds")
    tp0 = sum(r.tp[0] for r in results)

    def total(name: str) -> tuple[int, ...]:
        return tuple(int(sum(getattr(r, name)[k] for r in results)) for k in range(len(th)))

    return Evaluation(
        thresholds=th, tp=total("tp"), fp=total("fp"), fn=total("fn"),
        n_true=sum(r.n_true for r in results), n_pred=sum(r.n_pred for r in results),
        false_splits=sum(r.false_splits for r in results),
        false_merges=sum(r.false_merges for r in results),
        mean_matched_iou=_div(sum(r.mean_matched_iou * r.tp[0] for r in results), tp0),
        split_iou=results[0].split_iou, n_images=sum(r.n_images for r in results),
    )
