"""Instance-label helpers in one place: checks, renumbering, size filters, split objects.

Labels are integer arrays, ``0`` = background, ``1..K`` = instances (IDs need not be
sequential); an optional ``ignore_index`` marks unannotated pixels. numpy/scipy only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import NSEError


def check_labels(labels: Any, name: str = "labels", ignore_index: int | None = None
                 ) -> np.ndarray:
    """``labels`` as an integer numpy array; non-integers, and negative values other than
    ``ignore_index``, are one clear :class:`NSEError`."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise NSEError(
            f"{name} have dtype {labels.dtype}; instance labels must be integers "
            "(0 = background, 1..K = instances)"
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        negative = np.unique(labels[labels < 0])
        if ignore_index is None or set(negative.tolist()) != {ignore_index}:
            raise NSEError(f"{name} contain negative values {negative[:5].tolist()}; "
                           "set ignore_index for unannotated pixels")
    return labels


def foreground(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """The annotated instance pixels: not background, not ``ignore_index``."""
    fg = labels != 0
    if ignore_index is not None:
        fg &= labels != ignore_index
    return fg


def instance_ids(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """The sorted instance IDs present (background and ``ignore_index`` excluded)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ignore_index is not None:
        ids = ids[ids != ignore_index]
    return ids


def relabel_sequential(labels: np.ndarray, start: int = 1) -> tuple[np.ndarray, int]:
    """Renumber the non-zero labels to ``start .. start + K - 1`` in order of value.

    Returns the uint32 labels and ``K``.
    """
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return np.zeros(labels.shape, dtype=np.uint32), 0
    new = np.searchsorted(ids, labels).astype(np.uint32) + np.uint32(start)
    out = np.where(labels != 0, new, np.uint32(0)).astype(np.uint32, copy=False)
    return out, int(ids.size)


def instance_sizes(labels: np.ndarray) -> dict[int, int]:
    """Pixels per instance ID (background excluded)."""
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with fewer than ``min_size`` pixels set to 0, the rest renumbered 1..K in order
    of value (uint32). A new array; ``labels`` is not changed."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return np.zeros(labels.shape, np.uint32)
    if labels.dtype.kind not in "iu" or (labels.dtype.kind == "i" and labels.min() < 0):
        raise NSEError("remove_small needs non-negative integer labels")
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(len(sizes), np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[labels]


def relative_size_threshold(sizes: Any, fraction: float) -> int:
    """The pixel count below which an instance is smaller than ``fraction`` x the median of
    ``sizes`` (0 when ``fraction`` is 0 or there are no sizes)."""
    sizes = np.asarray(sizes, dtype=np.float64).ravel()
    if not fraction or sizes.size == 0:
        return 0
    return int(math.ceil(float(fraction) * float(np.median(sizes)) - 1e-9))


def remove_relative(labels: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """Labels without the instances smaller than ``fraction`` x their median size, renumbered
    1..K in order (uint32), and the pixel threshold used."""
    sizes = np.bincount(np.asarray(labels).ravel())[1:]
    threshold = relative_size_threshold(sizes[sizes > 0], fraction)
    if threshold <= 1:
        return np.asarray(labels), threshold
    return remove_small(labels, threshold), threshold


def split_instances(labels: np.ndarray, ignore_index: int | None = None,
                    connectivity: int | None = None) -> dict[int, int]:
    """IDs that occur in several disconnected pieces: ``{id: number of pieces}``.

    ``connectivity``: neighbours as in :func:`scipy.ndimage.generate_binary_structure`
    (default: full, i.e. diagonal neighbours touch: 8 in 2D, 26 in 3D).
    """
    labels = np.asarray(labels)
    if labels.ndim == 0 or labels.size == 0:
        return {}
    structure = ndimage.generate_binary_structure(labels.ndim, connectivity or labels.ndim)
    fg = foreground(labels, ignore_index)
    masked = np.where(fg, labels, 0)
    out: dict[int, int] = {}
    # find_objects works on positive integers: map IDs to 1..K first
    seq, _ = relabel_sequential(masked)
    ids = instance_ids(masked)
    for k, box in enumerate(ndimage.find_objects(seq), start=1):
        if box is None:
            continue
        n = ndimage.label(seq[box] == k, structure=structure)[1]
        if n > 1:
            out[int(ids[k - 1])] = int(n)
    return out


def split_message(pieces: dict[int, int], name: str = "labels") -> str:
    """A one-line description of :func:`split_instances`' result."""
    worst = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    shown = ", ".join(f"ID {i}: {n} pieces" for i, n in worst)
    more = ", ..." if len(pieces) > 3 else ""
    return (f"{name}: {len(pieces)} instance ID(s) occur in several disconnected pieces "
            f"({shown}{more}); each ID should mark one object (relabel the pieces, e.g. "
            "with scipy.ndimage.label per ID)")


def touching_borders(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Pixels of an instance with a neighbour (3x3 / 3x3x3) of another instance: the border
    between touching objects. Unannotated (``ignore_index``) pixels are nobody's."""
    lab = np.asarray(labels).astype(np.int64)
    if ignore_index is not None:
        lab = np.where(lab == ignore_index, 0, lab)
    size = (3,) * lab.ndim
    none = np.int64(1) << 62
    hi = ndimage.grey_dilation(lab, size=size)
    lo = -ndimage.grey_dilation(-np.where(lab > 0, lab, none), size=size)
    return (lab > 0) & (((hi != lab) & (hi > 0)) | ((lo != lab) & (lo < none)))


def with_boundary_gap(labels: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """A copy of ``labels`` with the borders between touching instances set to background,
    so that a foreground trained on it learns to leave a gap between touching objects."""
    out = np.array(labels, copy=True)
    out[touching_borders(labels, ignore_index)] = 0
    return out
