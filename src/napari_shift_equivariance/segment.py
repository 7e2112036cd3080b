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

from .clustering.scale import median_diameter, sample_plane, sample_roi, scaled_bandwidth
from .data import relabel_sequential
from .errors import Cancelled, NSEError
from .geometry import Roi
from .labels import remove_relative
from .model import ModelConfig, UNet, load_model
from .options import DEFAULT_MIN_SIZE, SCOPES, ClusterOptions, cluster_options
from .predict import Predictor
from .tiling import TilePlan

#: ``progress(stage, done, total)``, stages ``"predict"`` then ``"cluster"``.
StageProgress = Callable[[str, int, int], None]

__all__ = [
    "DEFAULT_MIN_SIZE", "SCOPES", "ClusterOptions", "EmptyForegroundWarning", "SegmentResult",
    "cluster_options", "default_bandwidth", "instances_from_prediction", "segment",
    "segment_prediction",
]


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
    calibration) or else one from the loss margins."""
    return float(ClusterOptions().resolve(config).bandwidth)


def instances_from_prediction(
    prediction: np.ndarray,
    ndim: int,
    cluster: ClusterOptions | None = None,
    *,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    **options: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster a network output ``(E + 1, *leading, *spatial)`` into uint32 labels.

    ``cluster`` (with ``options``, the fields of :class:`ClusterOptions`, overriding it) must
    give a bandwidth; an unset foreground threshold is 0.5, an unset ``min_size``
    :data:`DEFAULT_MIN_SIZE` and an unset ``block_shape`` (scope ``"block"``) the default
    tile. Every plane over the leading axes is clustered on its own; labels are sequential
    over the whole array. A ``relative_min_size`` then removes the instances smaller than that
    fraction of the median instance size over the whole array. Returns the labels and
    ``{"n_instances", "n_foreground", "min_size", "relative_threshold", "warnings"}``
    (``relative_threshold``: the pixel count the relative filter used, 0 when off).
    """
    from .clustering import cluster_embeddings

    opts = cluster_options(cluster, **options)
    if opts.bandwidth is None:
        raise NSEError("clustering a prediction needs a bandwidth")
    opts = opts.resolve(_Plain(ndim))
    prediction = np.asarray(prediction)
    if prediction.ndim < ndim + 1 or prediction.shape[0] < 2:
        raise NSEError(f"a prediction needs shape (E + 1, ..., *{ndim} spatial axes), got "
                       f"{prediction.shape}")
    notes: list[str] = []
    relative = opts.relative_bandwidth or 0.0
    opts, diameter = fix_bandwidth(prediction, ndim, opts, device=device)
    if relative and diameter is None:
        notes.append(f"no object in the central sample to set the relative bandwidth: "
                     f"the fixed bandwidth {opts.bandwidth:.3g} is used")
    foreground = prediction[-1] > opts.fg_threshold
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
            plane = cluster_embeddings(emb, fg, opts.bandwidth, scope=opts.scope,
                                       min_size=opts.min_size, block_shape=opts.block_shape,
                                       backend=opts.backend,
                                       spatial_radius=opts.spatial_radius,
                                       coord_scale=opts.coord_scale, device=device,
                                       progress=inner,
                                       cancel=stop)
            plane, k = relabel_sequential(np.asarray(plane), start=count + 1)
            labels[idx] = plane
            count += k
        elif stop is not None and stop():
            raise Cancelled("segmentation cancelled")
        if progress is not None:
            progress(100 * (i + 1), steps)
    threshold = 0
    if opts.relative_min_size and count:
        labels, threshold = remove_relative(labels, opts.relative_min_size)
        count = int(labels.max())
    n_fg = int(foreground.sum())
    if n_fg == 0:
        notes.append(
            f"no pixel has foreground probability > {opts.fg_threshold}: the labels are all "
            f"zero (maximum probability {float(prediction[-1].max()):.3g}; try a lower "
            f"threshold or check the image and model)"
        )
    elif count == 0:
        notes.append(f"{n_fg} foreground pixels but every cluster was smaller than the "
                     f"minimum size {opts.min_size}: the labels are all zero")
    for note in notes:
        warnings.warn(note, EmptyForegroundWarning, stacklevel=2)
    return labels, {"n_instances": count, "n_foreground": n_fg, "min_size": opts.min_size,
                    "relative_threshold": threshold, "warnings": notes,
                    "bandwidth": opts.bandwidth, "relative_bandwidth": relative,
                    "diameter": diameter}


def fix_bandwidth(prediction: np.ndarray, ndim: int, cluster: ClusterOptions, *,
                  device: str = "auto") -> tuple[ClusterOptions, float | None]:
    """``cluster`` (resolved) with a relative bandwidth made absolute for the network output
    ``prediction`` ``(E + 1, *leading, *spatial)``, from its central sample, and the median
    object diameter found there (``None`` without a relative bandwidth or objects). Clustering
    other predictions with the result uses the same bandwidth for all (``compare``)."""
    spatial = prediction.shape[prediction.ndim - ndim:]
    roi = sample_roi(spatial)
    plane = sample_plane(prediction.shape[1 : prediction.ndim - ndim])
    return fix_bandwidth_from_sample(prediction[(slice(None), *plane, *roi.to_slices())], roi,
                                     spatial, cluster, device=device)


