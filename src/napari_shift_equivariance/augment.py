"""On-the-fly augmentation of training crops.

Everything is numpy in, numpy out, and every random draw comes from the
:class:`numpy.random.Generator` passed in, so a seed fixes the result.

Geometric transforms (flips, 90° rotations, elastic deformation) move the image and the
labels together; labels are only ever indexed or sampled with nearest-neighbour, so label
values (including any "unannotated" / ignore value) survive unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

from .errors import NSEError

#: Default elastic deformation: control points every ``spacing`` pixels, each displaced by
#: ``N(0, sigma)`` pixels per deformed axis, interpolated with cubic splines. The paper's
#: notebooks used spacing 20 and sigma 0.2 px (a sub-pixel jitter); 2 px is a visible but
#: mild deformation for nuclei-sized objects.
ELASTIC_DEFAULTS: dict[str, float] = {"spacing": 20.0, "sigma": 2.0}


# -- smooth random fields --------------------------------------------------------------


def _spline_matrix(size: int, spacing: float) -> np.ndarray:
    """``(size, n)`` weights interpolating ``n`` control points placed every ``spacing`` px."""
    n = int(math.ceil((size - 1) / spacing)) + 1 if size > 1 else 1
    if n == 1:
        return np.ones((size, 1))
    knots = np.arange(n) * spacing
    return CubicSpline(knots, np.eye(n))(np.arange(size, dtype=np.float64))


def smooth_field(
    shape: Sequence[int], spacing: float | Sequence[float], rng: np.random.Generator,
    sigma: float = 1.0, count: int = 1,
) -> np.ndarray:
    """``count`` smooth random fields of ``shape``: N(0, sigma) values on a coarse control grid
    (one point every ``spacing`` pixels), interpolated by separable cubic splines.

    Cheap even for large images: the interpolation is a product of small matrices per axis.
    Returns an array of shape ``(count, *shape)``, float32.
    """
    spacings = [float(spacing)] * len(shape) if np.isscalar(spacing) else list(spacing)
    mats = [_spline_matrix(int(s), sp) for s, sp in zip(shape, spacings)]
    grid = rng.normal(0.0, sigma, size=(count, *(m.shape[1] for m in mats)))
    out = grid
    for axis, m in enumerate(mats):
        # contract control-point axis ``axis + 1`` with the interpolation matrix
        out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis + 1])), 0, axis + 1)
    return out.astype(np.float32)


def elastic_field(
    shape: Sequence[int], rng: np.random.Generator, spacing: float = 20.0, sigma: float = 2.0,
    axes: Sequence[int] | None = None,
) -> np.ndarray:
    """A random displacement field ``(len(shape), *shape)`` in pixels.

    Control points every ``spacing`` pixels are jittered by ``N(0, sigma)`` pixels along each
    axis in ``axes`` (default: all); the other components are zero (e.g. in-plane only
    deformation of an anisotropic stack).
    """
    ndim = len(shape)
    axes = range(ndim) if axes is None else [a % ndim for a in axes]
    field = np.zeros((ndim, *shape), dtype=np.float32)
    comps = smooth_field(shape, spacing, rng, sigma=sigma, count=len(list(axes)))
    for comp, a in zip(comps, axes):
        field[a] = comp
    return field


def zoom_field(shape: Sequence[int], factor: float, axes: Sequence[int]) -> np.ndarray:
    """The displacement field ``(len(shape), *shape)`` that magnifies by ``factor`` about the
    centre along ``axes`` (sample ``x`` at ``c + (x - c) / factor``)."""
    ndim = len(shape)
    field = np.zeros((ndim, *shape), dtype=np.float32)
    for a in axes:
        along = (np.arange(shape[a], dtype=np.float32) - (shape[a] - 1) / 2) * (1 / factor - 1)
        field[a] = along.reshape([-1 if i == a else 1 for i in range(ndim)])
    return field


def warp(array: np.ndarray, field: np.ndarray, order: int) -> np.ndarray:
    """Sample ``array`` (spatial axes, or channels first then ``field.shape[0]`` spatial axes)
    at ``x + field(x)``: order 0 = nearest (labels), 1 = linear.

    Out-of-image positions are mirrored, identically for image and labels.
    """
    ndim = field.shape[0]
    coords = np.indices(field.shape[1:], dtype=np.float32)
    coords += field
    if array.ndim == ndim:
        return ndimage.map_coordinates(array, coords, order=order, mode="mirror", prefilter=False)
    flat = array.reshape(-1, *array.shape[-ndim:])
    out = [ndimage.map_coordinates(a, coords, order=order, mode="mirror", prefilter=False)
           for a in flat]
    return np.stack(out).reshape(array.shape)


# -- augmentation ----------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float] | None, default: float,
             size: int) -> np.ndarray:
    if bounds is None:
        return np.full(size, default)
    lo, hi = bounds
    return rng.uniform(lo, hi, size=size)


def _drawn(rng: np.random.Generator, p: float) -> bool:
    """True with probability ``p``; draws a random number only for ``0 < p < 1``."""
    return p > 0 and (p >= 1 or rng.random() < p)


def _random_rotation(
    rng: np.random.Generator, sizes: dict[int, int]
) -> tuple[dict[int, int], list[int]]:
    """A uniformly random rotation of the hypercube restricted to the axes in ``sizes``
    (axis -> length, or any size class): a signed permutation with determinant +1 that only
    exchanges axes of equal size.

    Returns ``(perm, flipped)``: output axis ``a`` takes input axis ``perm[a]``, then the axes
    in ``flipped`` are reversed.
    """
    perm = {a: a for a in sizes}
    for length in sorted(set(sizes.values())):
        group = [a for a in sizes if sizes[a] == length]
        for a, b in zip(group, rng.permutation(group)):
            perm[a] = int(b)
    axes = sorted(sizes)
    signs = {a: int(s) for a, s in zip(axes, rng.choice([-1, 1], size=len(axes)))}
    # parity of the permutation, by counting cycles
    seen: set[int] = set()
    parity = 0
    for a in axes:
        length = 0
        while a not in seen:
            seen.add(a)
            a = perm[a]
            length += 1
        parity += max(length - 1, 0)
    det = (-1) ** parity * math.prod(signs.values())
    if det < 0:
        # flipping one fixed sign maps the det -1 set onto the det +1 set one-to-one,
        # so the result stays uniform over the rotations
        signs[axes[0]] *= -1
    return perm, [a for a in axes if signs[a] < 0]


def _centre_margin(image_shape: Sequence[int], label_shape: Sequence[int]) -> tuple[int, ...]:
    margin = []
    for si, sl in zip(image_shape, label_shape):
        if sl > si or (si - sl) % 2:
            raise NSEError(
                f"labels {tuple(label_shape)} must match the image's spatial shape "
                f"{tuple(image_shape)} or be a centred crop of it (even margins)"
            )
        margin.append((si - sl) // 2)
    return tuple(margin)


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    channel_axis: int | None = None,
    flips: bool = True,
    rot90: bool = True,
    spatial_axes: Sequence[int] | None = None,
    intensity_scale: tuple[float, float] | None = (0.8, 1.2),
    intensity_offset: tuple[float, float] | None = (-0.1, 0.1),
    noise_std: tuple[float, float] | None = (0.0, 0.05),
    elastic: dict[str, float] | bool | None = None,
    p_elastic: float = 0.0,
    blur_sigma: tuple[float, float] | None = None,
    p_blur: float = 0.0,
    zoom: tuple[float, float] | None = None,
    p_zoom: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transform a training crop and its labels consistently.

    Parameters
    ----------
    image
        ``(*spatial)`` or, with ``channel_axis``, one channel axis plus the spatial axes;
        expected roughly in [0, 1] (after :func:`percentile_normalize`).
    labels
        Integer labels with the image's spatial shape, or a centred crop of it (the output
        window of a valid network; even margins). Values are preserved exactly.
    rng
        Source of all randomness.
    channel_axis
        Axis of ``image`` holding channels (``None``: single channel).
    flips
        Mirror each geometric axis with probability 1/2.
    rot90
        A random 90° rotation (any rotation of the cube in 3D); only axes of equal length in
        both image and labels are exchanged, so a non-square crop gets 180° turns only.
    spatial_axes
        Axes of the spatial array (0-based, without the channel axis; negative allowed) that
        flips, rotations and elastic deformation may act on. ``None``: all. For anisotropic
        stacks use ``(-2, -1)`` (in-plane only).
    intensity_scale, intensity_offset
        Per-channel ``x * U(scale) + U(offset)``; ``None`` disables.
    noise_std
        Additive Gaussian noise with a standard deviation drawn from ``U(noise_std)``.
    elastic
        Elastic deformation settings ``{"spacing": px, "sigma": px}``: control points every
        ``spacing`` pixels, jittered by ``N(0, sigma)`` **pixels** (:data:`ELASTIC_DEFAULTS`
        fills what is missing; ``True`` = defaults). Needs labels of the image's spatial
        shape.
    p_elastic
        Probability of the elastic deformation. ``0`` means: always when ``elastic`` is given,
        never otherwise; a positive value with ``elastic=None`` uses the defaults.
    blur_sigma, p_blur
        With probability ``p_blur``, a Gaussian blur of the image (not the labels) with a
        standard deviation drawn from ``U(blur_sigma)`` pixels along the ``spatial_axes``,
        before the intensity changes and the noise: out-of-focus nuclei whose annotated
        outline lies inside their soft edge. No random number is drawn when it is off.
    zoom, p_zoom
        With probability ``p_zoom``, magnify image and labels together about the crop's centre
        by a factor drawn log-uniformly from ``zoom`` along the ``spatial_axes`` (with the
        elastic deformation, in one resampling): objects of other sizes than the annotated
        ones. Needs labels of the image's spatial shape; off draws no random number.

    Returns
    -------
    image, labels
        Transformed copies: image float32, labels with their input dtype, both C-contiguous.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if channel_axis is not None:
        image = np.moveaxis(image, channel_axis, 0)
    else:
        image = image[None]
    spatial = image.shape[1:]
    ndim = len(spatial)
    if labels.ndim != ndim:
        raise NSEError(f"labels have {labels.ndim} axes, the image has {ndim} spatial axes")
    margin = _centre_margin(spatial, labels.shape)
    if spatial_axes is None:
        geo_axes = list(range(ndim))
    else:
        if any(not -ndim <= int(a) < ndim for a in spatial_axes):
            raise NSEError(f"spatial_axes {tuple(spatial_axes)} out of range for {ndim} axes")
        geo_axes = sorted({int(a) % ndim for a in spatial_axes})
    image = image.astype(np.float32)

    if rot90 and len(geo_axes) > 1:
        # an axis may only be exchanged with one of equal length in image *and* labels
        keys = {a: (spatial[a], labels.shape[a]) for a in geo_axes}
        groups = {k: i for i, k in enumerate(sorted(set(keys.values())))}
        sizes = {a: groups[keys[a]] for a in geo_axes}
        perm, flipped = _random_rotation(rng, sizes)
        order = [perm.get(a, a) for a in range(ndim)]
        image = image.transpose([0] + [a + 1 for a in order])
        labels = labels.transpose(order)
        image = np.flip(image, [a + 1 for a in flipped]) if flipped else image
        labels = np.flip(labels, flipped) if flipped else labels

    if flips:
        flip = [a for a, f in zip(geo_axes, rng.random(len(geo_axes)) < 0.5) if f]
        if flip:
            image = np.flip(image, [a + 1 for a in flip])
            labels = np.flip(labels, flip)

    field = None
    if elastic is False:
        p = 0.0
    else:
        p = p_elastic if p_elastic > 0 else float(elastic is not None)
    if _drawn(rng, p):
        params = dict(ELASTIC_DEFAULTS)
        if isinstance(elastic, dict):  # True / None: defaults
            unknown = set(elastic) - set(params)
            if unknown:
                raise NSEError(f"unknown elastic settings {sorted(unknown)}; use spacing, sigma")
            params.update(elastic)
        field = elastic_field(spatial, rng, params["spacing"], params["sigma"], axes=geo_axes)
    if zoom is not None and _drawn(rng, p_zoom):
        factor = math.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1])))
        field = zoom_field(spatial, factor, geo_axes) + (0 if field is None else field)
    if field is not None:
        if any(margin):
            raise NSEError("elastic deformation and zoom need labels of the image's spatial "
                           "shape")
        image = warp(image, field, order=1)
        labels = warp(np.ascontiguousarray(labels), field, order=0)

    if blur_sigma is not None and _drawn(rng, p_blur):
        sigma = float(rng.uniform(*blur_sigma))
        if sigma > 0:
            per_axis = [0.0] + [sigma if a in geo_axes else 0.0 for a in range(ndim)]
            image = ndimage.gaussian_filter(image, per_axis, mode="reflect")

    n_channels = image.shape[0]
    scale = _uniform(rng, intensity_scale, 1.0, n_channels).astype(np.float32)
    offset = _uniform(rng, intensity_offset, 0.0, n_channels).astype(np.float32)
    bshape = (n_channels,) + (1,) * ndim
    image = image * scale.reshape(bshape) + offset.reshape(bshape)
    if noise_std is not None:
        std = float(rng.uniform(*noise_std))
        if std > 0:
            image += rng.normal(0.0, std, size=image.shape).astype(np.float32)

    image = image[0] if channel_axis is None else np.moveaxis(image, 0, channel_axis)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)
