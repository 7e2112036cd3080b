"""scikit-learn's ``MeanShift(bin_seeding=True)`` as a reference backend.

Same call shape and label convention as :func:`.meanshift.mean_shift`, so that results can be
compared, or the reference chosen (``ClusterOptions(backend="sklearn")``). It is exact
scikit-learn, and slow: its cost grows about quadratically with the points of one group
(tens of seconds at 20,000 16-dim points on one core); :func:`.meanshift.mean_shift` is the
engine for real work.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ..errors import Cancelled, NSEError, is_cancelled
from .meanshift import _check_points, check_bandwidth

ProgressFn = Callable[[int, int], None]


def mean_shift(
    points: np.ndarray,
    bandwidth: float,
    device: object = None,
    *,
    groups: np.ndarray | None = None,
    max_iter: int = 300,
    min_bin_freq: int = 1,
    n_jobs: int | None = None,
    progress: ProgressFn | None = None,
    cancel: object = None,
) -> np.ndarray:
    """Flat-kernel mean-shift with bin seeding by scikit-learn; labels of ``N`` points.

    Parameters
    ----------
    points, bandwidth, groups, max_iter, min_bin_freq
        As for :func:`.meanshift.mean_shift`; each group is one ``MeanShift`` fit, so a
        group's labels never depend on the others.
    device
        Ignored (scikit-learn runs on the CPU); accepted so that the backends swap.
    n_jobs
        scikit-learn's ``n_jobs`` (``None``: one job).
    progress, cancel
        ``progress(done, total)`` over the groups; ``cancel`` is polled between groups.

    Returns
    -------
    np.ndarray
        ``(N,)`` int64 labels ``0..K-1``, label 0 the largest cluster; ties by group, then by
        scikit-learn's cluster order (more points within the bandwidth first).
    """
    from sklearn.cluster import MeanShift

    b = check_bandwidth(bandwidth)
    x = _check_points(points)
    if int(max_iter) < 1:
        raise NSEError(f"max_iter must be >= 1, got {max_iter}")
    if int(min_bin_freq) < 1:
        raise NSEError(f"min_bin_freq must be >= 1, got {min_bin_freq}")
    if groups is None:
        g = np.zeros(len(x), np.int64)
    else:
        g = np.asarray(groups)
        if g.shape != (len(x),) or g.dtype.kind not in "iub" or (g.size and g.min() < 0):
            raise NSEError("groups must be N non-negative integers, one per point")
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    names, inverse = np.unique(g, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"),
                       np.cumsum(np.bincount(inverse))[:-1])
    labels = np.empty(len(x), np.int64)
    offset = 0
    if progress is not None:
        progress(0, len(names))
    for k, idx in enumerate(members):
        if is_cancelled(cancel):
            raise Cancelled("clustering cancelled")
        labels[idx] = offset + _fit(MeanShift, x[idx], b, int(max_iter), int(min_bin_freq),
                                    n_jobs)
        offset = int(labels[idx].max()) + 1
        if progress is not None:
            progress(k + 1, len(names))
    # largest first; the stable sort keeps group order, then scikit-learn's order
    sizes = np.bincount(labels)
    rank = np.empty(len(sizes), np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return rank[labels]


def _fit(MeanShift: type, x: np.ndarray, bandwidth: float, max_iter: int, min_bin_freq: int,
         n_jobs: int | None) -> np.ndarray:
    if len(x) == 1:
        return np.zeros(1, np.int64)
    # the fullest bin always seeds (as in our engine): scikit-learn raises when no bin
    # reaches min_bin_freq
    keys = np.round(x / bandwidth)
    _, counts = np.unique(keys, axis=0, return_counts=True)
    freq = min(min_bin_freq, int(counts.max()))
    with warnings.catch_warnings():
        # "binning data failed ... using data points as seeds": correct, only slower
        warnings.simplefilter("ignore", UserWarning)
        ms = MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=freq,
                       max_iter=max_iter, n_jobs=n_jobs).fit(x)
    return ms.labels_.astype(np.int64)
