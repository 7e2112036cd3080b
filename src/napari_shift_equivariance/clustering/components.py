"""Instance labels from an embedding image and a foreground mask, by mean-shift.

Connected foreground components (8- / 26-connectivity) are the unit of the default scope: each
is clustered from the embeddings of all its pixels, and objects that do not touch never share
a label.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..errors import NSEError
from ..labels import remove_small as drop_small
from ..model import resolve_device
from ..options import BACKENDS, SCOPES, check_coord_scale, check_spatial_radius
from .meanshift import CancelFn, ProgressFn, check_bandwidth, mean_shift


def cluster_embeddings(
    embeddings: np.ndarray,
    foreground: np.ndarray,
    bandwidth: float,
    *,
    scope: str = "component",
    block_shape: Sequence[int] | None = None,
    min_size: int = 0,
    backend: str = "torch",
    spatial_radius: float = 0.0,
    coord_scale: float = 0.0,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> np.ndarray:
    """Instance labels from an embedding image and a foreground mask, by mean-shift.

    Parameters
    ----------
    embeddings
        ``(E, *spatial)`` floats, 2D or 3D spatial (any array that slices like numpy, e.g. a
        zarr array, for ``scope="block"``).
    foreground
        Boolean mask of shape ``spatial``; background pixels get label 0.
    bandwidth
        Mean-shift bandwidth in embedding units (see :func:`estimate_bandwidth_from_margins`).
    scope
        ``"component"`` (default): cluster each connected foreground component (26- or
        8-connectivity) on its own, so objects that do not touch never share a label.
        ``"global"``: one mean-shift over all foreground pixels, as in the paper; far-apart
        objects with similar embeddings share a label. ``"block"``: component scope inside
        each block of ``block_shape`` (for images too large to cluster at once), then labels
        touching across a block face are merged when their mean embeddings are within
        ``bandwidth`` (transitively).
    block_shape
        Block size per spatial axis, for ``scope="block"``.
    min_size
        Fragments smaller than this many pixels become background.
    backend
        ``"torch"`` (:func:`mean_shift`) or ``"sklearn"`` (scikit-learn's ``MeanShift``, a
        slow reference for comparisons; see :mod:`.reference`).
    spatial_radius
        ``> 0``: cluster ``[embedding, (bandwidth / spatial_radius) * position]`` (pixel
        positions): spatial-range mean-shift, see :func:`clustering_points`. ``0``: embeddings.
    coord_scale
        The model's coordinate scale (:func:`~napari_shift_equivariance.loss.with_coordinates`):
        ``coord_scale * position`` is added to the first ``ndim`` embedding channels.
    device, progress, cancel
        As for :func:`mean_shift`.

    Returns
    -------
    np.ndarray
        uint32 labels of shape ``spatial``, 0 = background, objects numbered 1..K without gaps.
    """
    fg = np.asarray(foreground)
    if fg.ndim not in (2, 3):
        raise NSEError(f"foreground must be a 2D or 3D mask, got shape {fg.shape}")
    if fg.dtype.kind not in "biu":
        raise NSEError(f"foreground must be a boolean mask, got dtype {fg.dtype}")
    fg = fg.astype(bool, copy=False)
    shape = tuple(getattr(embeddings, "shape", ()))
    if len(shape) != fg.ndim + 1 or shape[1:] != fg.shape:
        raise NSEError(f"embeddings must have shape (E, *{fg.shape}), got {shape}")
    if scope not in SCOPES:
        raise NSEError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if backend not in BACKENDS:
        raise NSEError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    b = check_bandwidth(bandwidth)
    if not isinstance(min_size, int | np.integer) or min_size < 0:
        raise NSEError(f"min_size must be a non-negative integer, got {min_size!r}")
    positions = Positions.of(b, spatial_radius, coord_scale)
    if scope == "block":
        if block_shape is None or len(block_shape) != fg.ndim or any(
                int(k) < 1 for k in block_shape):
            raise NSEError(f"scope 'block' needs block_shape: {fg.ndim} positive integers")
        block_shape = tuple(int(k) for k in block_shape)
    dev = resolve_device(device)
    if not fg.any():
        warnings.warn("empty foreground: no pixel to cluster, all labels are 0", stacklevel=2)
        return np.zeros(fg.shape, np.uint32)
    engine = _engine(backend, dev, cancel)
    if scope == "block":
        from .blocks import cluster_blocks

        labels = cluster_blocks(embeddings, fg, b, block_shape, engine, progress, positions)
    else:
        pts = clustering_points(embeddings, fg, positions)
        groups = components(fg)[fg] - 1 if scope == "component" else None
        lab = engine(pts, b, groups=groups, progress=progress)
        labels = np.zeros(fg.shape, np.uint32)
        labels[fg] = lab + 1
    return drop_small(labels, min_size)


#: ``engine(points, bandwidth, groups=..., progress=...) -> labels``: a configured mean-shift.
Engine = Callable[..., np.ndarray]


def _engine(backend: str, device: torch.device, cancel: CancelFn | None) -> Engine:
    """The mean-shift of ``backend`` with the device and cancel check bound (both backends
    take the same call)."""
    if backend == "sklearn":
        from .reference import mean_shift as run
    else:
        run = mean_shift
    return functools.partial(run, device=device, cancel=cancel)


def foreground_points(embeddings, fg: np.ndarray) -> np.ndarray:
    """``(N, E)`` embeddings of the foreground pixels; NaN/inf there is an error."""
    e = np.asarray(embeddings)
    if e.dtype.kind not in "fiu":
        raise NSEError(f"embeddings must be numbers, got dtype {e.dtype}")
    pts = e[:, fg].T
    if not np.isfinite(pts).all():
        raise NSEError("embeddings contain NaN or infinite values in the foreground")
    return pts


def spatial_scale(bandwidth: float, spatial_radius: float) -> float:
    """The factor on pixel positions that makes ``spatial_radius`` pixels one bandwidth
    (0 when the radius is 0: embeddings only)."""
    r = check_spatial_radius(spatial_radius)
    return bandwidth / r if r > 0 else 0.0


@dataclass(frozen=True)
class Positions:
    """How pixel positions (global, in pixels) enter the points mean-shift clusters.

    ``add``: times the position, added to the first ``ndim`` embedding columns (the model's
    coordinate scale); ``append``: times the position, appended as ``ndim`` more columns
    (spatial-range mean-shift, :func:`spatial_scale`). Both 0: embeddings only.
    """

    add: float = 0.0
    append: float = 0.0

    @classmethod
    def of(cls, bandwidth: float, spatial_radius: float = 0.0,
           coord_scale: float = 0.0) -> Positions:
        return cls(check_coord_scale(coord_scale), spatial_scale(bandwidth, spatial_radius))

    def __bool__(self) -> bool:
        return bool(self.add or self.append)


#: Embeddings only.
NO_POSITIONS = Positions()


def clustering_points(embeddings, fg: np.ndarray, positions: Positions = NO_POSITIONS,
                      origin: tuple[int, ...] | None = None) -> np.ndarray:
    """The points mean-shift clusters: the foreground pixels' embeddings, with their
    positions (``origin`` + index, in pixels) entering as ``positions`` says.

    Every caller (in memory, per block, blockwise) builds them here, from the same global
    positions, so that the same pixels give bitwise the same points.
    """
    pts = foreground_points(embeddings, fg)
    if not positions:
        return pts
    return with_positions(pts, np.nonzero(fg), positions, origin)


def with_positions(points: np.ndarray, index: tuple[np.ndarray, ...], positions: Positions,
                   origin: Sequence[int] | None = None) -> np.ndarray:
    """``points`` with the positions ``origin + index`` entered as ``positions`` says: added
    to the first columns times ``positions.add``, appended times ``positions.append``."""
    if not positions:
        return points
    origin = (0,) * len(index) if origin is None else tuple(origin)
    pos = np.stack([np.asarray(ix, np.int64) + int(o) for ix, o in zip(index, origin)], 1)
    out = points
    if positions.add:
        nd = pos.shape[1]
        if points.shape[1] < nd:
            raise NSEError(f"coordinates need at least {nd} embedding channels, got "
                           f"{points.shape[1]}")
        out = points.copy()
        out[:, :nd] += (pos * positions.add).astype(points.dtype)
    if positions.append:
        out = np.concatenate([out, (pos * positions.append).astype(points.dtype)], 1)
    return out


def with_coordinate_image(embeddings: np.ndarray, scale: float, ndim: int) -> np.ndarray:
    """An embedding image ``(E, *leading, *spatial)`` as mean-shift sees it for a model with
    coordinates: ``scale`` times each pixel's position on the ``ndim`` spatial (last) axes
    added to the first ``ndim`` channels. A new float32 array; ``embeddings`` itself when
    ``scale`` is 0."""
    if not scale:
        return embeddings
    e = np.array(embeddings, np.float32)
    spatial = e.shape[e.ndim - ndim:]
    for axis, n in enumerate(spatial):
        view = [1] * (e.ndim - 1)
        view[e.ndim - 1 - ndim + axis] = n
        e[axis] += (float(scale) * np.arange(n, dtype=np.float32)).reshape(view)
    return e


def components(fg: np.ndarray) -> np.ndarray:
    """Connected components of a mask, touching diagonally counts (8- / 26-connectivity)."""
    return ndimage.label(fg, structure=np.ones((3,) * fg.ndim, bool))[0]
