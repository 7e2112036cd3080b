"""Prediction and clustering options as small validated value types.

One definition each, with the allowed modes, scopes and pads as one list that the CLI and the
widgets reuse. The types are frozen and picklable, so they can be sent to dask workers, and
they round-trip through plain dicts (``to_dict`` / ``from_dict``) for JSON and settings.

``ClusterOptions`` leaves a value ``None`` to mean "the model's": :meth:`ClusterOptions.resolve`
fills it from the calibration that training stores in ``config.extra`` (``"bandwidth"``,
``"fg_threshold"``, ``"min_size"``, ``"relative_min_size"``, ``"spatial_radius"``,
``"relative_bandwidth"``), or else
from the loss margins and the defaults below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import NSEError

STITCH_MODES = ("correct", "naive", "whole")
SCOPES = ("component", "global", "block")
PADS = ("reflect", "symmetric", "edge", "zero")
BACKENDS = ("torch", "sklearn")
AMPS = ("none", "bf16", "fp16")
#: Instances with fewer pixels are removed unless ``min_size`` says otherwise: smaller than
#: any nucleus the default models see, larger than the slivers a seam or a noisy border leaves.
DEFAULT_MIN_SIZE = {2: 10, 3: 30}
DEFAULT_FG_THRESHOLD = 0.5
#: The keys of ``ModelConfig.extra`` that calibration writes and :meth:`resolve` reads.
CALIBRATION_KEYS = ("bandwidth", "fg_threshold", "min_size", "relative_min_size",
                    "spatial_radius", "relative_bandwidth")


def check_known_fields(cls: type, d: Mapping[str, Any], what: str) -> None:
    """One clear error when a dict meant for dataclass ``cls`` has keys it does not know."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise NSEError(f"unknown {what} {unknown}")


