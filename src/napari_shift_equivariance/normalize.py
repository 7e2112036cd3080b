"""Percentile normalisation, computed once per image so every tile sees the same mapping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import NSEError

DEFAULT = {"kind": "percentile", "low": 1.0, "high": 99.8}


def _strides_for(shape: Sequence[int], max_samples: int) -> list[int]:
    """Per-axis steps so that the strided grid holds at most ``max_samples`` points;
    the longest remaining axis is thinned first, so the sample stays spread out."""
    steps = [1] * len(shape)
    while math.prod(math.ceil(s / st) for s, st in zip(shape, steps)) > max_samples:
        lengths = [math.ceil(s / st) for s, st in zip(shape, steps)]
        i = int(np.argmax(lengths))
        steps[i] += 1
    return steps


#: a lazy image's strided sample is read in slabs of about this many source bytes, so that a
#: zarr/dask image is never decoded all at once (peak memory stays flat as the image grows)
SLAB_BYTES = 2**25


def _read_strided(image: Any, index: tuple[slice, ...]) -> np.ndarray:
    """``image[index]`` (slices with steps), read slab by slab along the first axis: the same
    values as one read."""
    if isinstance(image, np.ndarray):
        return np.asarray(image[index])
    first = index[0]
    start, _, step = first.indices(image.shape[0])
    count = len(range(start, image.shape[0], step))
    per = math.prod(image.shape[1:]) * np.dtype(image.dtype).itemsize * step
    group = max(1, SLAB_BYTES // max(per, 1))
    parts = [np.asarray(image[(slice(start + i * step, start + (i + group) * step, step),
                               *index[1:])]) for i in range(0, count, group)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def percentiles(
    image: Any, low: float = 1.0, high: float = 99.8, max_samples: int = 2_000_000,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """``(lo, hi)`` intensity percentiles of an image.

    Large images (numpy, zarr, dask: anything sliceable with steps) are read on a strided
    grid of at most ``max_samples`` pixels. The grid starts at a random phase on each axis
    (from ``rng``, default seed 0) so that it does not lock onto periodic structure.
    NaNs are ignored.
    """
    if not 0.0 <= low < high <= 100.0:
        raise NSEError(f"percentiles need 0 <= low < high <= 100, got {low} and {high}")
    shape = tuple(image.shape)
    if math.prod(shape) == 0:
        raise NSEError("cannot compute percentiles of an empty image")
    if math.prod(shape) <= max_samples:
        sample = np.asarray(image)
    else:
        rng = np.random.default_rng(0) if rng is None else rng
        steps = _strides_for(shape, max_samples)
        index = tuple(slice(int(rng.integers(st)), None, st) for st in steps)
        sample = _read_strided(image, index)
    sample = sample.astype(np.float64, copy=False)
    lo, hi = np.nanpercentile(sample, [low, high])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise NSEError("image has no finite values (all NaN or infinite); fix or mask them first")
    return float(lo), float(hi)


def percentile_normalize(
    image: Any, low: float = 1.0, high: float = 99.8, eps: float = 1e-6, *,
    max_samples: int = 2_000_000, rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Map the ``low`` / ``high`` percentiles to 0 / 1 (values outside are not clipped).

    Returns float32. For lazy arrays that do not fit in memory, call :func:`percentiles`
    once and apply ``(x - lo) / (hi - lo + eps)`` per block instead.
    """
    lo, hi = percentiles(image, low, high, max_samples=max_samples, rng=rng)
    out = np.asarray(image, dtype=np.float32) - np.float32(lo)
    out /= np.float32(hi - lo + eps)
    return out


def normalization_params(array: Any, spec: dict | None) -> tuple[float, float]:
    """A model's normalisation spec as ``(offset, scale)``: ``x' = (x - offset) / scale``."""
    spec = spec or DEFAULT
    kind = spec.get("kind", "percentile")
    if kind == "none":
        return 0.0, 1.0
    if kind == "fixed":
        return float(spec["offset"]), float(spec["scale"])
    if kind != "percentile":
        raise NSEError(f"unknown normalisation kind {kind!r}")
    lo, hi = percentiles(array, spec.get("low", 1.0), spec.get("high", 99.8))
    return lo, max(hi - lo, 1e-6)


def apply(block: np.ndarray, offset: float, scale: float) -> np.ndarray:
    return ((block.astype(np.float32, copy=False) - np.float32(offset)) / np.float32(scale))
