"""From embeddings to instances: predict, threshold the foreground, mean-shift, clean up.

:func:`segment` runs the network with any stitch mode (``whole``, ``correct``, ``naive``), keeps
the pixels whose foreground probability exceeds ``fg_threshold``, clusters their embeddings
with mean-shift (:func:`clustering.cluster_embeddings`) and returns uint32 labels numbered
1..K. Images with more axes than the model (a 2D model on a z-stack or a time series) are
clustered plane by plane; instances of different planes never share a label.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import relabel_sequential
from .errors import Cancelled, NSEError
from .model import ModelConfig, UNet, load_model
from .predict import Predictor
from .tiling import DEFAULT_TILE, TilePlan

SCOPES = ("component", "global", "block")
#: Instances with fewer pixels are removed unless ``min_size`` says otherwise: smaller than
#: any nucleus the default models see, larger than the slivers a seam or a noisy border leaves.
DEFAULT_MIN_SIZE = {2: 10, 3: 30}

#: ``progress(stage, done, total)``, stages ``"predict"`` then ``"cluster"``.
StageProgress = Callable[[str, int, int], None]


class EmptyForegroundWarning(UserWarning):
    """No pixel passed the foreground threshold: the labels are all zero."""


@dataclass
class SegmentResult:
    """Labels (uint32, ``(*leading, *spatial)``), the network output they came from
    (``(embedding_dim + 1, *leading, *spatial)``: embeddings, then foreground probability),
    the tile plan, and what was done (``info``)."""

    labels: np.ndarray
    prediction: np.ndarray
    plan: TilePlan
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return int(self.info.get("n_instances", 0))


def default_bandwidth(config: ModelConfig) -> float:
    """The model's calibrated bandwidth (``config.extra["bandwidth"]``, set by training
    recipes that tune it on training images) or else one from the loss margins."""
    from .clustering import estimate_bandwidth_from_margins

    calibrated = (config.extra or {}).get("bandwidth")
    if calibrated is not None and float(calibrated) > 0:
        return float(calibrated)
    loss = config.loss or {}
    return float(estimate_bandwidth_from_margins(float(loss.get("delta_v", 0.5)),
                                                 float(loss.get("delta_d", 3.0))))


def check_options(bandwidth: float | None, scope: str, min_size: int | None,
                  fg_threshold: float) -> None:
    """One clear error for each bad clustering option."""
    if bandwidth is not None and not (np.isfinite(bandwidth) and bandwidth > 0):
        raise NSEError(f"bandwidth must be a positive number, got {bandwidth}")
    if scope not in SCOPES:
        raise NSEError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if min_size is not None and (int(min_size) != min_size or min_size < 0):
        raise NSEError(f"min size must be a non-negative integer, got {min_size}")
    if not 0 < fg_threshold < 1:
        raise NSEError(f"foreground threshold must lie strictly between 0 and 1, got "
                       f"{fg_threshold}")


def instances_from_prediction(
    prediction: np.ndarray,
    ndim: int,
    *,
    bandwidth: float,
    scope: str = "component",
    min_size: int | None = None,
    fg_threshold: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    block_shape: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster a network output ``(E + 1, *leading, *spatial)`` into uint32 labels.

    Every plane over the leading axes is clustered on its own; labels are sequential over
    the whole array. ``min_size=None``: :data:`DEFAULT_MIN_SIZE`; ``block_shape`` (scope
    ``"block"`` only): :data:`tiling.DEFAULT_TILE` per axis. Returns the labels and
    ``{"n_instances", "n_foreground", "min_size", "warnings"}``.
    """
    from .clustering import cluster_embeddings

    check_options(bandwidth, scope, min_size, fg_threshold)
    min_size = DEFAULT_MIN_SIZE[ndim] if min_size is None else int(min_size)
    if scope == "block" and block_shape is None:
        block_shape = (DEFAULT_TILE[ndim],) * ndim
    prediction = np.asarray(prediction)
    if prediction.ndim < ndim + 1 or prediction.shape[0] < 2:
        raise NSEError(f"a prediction needs shape (E + 1, ..., *{ndim} spatial axes), got "
                       f"{prediction.shape}")
    foreground = prediction[-1] > fg_threshold
    leading = prediction.shape[1 : prediction.ndim - ndim]
    planes = list(np.ndindex(*leading)) if leading else [()]
    labels = np.zeros(prediction.shape[1:], dtype=np.uint32)
    count = 0
    steps = 100 * len(planes)  # the clustering reports per cent per plane
    if progress is not None:
        progress(0, steps)
    stop = _as_callable(cancel)
    for i, idx in enumerate(planes):
        fg = foreground[idx]
        if fg.any():
            inner = None if progress is None else (
                lambda d, t, i=i: progress(100 * i + round(100 * d / max(t, 1)), steps))
            emb = np.ascontiguousarray(prediction[(slice(0, -1), *idx)])
            plane = cluster_embeddings(emb, fg, bandwidth, scope=scope, min_size=min_size,
                                       block_shape=block_shape, seed=seed, device=device,
                                       progress=inner, cancel=stop)
            plane, k = relabel_sequential(np.asarray(plane), start=count + 1)
            labels[idx] = plane
            count += k
        elif stop is not None and stop():
            raise Cancelled("segmentation cancelled")
        if progress is not None:
            progress(100 * (i + 1), steps)
    n_fg = int(foreground.sum())
    notes = []
    if n_fg == 0:
        notes.append(
            f"no pixel has foreground probability > {fg_threshold}: the labels are all zero "
            f"(maximum probability {float(prediction[-1].max()):.3g}; try a lower threshold "
            f"or check the image and model)"
        )
    elif count == 0:
        notes.append(f"{n_fg} foreground pixels but every cluster was smaller than the "
                     f"minimum size {min_size}: the labels are all zero")
    for note in notes:
        warnings.warn(note, EmptyForegroundWarning, stacklevel=2)
    return labels, {"n_instances": count, "n_foreground": n_fg, "min_size": min_size,
                    "warnings": notes}