def fix_bandwidth_from_sample(sample: np.ndarray, roi: Roi, spatial_shape: Sequence[int],
                              cluster: ClusterOptions, *, device: str = "auto"
                              ) -> tuple[ClusterOptions, float | None]:
    """:func:`fix_bandwidth` for an image whose central sample ``roi``
    (:func:`~.clustering.scale.sample_roi`) has the network output ``sample``: with a
    relative bandwidth, the bandwidth becomes ``relative x coord_scale x D``, ``D`` the median
    object diameter of the sample clustered at the fixed bandwidth (returned too); without
    one, or without objects there, the fixed bandwidth stays (``D`` is ``None``). The
    relative bandwidth is 0 in the options returned."""
    if not cluster.relative_bandwidth:
        return cluster, None
    if not cluster.coord_scale:
        raise NSEError("a relative bandwidth needs a model trained with coordinates "
                       "(coord_scale > 0); give a bandwidth instead")
    ndim = len(roi.begin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptyForegroundWarning)
        labels, _ = instances_from_prediction(sample, ndim, cluster.replace(
            relative_bandwidth=0.0), device=device)
    diameter = median_diameter(labels, roi, spatial_shape)
    bw = cluster.bandwidth if diameter is None else scaled_bandwidth(
        cluster.relative_bandwidth, cluster.coord_scale, diameter)
    return cluster.replace(bandwidth=bw, relative_bandwidth=0.0), diameter


@dataclass(frozen=True)
class _Plain:
    """A stand-in model config with no calibration, for :meth:`ClusterOptions.resolve`."""

    ndim: int
    extra: None = None
    loss: None = None


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
    scope: str | None = None,
    min_size: int | None = None,
    fg_threshold: float | None = None,
    backend: str | None = None,
    spatial_radius: float | None = None,
    relative_min_size: float | None = None,
    relative_bandwidth: float | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    amp: str | None = None,
    pad: str = "reflect",
    channel_axis: int | None = None,
    block_shape: Sequence[int] | None = None,
    cluster: ClusterOptions | None = None,
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
    bandwidth, fg_threshold, min_size, relative_min_size
        Mean-shift bandwidth in embedding units, foreground probability threshold, smallest
        instance in pixels and as a fraction of the image's median instance size; ``None``:
        the model's calibrated values (see :class:`~.options.ClusterOptions`).
    scope, block_shape, backend
        What mean-shift sees at once (``"component"``, ``"global"`` or ``"block"``), the block
        size for ``"block"``, and the mean-shift implementation (``"torch"``, ``"sklearn"``).
    spatial_radius
        Cluster embeddings and pixel positions together, ``spatial_radius`` pixels weighing
        one bandwidth (spatial-range mean-shift); 0: embeddings only; ``None``: the model's.
    relative_bandwidth
        A bandwidth that follows the objects' size: this fraction of the embedding span of
        an object of the image's median diameter (:mod:`.clustering.scale`); 0: off;
        ``None``: the model's, and off when ``bandwidth`` is given.
    cluster
        The clustering options as one :class:`~.options.ClusterOptions`; the keywords above,
        where given, override it.
    progress
        ``progress(stage, done, total)`` with stages ``"predict"`` then ``"cluster"``.
    cancel
        A callable or ``threading.Event``; when set the work stops with :class:`Cancelled`.

    The clustering is deterministic: the same image and options give the same labels.
    """
    if not isinstance(model, UNet):
        model = load_model(model)
    config = model.config
    opts = cluster_options(cluster, bandwidth=bandwidth, scope=scope, min_size=min_size,
                           fg_threshold=fg_threshold, backend=backend,
                           block_shape=block_shape, spatial_radius=spatial_radius,
                           relative_min_size=relative_min_size,
                           relative_bandwidth=relative_bandwidth).resolve(config)

    predictor = Predictor(model, device, amp, batch_size, pad)
    plan = predictor.plan(image.shape, mode, tile, channel_axis)
    t0 = time.perf_counter()
    prediction = predictor.run(image, mode, tile, channel_axis=channel_axis,
                               progress=_stage(progress, "predict"), cancel=cancel)
    t1 = time.perf_counter()
    plan = predictor.last_plan or plan  # an out-of-memory retry may have used smaller tiles
    result = segment_prediction(prediction, plan, config, cluster=opts,
                                device=str(predictor.device),
                                progress=_stage(progress, "cluster"), cancel=cancel)
    result.info["times"]["predict"] = t1 - t0
    result.info["times"]["total"] += t1 - t0
    if predictor.info.get("notes"):
        result.info["notes"] = [*result.info.get("notes", []), *predictor.info["notes"]]
    return result


def segment_prediction(
    prediction: np.ndarray,
    plan: TilePlan,
    config: ModelConfig,
    *,
    cluster: ClusterOptions | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    **options: Any,
) -> SegmentResult:
    """The clustering half of :func:`segment`, for a prediction already made with ``plan``.

    ``cluster`` and ``options`` (fields of :class:`ClusterOptions` that override it) are
    resolved against the model ``config``.
    """
    opts = cluster_options(cluster, **options).resolve(config)
    t0 = time.perf_counter()
    labels, cinfo = instances_from_prediction(prediction, config.ndim, opts, device=device,
                                              progress=progress, cancel=cancel)
    t1 = time.perf_counter()
    info = {
        **cinfo,
        "mode": plan.mode,
        "tile": list(plan.tile_shape),
        "requested_tile": list(plan.requested) if plan.requested is not None else None,
        "n_tiles": len(plan),
        "grid": list(config.geometry.grid),
        "scope": opts.scope,
        "fg_threshold": opts.fg_threshold,
        "backend": opts.backend,
        "spatial_radius": opts.spatial_radius,
        "coord_scale": opts.coord_scale,
        "relative_min_size": opts.relative_min_size,
        "cluster": opts.to_dict(),
        "device": str(device),
        "times": {"predict": 0.0, "cluster": t1 - t0, "total": t1 - t0},
    }
    return SegmentResult(labels, prediction, plan, info)