def check_off_or_positive(value: Any, what: str) -> float:
    """``value`` as a float: finite and >= 0, where 0 means off; else one clear error."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise NSEError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(r) and r >= 0):
        raise NSEError(f"{what} must be a non-negative number (0: off), got {r}")
    return r


def check_fraction(value: Any, what: str) -> float:
    """``value`` as a float in [0, 1]; else one clear error."""
    r = check_off_or_positive(value, what)
    if r > 1:
        raise NSEError(f"{what} must lie between 0 and 1 (a fraction), got {r}")
    return r


def check_spatial_radius(value: Any) -> float:
    """A spatial radius in pixels as a float: finite and >= 0 (0: positions off)."""
    return check_off_or_positive(value, "spatial radius")


def check_coord_scale(value: Any) -> float:
    """A coordinate scale (embedding units per pixel) as a float: finite and >= 0 (0: off)."""
    return check_off_or_positive(value, "coordinate scale")


def _choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise NSEError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _int_tuple(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    seq = (value,) if isinstance(value, int) else tuple(value)
    try:
        out = tuple(int(v) for v in seq)
    except (TypeError, ValueError):
        raise NSEError(f"{name} must be positive integers, got {value!r}") from None
    if not out or any(v < 1 for v in out) or any(int(v) != v for v in seq):
        raise NSEError(f"{name} must be positive integers, got {value!r}")
    return out


class _Options:
    """``to_dict``, ``from_dict`` and ``replace`` for the frozen option dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        check_known_fields(cls, d, f"{cls.__name__} options")
        return cls(**dict(d))

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClusterOptions(_Options):
    """How a network output becomes instances.

    Parameters
    ----------
    bandwidth
        Mean-shift bandwidth in embedding units; ``None``: the model's calibrated value, else
        the one its loss margins imply.
    fg_threshold
        Pixels with foreground probability above this are clustered; ``None``: the model's.
    min_size
        Instances with fewer pixels are removed; ``None``: the model's, else
        :data:`DEFAULT_MIN_SIZE`.
    relative_min_size
        Instances smaller than this fraction of the image's median instance size are removed
        too (after ``min_size``; the median is over every plane of the image, so blockwise
        runs give the same labels). Drops the slivers and fragments an over-split leaves
        whatever the objects' size; ``0``: off; ``None``: the model's calibrated value,
        else 0.
    scope
        What mean-shift sees at once: each connected foreground ``"component"`` (default), the
        whole plane (``"global"``) or spatial ``"block"``\\ s of ``block_shape``.
    block_shape
        Block size per spatial axis for ``scope="block"`` (``None``: the default tile).
    backend
        ``"torch"`` (ours) or ``"sklearn"`` (scikit-learn's ``MeanShift``, a slow reference).
    spatial_radius
        Spatial-range mean-shift (Comaniciu & Meer): pixels are clustered by their embedding
        *and* their position, scaled so that ``spatial_radius`` pixels weigh one bandwidth;
        pixels much further apart than this do not share a kernel. Separates touching or
        far-apart objects whose embeddings alone do not; about the objects' radius to
        diameter. ``0``: embeddings only; ``None``: the model's calibrated value, else 0.
    coord_scale
        Embedding units per pixel that the model was trained with on its first ``ndim``
        embedding channels (:func:`~.loss.with_coordinates`): clustering adds
        ``coord_scale * position`` there. ``None``: the model's (its loss settings, else 0).
        A value other than the model's only makes sense for comparisons.
    relative_bandwidth
        A bandwidth that follows the size of the objects in each image: ``relative_bandwidth
        x coord_scale x D``, with ``D`` the median object diameter found by clustering a
        central sample of the image at ``bandwidth`` first (:mod:`.clustering.scale`), so
        ``relative_bandwidth`` is a fraction of a median object's span in the embedding.
        Needs a model with coordinates. ``0``: off (``bandwidth`` is used as it is);
        ``None``: the model's calibrated value, else 0, and 0 when ``bandwidth`` is given.
    """

    bandwidth: float | None = None
    fg_threshold: float | None = None
    min_size: int | None = None
    scope: str = "component"
    block_shape: tuple[int, ...] | None = None
    backend: str = "torch"
    spatial_radius: float | None = None
    coord_scale: float | None = None
    relative_min_size: float | None = None
    relative_bandwidth: float | None = None

    def __post_init__(self) -> None:
        b = self.bandwidth
        if b is not None:
            try:
                b = float(b)
            except (TypeError, ValueError):
                raise NSEError(f"bandwidth must be a number, got {b!r}") from None
            if not (math.isfinite(b) and b > 0):
                raise NSEError(f"bandwidth must be a positive number, got {b}")
            object.__setattr__(self, "bandwidth", b)
        t = self.fg_threshold
        if t is not None:
            try:
                t = float(t)
            except (TypeError, ValueError):
                raise NSEError(f"foreground threshold must be a number, got {t!r}") from None
            if not 0 < t < 1:
                raise NSEError("foreground threshold must lie strictly between 0 and 1, got "
                               f"{t}")
            object.__setattr__(self, "fg_threshold", t)
        m = self.min_size
        if m is not None:
            if isinstance(m, bool) or not isinstance(m, int | float) or int(m) != m or m < 0:
                raise NSEError(f"min size must be a non-negative integer, got {m}")
            object.__setattr__(self, "min_size", int(m))
        if self.spatial_radius is not None:
            object.__setattr__(self, "spatial_radius", check_spatial_radius(self.spatial_radius))
        if self.relative_min_size is not None:
            object.__setattr__(self, "relative_min_size",
                               check_fraction(self.relative_min_size, "relative min size"))
        if self.coord_scale is not None:
            object.__setattr__(self, "coord_scale", check_coord_scale(self.coord_scale))
        if self.relative_bandwidth is not None:
            object.__setattr__(self, "relative_bandwidth", check_off_or_positive(
                self.relative_bandwidth, "relative bandwidth"))
        _choice("scope", self.scope, SCOPES)
        _choice("backend", self.backend, BACKENDS)
        object.__setattr__(self, "block_shape", _int_tuple("block shape", self.block_shape))

    @property
    def resolved(self) -> bool:
        """Whether every model-dependent value is set."""
        return None not in (self.bandwidth, self.fg_threshold, self.min_size,
                            self.spatial_radius, self.coord_scale, self.relative_min_size,
                            self.relative_bandwidth)

    def resolve(self, config: Any) -> ClusterOptions:
        """These options with every ``None`` filled from the model ``config``
        (a :class:`~.model.ModelConfig`): its calibration, else the defaults."""
        extra = getattr(config, "extra", None) or {}
        changes: dict[str, Any] = {}
        if self.relative_bandwidth is None:
            # a bandwidth given by hand is meant as it is
            r = extra.get("relative_bandwidth") if self.bandwidth is None else None
            changes["relative_bandwidth"] = float(r) if r is not None else 0.0
        if self.bandwidth is None:
            changes["bandwidth"] = _model_bandwidth(config)
        if self.fg_threshold is None:
            t = extra.get("fg_threshold")
            changes["fg_threshold"] = float(t) if t is not None else DEFAULT_FG_THRESHOLD
        if self.min_size is None:
            m = extra.get("min_size")
            changes["min_size"] = int(m) if m is not None else DEFAULT_MIN_SIZE[config.ndim]
        if self.spatial_radius is None:
            r = extra.get("spatial_radius")
            changes["spatial_radius"] = float(r) if r is not None else 0.0
        if self.coord_scale is None:
            changes["coord_scale"] = model_coord_scale(config)
        if self.relative_min_size is None:
            f = extra.get("relative_min_size")
            changes["relative_min_size"] = float(f) if f is not None else 0.0
        if self.scope == "block" and self.block_shape is None:
            from .tiling import DEFAULT_TILE

            changes["block_shape"] = (DEFAULT_TILE[config.ndim],) * config.ndim
        return self.replace(**changes) if changes else self


