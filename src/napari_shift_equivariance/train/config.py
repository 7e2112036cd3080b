"""Training settings (:class:`TrainConfig`), the result type and the named recipes (presets)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import normalize
from ..augment import ELASTIC_DEFAULTS
from ..errors import NSEError
from ..loss import DEFAULT_DELTA_D, DEFAULT_DELTA_V
from ..model import UNet
from ..options import check_coord_scale, check_known_fields

ProgressFn = Callable[[dict], None]
BACKGROUNDS = ("ignore", "instance")
FG_LOSSES = ("bce", "dice", "bce+dice")
#: iterations when only a time limit ends the run (``nse train --time-limit`` without
#: ``--iterations``): the learning-rate schedule then follows the clock
UNLIMITED_ITERATIONS = 10**9
#: iterations when neither ``iterations`` nor a time limit is given
DEFAULT_ITERATIONS = 2000
#: what the final calibration scores (``TrainConfig.calibrate_on``)
CALIBRATE_ON = ("all", "validation")
#: ``TrainConfig.refit`` by default: the held-out crop joins training for the last quarter
#: of the run (docs/training.md, "Refit")
DEFAULT_REFIT = 0.25
#: ``calibrate_on="all"``: training images are added to the calibration data while it holds
#: at most this many pixels (the held-out split always counts)
CALIBRATION_PIXELS = 2**20


@dataclass
class TrainConfig:
    """Everything that decides a training run (architecture fields are ignored when
    fine-tuning: the start model's architecture is kept).

    ``window`` is the training *output* window per axis (``None``: :func:`default_window`);
    it must exceed ``f^l`` on every axis unless ``allow_small_window``.

    ``time_limit`` (seconds, ``None``: none) bounds the whole :func:`train` call: the loop
    stops early enough to validate, calibrate and return within it, and the learning-rate
    schedule follows whichever of ``iterations`` and the clock ends first. ``iterations``
    left ``None`` is :data:`DEFAULT_ITERATIONS` without a time limit and unlimited with one
    (the clock alone ends the run, as ``nse train --time-limit`` without ``--iterations``).

    ``val_every``: validate every N iterations (``None``: about 10 times per run, by the
    clock under a time limit; ``0``: only at the end). A validation split is held out of the
    training data automatically (``val_fraction`` of the largest array) whenever validation
    or calibration is on. ``keep_best``: return the weights of the best validation AP.

    ``calibrate``: after training, choose the mean-shift bandwidth, foreground threshold and
    minimum size that maximise AP@0.5 (:func:`calibrate`) and store them in
    ``model.config.extra``. ``calibrate_on``: with the automatic validation split, ``"all"``
    calibrates on the whole training images (the held-out split and the training part: a
    split of a few objects picks noisy settings; images beyond
    :data:`CALIBRATION_PIXELS` are left out), ``"validation"`` on the held-out split alone.
    Validation images given to :func:`train` are always what it calibrates on.

    ``refit``: with the automatic split, the last ``refit`` share of the run (by iterations
    or the clock) also trains on the held-out crop; its AP (``heldout_ap``) is measured just
    before, and validation stops then (``train.refit``). ``0``: the crop stays held out;
    ``None``: :data:`DEFAULT_REFIT`, or 0 with ``keep_best`` or ``calibrate_on="validation"``.
    """

    # architecture
    ndim: int = 2
    depth: int = 3
    factor: int | tuple[int, ...] = 2
    base_channels: int = 16
    embedding_dim: int = 8
    upsampling: str = "learnt"
    # sampling
    window: int | tuple[int, ...] | None = None
    allow_small_window: bool = False
    batch_size: int = 4
    p_foreground: float = 0.9
    # optimisation
    iterations: int | None = None
    time_limit: float | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    deterministic: bool | None = None  # None: deterministic kernels on the CPU only
    # loss
    delta_v: float = DEFAULT_DELTA_V
    delta_d: float = DEFAULT_DELTA_D
    background: str = "ignore"
    ignore_index: int | None = None
    fg_loss: str = "bce"
    # embedding units per pixel added to the first ndim embedding channels (loss.with_
    # coordinates; 0: off). None: the start model's when fine-tuning, else loss.COORD_SPAN
    # over the median training object's diameter
    coord_scale: float | None = None
    w_fg: float = 5.0  # at 1 the foreground channel lagged far behind the embeddings
    # the borders between touching instances become background in the training targets, so
    # the foreground learns a gap there and touching nuclei fall into separate components
    boundary_gap: bool = False
    # intensities
    normalization: dict[str, Any] = field(default_factory=lambda: dict(normalize.DEFAULT))
    # augmentation
    augment: bool = True
    flips: bool = True
    rot90: bool = True
    in_plane_only: bool | None = None
    intensity_scale: tuple[float, float] | None = (0.8, 1.2)
    intensity_offset: tuple[float, float] | None = (-0.1, 0.1)
    noise_std: tuple[float, float] | None = (0.0, 0.05)
    elastic: dict[str, float] | None = field(default_factory=lambda: dict(ELASTIC_DEFAULTS))
    p_elastic: float = 0.3
    # Gaussian blur of the image only, sigma ~ U(blur_sigma) px, on a p_blur share of the crops
    blur_sigma: tuple[float, float] | None = None
    p_blur: float = 0.0
    # magnify image and labels by a log-uniform factor from zoom on a p_zoom share of the crops
    zoom: tuple[float, float] | None = None
    p_zoom: float = 0.0
    # validation, calibration and checkpoints
    val_every: int | None = None
    val_fraction: float = 0.2
    val_bandwidth: float | None = None
    keep_best: bool = False
    calibrate: bool = True
    calibrate_on: str = "all"
    # the last share of the run in which the automatic validation crop joins training
    # (None: DEFAULT_REFIT, or 0 with keep_best or calibrate_on="validation")
    refit: float | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        if self.iterations is None:
            self.iterations = (UNLIMITED_ITERATIONS if self.time_limit is not None
                               else DEFAULT_ITERATIONS)
        for name in ("iterations", "batch_size", "base_channels", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise NSEError(f"{name} must be a positive integer, got {value!r}")
        for name in ("val_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is None and name == "val_every":
                continue
            if not isinstance(value, int) or value < 0:
                raise NSEError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
        if self.time_limit is not None and not (
                isinstance(self.time_limit, (int, float)) and math.isfinite(self.time_limit)
                and self.time_limit > 0):
            raise NSEError(f"time limit must be a positive number of seconds, got "
                           f"{self.time_limit!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NSEError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise NSEError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.background not in BACKGROUNDS:
            raise NSEError(f"background must be 'ignore' or 'instance', got {self.background!r}")
        if self.fg_loss not in FG_LOSSES:
            raise NSEError(f"fg_loss must be one of {', '.join(FG_LOSSES)}, got {self.fg_loss!r}")
        probabilities = ("p_foreground", "p_elastic", "p_blur", "p_zoom")
        if not all(0 <= getattr(self, p) <= 1 for p in probabilities):
            raise NSEError(f"{', '.join(probabilities)} are probabilities from 0 to 1")
        self.blur_sigma = _check_range(self.blur_sigma, "blur_sigma", "pixels", 0.0)
        self.zoom = _check_range(self.zoom, "zoom", "factors", 1e-3)
        if self.calibrate_on not in CALIBRATE_ON:
            raise NSEError(f"calibrate_on must be one of {', '.join(CALIBRATE_ON)}, got "
                           f"{self.calibrate_on!r}")
        if not 0 < self.val_fraction < 1:
            raise NSEError(f"val_fraction must lie between 0 and 1, got {self.val_fraction}")
        if self.refit is not None and not (
                isinstance(self.refit, (int, float)) and 0 <= self.refit < 1):
            raise NSEError(f"refit must be a share of the run from 0 (off) to below 1, got "
                           f"{self.refit!r}")
        if self.refit and self.keep_best:
            raise NSEError("refit and keep_best exclude each other: after the held-out crop "
                           "joins training there is no held-out validation to pick weights by")
        if self.refit and self.calibrate_on != "all":
            raise NSEError("refit needs calibrate_on='all': the held-out crop is trained on "
                           "at the end, so it cannot be the only calibration data")
        if self.coord_scale is not None:
            self.coord_scale = check_coord_scale(self.coord_scale)
        if self.ignore_index == 0:
            raise NSEError("ignore_index 0 is the background label; pick another value")
        if isinstance(self.factor, list):
            self.factor = tuple(self.factor)
        if isinstance(self.window, list):
            self.window = tuple(self.window)

    @property
    def refit_share(self) -> float:
        """``refit`` with ``None`` resolved (resolved here, not at construction, so that
        ``replace(keep_best=True)`` on a default config still works)."""
        if self.refit is not None:
            return float(self.refit)
        return 0.0 if self.keep_best or self.calibrate_on != "all" else DEFAULT_REFIT

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for model files and JSON."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        check_known_fields(cls, d, "training settings")
        tuples = ("intensity_scale", "intensity_offset", "noise_std", "blur_sigma", "zoom")
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in d.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _check_range(value: Any, name: str, unit: str, low: float) -> tuple[float, float] | None:
    """``None`` or a ``(lo, hi)`` tuple of finite numbers with ``low <= lo <= hi``."""
    if value is None:
        return None
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            and low <= value[0] <= value[1]):
        raise NSEError(f"{name} must be (low, high) {unit} with {low:g} <= low <= high, got "
                       f"{value!r}")
    return (float(value[0]), float(value[1]))


@dataclass
class TrainResult:
    """The trained model (in eval mode), one history entry per iteration, notes about
    decisions the trainer took (window rounding, skipped planes, validation split...) and the
    calibration (a :class:`~.calibrate.Calibration`, ``None`` when off)."""

    model: UNet
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: TrainConfig | None = None
    calibration: Any = None


# -- presets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A named, reproducible recipe: how to make its training data and its settings.

    ``data(n_images)`` returns ``(images, labels)``; ``config`` holds the
    :class:`TrainConfig` fields that differ from the defaults.
    """

    name: str
    description: str
    data: Callable[[int], tuple[list[np.ndarray], list[np.ndarray]]]
    n_images: int
    config: dict[str, Any]


def _nuclei_data(shape: tuple[int, ...], style: str = "varied", **kw: Any):
    def make(n_images: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from ..data import nuclei

        pairs = [nuclei(shape, seed=i, style=style, **kw) for i in range(n_images)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    return make


#: The recipes of the bundled models (``nse train --preset NAME``). Change a recipe here
#: and retrain its model with ``scripts/train_default.py``.
PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "the bundled 2D model: 256 x 256 px generated nuclei images of the 'mixed' style "
        "(sparse, dense, dim, large and DSB-like images, data.nuclei(style='mixed', seed=i)); "
        "depth-3, f=2 net, 12 base channels, 8 embedding dimensions, 100 px output windows "
        "(f^l = 8), coordinates 0.35 units/px, intensity scale 0.4-1.6, 4000 iterations",
        _nuclei_data((256, 256), style="mixed"),
        48,
        {"ndim": 2, "depth": 3, "factor": 2, "base_channels": 12, "embedding_dim": 8,
         "upsampling": "learnt", "window": 100, "batch_size": 2, "iterations": 4000,
         "lr": 1e-3, "seed": 0, "device": "cpu", "w_fg": 5.0, "p_elastic": 0.2,
         "delta_d": 1.5, "intensity_scale": (0.4, 1.6),
         # COORD_SPAN over the real nuclei's 23 px; the mixed images' median (12 px) would
         # give 0.65, whose offsets span 10 units on the large nuclei
         "coord_scale": 0.35},
    ),
    "default-finetune": Preset(
        "default-finetune",
        "fine-tune a 2D model (--from it) on 256 x 256 px generated nuclei of the 'mixed' "
        "style, intensity scale 0.4-1.6, lr 1e-3, delta_d 1.5, 1200 iterations; it keeps the "
        "start model's coordinates (how the previous bundled model was made from the first)",
        _nuclei_data((256, 256), style="mixed"),
        48,
        {"ndim": 2, "depth": 3, "factor": 2, "base_channels": 12, "embedding_dim": 8,
         "upsampling": "learnt", "window": 100, "batch_size": 2, "iterations": 1200,
         "lr": 1e-3, "seed": 0, "device": "cpu", "w_fg": 5.0, "p_elastic": 0.2,
         "delta_d": 1.5, "intensity_scale": (0.4, 1.6)},
    ),
    "default3d": Preset(
        "default3d",
        "the bundled 3D model: 48 x 96 x 96 voxel generated nuclei stacks (varied generator "
        "settings); depth-2, f=2 net, 8 base channels, 8 embedding dimensions, 24 voxel "
        "output windows (f^l = 4); flips and rotations in all axes",
        _nuclei_data((48, 96, 96)),
        16,
        {"ndim": 3, "depth": 2, "factor": 2, "base_channels": 8, "embedding_dim": 8,
         "upsampling": "learnt", "window": 24, "batch_size": 1, "iterations": 3000,
         "lr": 2e-3, "seed": 0, "device": "auto", "w_fg": 5.0, "p_elastic": 0.2,
         # as the 2D default: the mixed stacks' median diameter (10 voxels) gives 0.91,
         # which lost the large nuclei (held-out AP 0.58 -> 0.07)
         "coord_scale": 0.35},
    ),
}
DEFAULT_PRESET_IMAGES = PRESETS["default"].n_images


def preset(name: str, n_images: int | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray], TrainConfig]:
    """A named recipe from :data:`PRESETS`: generated training data and settings.

    ``n_images`` (default: the recipe's) makes fewer or more training images.
    """
    if name not in PRESETS:
        raise NSEError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    images, labels = p.data(p.n_images if n_images is None else int(n_images))
    return images, labels, TrainConfig(**p.config)
