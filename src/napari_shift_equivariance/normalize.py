"""Percentile normalisation, computed once per image so every tile sees the same mapping."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import NSEError

DEFAULT = {"kind": "percentile", "low": 1.0, "high": 99.8}


def subsample(array: Any, max_samples: int = 2_000_000) -> np.ndarray:
    """A strided view of at most about ``max_samples`` pixels (reads little of a lazy array)."""
    shape = array.shape
    n = math.prod(shape)
    if n <= max_samples:
        return np.asarray(array[...])
    step = max(1, int(math.ceil((n / max_samples) ** (1 / len(shape)))))
    return np.asarray(array[tuple(slice(None, None, step) for _ in shape)])


def percentiles(array: Any, low: float = 1.0, high: float = 99.8,
                max_samples: int = 2_000_000) -> tuple[float, float]:
    """``(lo, hi)`` intensity percentiles of an image (subsampled when large)."""
    if not 0 <= low < high <= 100:
        raise NSEError(f"percentiles need 0 <= low < high <= 100, got {low}, {high}")
    sample = subsample(array, max_samples).astype(np.float64, copy=False)
    if sample.dtype.kind == "f" and not np.isfinite(sample).all():
        raise NSEError("image contains NaN or infinite values; fix or mask them first")
    lo, hi = np.percentile(sample, [low, high])
    return float(lo), float(hi)


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
