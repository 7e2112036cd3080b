"""A classical baseline with no training: Otsu threshold + distance-transform watershed.

This is what users can always run on fluorescence nuclei (scikit-image, a few lines), so every
quality figure of a learned model is reported next to it on the same data
(``benchmarks/bench_quality.py``, ``nse evaluate --baseline``).

Steps: percentile-normalise, Gaussian-smooth (``sigma``), Otsu threshold, fill holes, drop
objects under ``min_size`` pixels; then the Euclidean distance transform of the mask,
smoothed a little, its local maxima at least ``min_distance`` apart (one per connected
"plateau", within each component) seed a watershed of the negated distance, restricted to
the mask. 2D or 3D (``spacing`` for anisotropic stacks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .data import relabel_sequential
from .errors import NSEError
from .normalize import percentile_normalize


def watershed_baseline(
    image: Any,
    *,
    sigma: float = 1.0,
    min_distance: int = 5,
    min_size: int | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Instance labels (uint32, 1..K) of bright objects in a 2D or 3D ``image``.

    Parameters
    ----------
    image
        2D or 3D array (no channel axis), bright objects on a dark background.
    sigma
        Gaussian smoothing before the threshold, in pixels (0: none).
    min_distance
        Smallest distance in pixels between two seeds (about a nucleus radius: smaller
        splits more, larger merges more).
    min_size
        Objects with fewer pixels are removed (``None``: 10 in 2D, 30 in 3D, as ``segment``).
    spacing
        Pixel size per axis for the distance transform (anisotropic stacks), default 1.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.dtype.kind not in "fiub":
        raise NSEError(f"the baseline needs a 2D or 3D numeric image, got shape {img.shape} "
                       f"and dtype {img.dtype}")
    if sigma < 0 or min_distance < 1:
        raise NSEError("sigma must be >= 0 and min_distance >= 1")
    min_size = (10 if img.ndim == 2 else 30) if min_size is None else int(min_size)
    x = percentile_normalize(img.astype(np.float32))
    if sigma > 0:
        x = ndimage.gaussian_filter(x, sigma)
    if not np.isfinite(x).all() or float(x.max()) <= float(x.min()):
        return np.zeros(img.shape, np.uint32)
    mask = ndimage.binary_fill_holes(x > threshold_otsu(x))
    comp, _ = ndimage.label(mask)
    if min_size > 0:
        sizes = np.bincount(comp.ravel())
        mask &= (sizes >= min_size)[comp]
        comp, _ = ndimage.label(mask)
    if not mask.any():
        return np.zeros(img.shape, np.uint32)
    dist = ndimage.distance_transform_edt(mask, sampling=spacing)
    dist = ndimage.gaussian_filter(dist, 1.0)
    peaks = peak_local_max(dist, min_distance=int(min_distance), labels=comp,
                           exclude_border=False)
    markers = np.zeros(img.shape, np.int64)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a peak (too small / flat) still gets one seed
    seeded = np.unique(comp[markers > 0])
    for c in np.setdiff1d(np.arange(1, comp.max() + 1), seeded):
        where = np.argwhere(comp == c)
        if len(where):
            markers[tuple(where[len(where) // 2])] = markers.max() + 1
    labels = watershed(-dist, markers, mask=mask)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        labels[(sizes < min_size)[labels]] = 0
    return relabel_sequential(labels)[0]
