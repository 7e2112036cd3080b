"""Training an embedding U-Net from annotated labels, and calibrating its clustering.

- :mod:`.config`: :class:`TrainConfig`, :class:`TrainResult`, the recipes (:data:`PRESETS`,
  :func:`preset`);
- :mod:`.sampling`: data checks, training windows (the seam rule), the validation split,
  :class:`CropSampler`;
- :mod:`.loop`: :func:`train` (time limit, validation, checkpoints, resume, fine-tuning);
- :mod:`.calibrate`: :func:`calibrate` (bandwidth, foreground threshold and minimum size by
  AP@0.5 on validation images), :func:`evaluate`.
"""

from __future__ import annotations

from .calibrate import (
    CALIBRATION_KEYS,
    WIDE_TOLERANCE,
    Calibration,
    ap50,
    calibrate,
    clear_calibration,
    default_grid,
    evaluate,
    margin_bandwidth,
)
from .config import (
    BACKGROUNDS,
    CALIBRATE_ON,
    CALIBRATION_PIXELS,
    DEFAULT_PRESET_IMAGES,
    FG_LOSSES,
    PRESETS,
    UNLIMITED_ITERATIONS,
    Preset,
    ProgressFn,
    TrainConfig,
    TrainResult,
    preset,
)
from .loop import CHECKPOINT_KEY, load_checkpoint, save_checkpoint, torch_state, train
from .sampling import (
    CropSampler,
    SplitInstanceWarning,
    TrainArray,
    check_pair,
    default_window,
    has_instance,
    prepare_data,
    resolve_window,
    seam_rule_message,
    split_validation,
)

__all__ = [
    "BACKGROUNDS", "CALIBRATE_ON", "CALIBRATION_KEYS", "CALIBRATION_PIXELS", "CHECKPOINT_KEY",
    "DEFAULT_PRESET_IMAGES", "FG_LOSSES",
    "PRESETS", "UNLIMITED_ITERATIONS", "Calibration", "CropSampler", "Preset", "ProgressFn",
    "SplitInstanceWarning", "TrainArray", "TrainConfig", "TrainResult", "ap50", "calibrate",
    "check_pair", "clear_calibration", "default_grid", "default_window", "evaluate",
    "has_instance", "load_checkpoint", "margin_bandwidth", "prepare_data", "preset",
    "resolve_window", "save_checkpoint", "seam_rule_message", "split_validation",
    "torch_state", "train", "WIDE_TOLERANCE",
]