def cluster_options(cluster: ClusterOptions | None = None, **overrides: Any) -> ClusterOptions:
    """``cluster`` (default: all defaults) with the keyword values that are not None."""
    base = ClusterOptions() if cluster is None else cluster
    if not isinstance(base, ClusterOptions):
        raise NSEError(f"cluster must be a ClusterOptions, got {type(base).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return base.replace(**changes) if changes else base


def model_coord_scale(config: Any) -> float:
    """The coordinate scale a model was trained with (0 for models without one)."""
    loss = getattr(config, "loss", None) or {}
    return check_coord_scale(loss.get("coord_scale") or 0.0)


def _model_bandwidth(config: Any) -> float:
    """The model's calibrated bandwidth, or else the one its loss margins imply."""
    from .clustering import estimate_bandwidth_from_margins
    from .loss import DEFAULT_DELTA_D, DEFAULT_DELTA_V

    calibrated = (getattr(config, "extra", None) or {}).get("bandwidth")
    if calibrated is not None and float(calibrated) > 0:
        return float(calibrated)
    loss = getattr(config, "loss", None) or {}
    return float(estimate_bandwidth_from_margins(float(loss.get("delta_v", DEFAULT_DELTA_V)),
                                                 float(loss.get("delta_d", DEFAULT_DELTA_D))))


@dataclass(frozen=True)
class PredictOptions(_Options):
    """How the network is run over an image.

    Parameters
    ----------
    mode
        ``"correct"`` (``n*f^l`` tiles on the global grid: equal to ``"whole"``), ``"naive"``
        (tiles of exactly ``tile``) or ``"whole"`` (one pass).
    tile
        Output tile size request: one integer for every axis or one per axis; ``None``: the
        default for the device.
    batch_size
        Tiles per forward pass; ``None``: automatic.
    amp
        Mixed precision on CUDA: ``None``/``"none"``, ``"bf16"`` or ``"fp16"``.
    pad
        How the image is extended past its border for the network's context.
    channel_axis
        The image's channel axis, if any.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    """

    mode: str = "correct"
    tile: tuple[int, ...] | None = None
    batch_size: int | None = None
    amp: str | None = None
    pad: str = "reflect"
    channel_axis: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        _choice("stitch mode", self.mode, STITCH_MODES)
        _choice("pad", self.pad, PADS)
        if self.amp is not None:
            _choice("amp", self.amp, AMPS)
        object.__setattr__(self, "tile", _int_tuple("tile", self.tile))
        if self.batch_size is not None:
            bs = self.batch_size
            if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
                raise NSEError(f"batch size must be a positive integer or None (auto), got {bs!r}")
        if self.channel_axis is not None and not isinstance(self.channel_axis, int):
            raise NSEError(f"channel axis must be an integer, got {self.channel_axis!r}")
        if not isinstance(self.device, str):
            object.__setattr__(self, "device", str(self.device))