def _as_callable(cancel: Any) -> Callable[[], bool] | None:
    """A ``threading.Event`` or a callable as a callable."""
    if cancel is None or callable(cancel):
        return cancel
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    raise NSEError("cancel must be a callable or a threading.Event")


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def segment(
    model: UNet | str,
    image: Any,
    mode: str = "correct",
    tile: int | Sequence[int] | None = None,
    *,
    bandwidth: float | None = None,
    scope: str = "component",
    min_size: int | None = None,
    fg_threshold: float = 0.5,
    device: str = "auto",
    batch_size: int | None = None,
    amp: str | None = None,
    pad: str = "reflect",
    seed: int = 0,
    channel_axis: int | None = None,
    block_shape: Sequence[int] | None = None,
    progress: StageProgress | None = None,
    cancel: Any = None,
) -> SegmentResult:
    """Instance labels for ``image``: predict, threshold the foreground, mean-shift.

    Parameters
    ----------
    model
        A :class:`UNet` or a model spec for :func:`load_model` (a path or ``"default"``).
    image
        numpy/zarr/dask array: spatial axes last, optionally leading axes (plane by plane)
        and a channel axis.
    mode, tile
        Stitching: ``"whole"`` (one pass), ``"correct"`` (``n*f^l`` tiles on the global
        grid: equal to ``"whole"``) or ``"naive"`` (tiles of exactly ``tile``).
    bandwidth
        Mean-shift bandwidth in embedding units; default from the model's loss margins.
    scope
        What mean-shift sees at once: each foreground ``"component"``, the whole plane
        (``"global"``) or spatial ``"block"``\\ s (see :mod:`clustering`).
    min_size
        Instances with fewer pixels are removed (``None``: :data:`DEFAULT_MIN_SIZE`).
    fg_threshold
        Pixels with foreground probability above this are clustered.
    seed
        Seed of the clustering: same seed, same labels.
    block_shape
        Block size of ``scope="block"`` (default :data:`tiling.DEFAULT_TILE` per axis); it
        does not depend on the tiles, so every stitch mode clusters the same way.
    progress
        ``progress(stage, done, total)`` with stages ``"predict"`` then ``"cluster"``.
    cancel
        A callable or ``threading.Event``; when set the work stops with :class:`Cancelled`.
    """
    if not isinstance(model, UNet):
        model = load_model(model)
    config = model.config
    check_options(bandwidth, scope, min_size, fg_threshold)
    bw = default_bandwidth(config) if bandwidth is None else float(bandwidth)

    predictor = Predictor(model, device, amp, batch_size, pad)
    plan = predictor.plan(image.shape, mode, tile, channel_axis)
    t0 = time.perf_counter()
    prediction = predictor.run(image, mode, tile, channel_axis=channel_axis,
                               progress=_stage(progress, "predict"), cancel=cancel)
    t1 = time.perf_counter()
    result = segment_prediction(
        prediction, plan, config, bandwidth=bw, scope=scope, min_size=min_size,
        fg_threshold=fg_threshold, seed=seed, device=str(predictor.device),
        block_shape=block_shape, progress=_stage(progress, "cluster"), cancel=cancel,
    )
    result.info["times"]["predict"] = t1 - t0
    result.info["times"]["total"] += t1 - t0
    return result


def segment_prediction(
    prediction: np.ndarray,
    plan: TilePlan,
    config: ModelConfig,
    *,
    bandwidth: float | None = None,
    scope: str = "component",
    min_size: int | None = None,
    fg_threshold: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    block_shape: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
) -> SegmentResult:
    """The clustering half of :func:`segment`, for a prediction already made with ``plan``."""
    bw = default_bandwidth(config) if bandwidth is None else float(bandwidth)
    t0 = time.perf_counter()
    labels, cinfo = instances_from_prediction(
        prediction, config.ndim, bandwidth=bw, scope=scope, min_size=min_size,
        fg_threshold=fg_threshold, seed=seed, device=device, block_shape=block_shape,
        progress=progress, cancel=cancel,
    )
    t1 = time.perf_counter()
    info = {
        **cinfo,
        "mode": plan.mode,
        "tile": list(plan.tile_shape),
        "requested_tile": list(plan.requested) if plan.requested is not None else None,
        "n_tiles": len(plan),
        "grid": list(config.geometry.grid),
        "bandwidth": bw,
        "scope": scope,
        "fg_threshold": fg_threshold,
        "seed": seed,
        "device": str(device),
        "times": {"predict": 0.0, "cluster": t1 - t0, "total": t1 - t0},
    }
    return SegmentResult(labels, prediction, plan, info)
