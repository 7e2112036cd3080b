"""The training loop: time limit, validation, best-weights choice, calibration, checkpoints.

Determinism: the weights come from ``build_model(seed=...)`` and every random draw of the
sampler and the augmentation from one :class:`numpy.random.Generator` seeded with
``TrainConfig.seed``; no global seed is touched. On the CPU, the same seed and data give
bit-identical weights, also across a checkpoint and ``resume`` (without a time limit: under
one, where training stops and the learning-rate schedule depend on the clock).
Process-wide torch settings that training changes (deterministic algorithms, cuDNN flags,
the thread count) are restored exactly when :func:`train` returns or raises.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NSEError, is_cancelled
from ..labels import instance_sizes
from ..loss import COORD_SPAN, TrainingLoss
from ..model import ModelConfig, UNet, build_model, load_model, resolve_device, save_model
from ..options import model_coord_scale
from .calibrate import Calibration, calibrate, clear_calibration, object_diameter
from .config import CALIBRATION_PIXELS, ProgressFn, TrainConfig, TrainResult
from .refit import HISTORY_KEY, Refit, heldout_ap
from .sampling import CropSampler, TrainArray, prepare_data, resolve_window, split_validation

CHECKPOINT_KEY = "checkpoint"
#: validations per run when ``val_every`` is None
VALIDATIONS_PER_RUN = 8
#: ratio of neighbouring bandwidths tried by the validation during training
VAL_STEP = 1.4
#: safety factor on the measured cost of the final calibration under a time limit
RESERVE_FACTOR = 1.2
#: a time limit must leave at least half of it for training after the setup and the reserve
MIN_TRAINING_SHARE = 0.5
#: the reserve never exceeds this share of the limit: one slow measurement on a busy machine
#: must not end training early, and the final calibration keeps its own deadline anyway
MAX_RESERVE_SHARE = 0.25


# -- checkpoints --------------------------------------------------------------------------


def save_checkpoint(path: str | Path, model: UNet, optimizer: torch.optim.Optimizer,
                    rng: np.random.Generator, iteration: int, history: list[dict],
                    config: TrainConfig) -> Path:
    """A model file (usable with ``--model``) that also holds what ``resume`` needs."""
    state = {
        "iteration": iteration,
        "optimizer": optimizer.state_dict(),
        "rng": rng.bit_generator.state,
        "train_config": config.to_dict(),
        "history": history,
    }
    return save_model(model, path, overwrite=True, extra={CHECKPOINT_KEY: state})


def load_checkpoint(path: str | Path) -> tuple[UNet, dict]:
    path = Path(path)
    model = load_model(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("extra", {}).get(CHECKPOINT_KEY)
    if state is None:
        raise NSEError(f"{path} is a model file without training state; fine-tune from it "
                       "(init_model / --from) instead of resuming")
    return model, state


# -- process-wide torch state ---------------------------------------------------------------


@contextlib.contextmanager
def torch_state(device: torch.device, deterministic: bool | None = None) -> Iterator[None]:
    """Deterministic kernels for this call only (``None``: on the CPU only); every
    process-wide flag touched, and the thread count, are restored exactly afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.get_num_threads())
    on = device.type == "cpu" if deterministic is None else bool(deterministic)
    try:
        if on:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if device.type == "cuda":
                torch.backends.cudnn.deterministic = True
                torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:4]
        if torch.get_num_threads() != saved[4]:
            torch.set_num_threads(saved[4])


# -- the loop -----------------------------------------------------------------------------


def _start_model(config: TrainConfig, init_model: UNet | str | None, notes: list[str]) -> UNet:
    if init_model is None:
        model_config = ModelConfig(
            ndim=config.ndim, depth=config.depth, factor=config.factor,
            base_channels=config.base_channels, embedding_dim=config.embedding_dim,
            upsampling=config.upsampling, normalization=dict(config.normalization),
        )
        return build_model(model_config, seed=config.seed)
    if isinstance(init_model, UNet):
        model = copy.deepcopy(init_model).cpu()  # never train the caller's model in place
    else:
        model = load_model(init_model, "cpu", ndim=config.ndim)
    model.config = ModelConfig.from_dict(copy.deepcopy(model.config.to_dict()))
    notes.append(f"fine-tuning a {model.config.ndim}D depth-{model.config.depth} model: its "
                 "architecture and normalisation are kept")
    return model


def _coord_scale(config: TrainConfig, model: UNet, started: bool, arrays: list[TrainArray],
                 window: Sequence[int], notes: list[str]) -> float:
    """``config.coord_scale``; else the start model's when fine-tuning or resuming (its
    embeddings mean that); else :data:`~..loss.COORD_SPAN` over the median training object's
    diameter, when the model has an embedding channel per spatial axis (0 otherwise)."""
    nd, dims = model.config.ndim, model.config.embedding_dim
    if config.coord_scale is not None:
        if config.coord_scale and dims < nd:
            raise NSEError(f"coordinates (coord_scale {config.coord_scale:g}) need at least "
                           f"{nd} embedding dimensions, the model has {dims}; set coord_scale "
                           "0 or more embedding dimensions")
        scale = config.coord_scale
    elif started:
        scale = model_coord_scale(model.config)
    elif dims < nd:
        notes.append(f"no coordinates: {dims} embedding dimensions are fewer than the {nd} "
                     "spatial axes")
        return 0.0
    else:
        scale = None
    sizes = [n for a in arrays for i, n in instance_sizes(a.labels).items()
             if i != config.ignore_index]
    if scale is None:
        diameter = object_diameter(float(np.median(sizes)), nd)
        scale = float(f"{min(max(COORD_SPAN / diameter, 0.02), 2.0):.3g}")
        notes.append(f"coordinates: coord_scale {scale:g} embedding units per pixel "
                     f"({COORD_SPAN:g} across the median object diameter, {diameter:.1f} px)")
    large = object_diameter(float(np.percentile(sizes, 90)), nd)
    if scale and large > min(window) / 2:
        # a crop that cuts an object pulls its visible part to that part's own mean, so the
        # offsets cannot learn to point at one centre (measured: 3D large nuclei, 24 voxels)
        notes.append(f"coordinates: the larger objects (90th percentile diameter {large:.0f} "
                     f"px) exceed half the {min(window)} px training window, so crops cut "
                     "them and their offsets learn poorly; a larger --window helps")
    return scale


class Clock:
    """The time budget of one :func:`train` call and the schedule's progress fraction.

    Without a time limit the fraction is ``iteration / iterations`` exactly (reproducible);
    with one it is the larger of that and the share of the training budget used, where the
    training budget is the limit minus the (measured) cost of the final calibration.
    """

    def __init__(self, config: TrainConfig, start: float):
        self.config = config
        self.start = start
        self.limit = config.time_limit
        self.reserve = 0.0
        self.train_start = start
        self.step = 0.0
        self._fraction = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def budget(self) -> float:
        """Seconds of training the limit allows after setup, keeping the reserve."""
        assert self.limit is not None
        return self.limit - self.reserve - (self.train_start - self.start)

    def training_left(self) -> float | None:
        """Seconds left before the reserve (``None``: no limit)."""
        if self.limit is None:
            return None
        return max(self.limit - self.reserve - self.elapsed(), 0.0)

    def out_of_time(self, more: float = 0.0) -> bool:
        """Whether one more iteration (and ``more`` seconds) would eat into the reserve."""
        return self.limit is not None and (
            self.elapsed() + self.step + more + self.reserve >= self.limit)

    def tick(self, seconds: float) -> None:
        """Record an iteration's duration (a running mean that follows a busy machine)."""
        self.step = seconds if self.step == 0 else 0.8 * self.step + 0.2 * seconds

    def fraction(self, iteration: int) -> float:
        f = iteration / self.config.iterations
        if self.limit is not None:
            used = time.perf_counter() - self.train_start
            f = max(f, used / max(self.budget(), 1e-9), self._fraction)
        self._fraction = min(f, 1.0)
        return self._fraction


def _lr_factor(config: TrainConfig, fraction: float) -> float:
    if config.lr_schedule == "constant":
        return 1.0
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


class Validator:
    """Validation AP@0.5 during training: one prediction of the validation images, then the
    best AP at three bandwidths around the last best one (threshold 0.5, default minimum
    size), so that the figure follows the model rather than one fixed bandwidth. Times
    itself, for the clock's estimate of the final calibration."""

    def __init__(self, images: list[Any], labels: list[Any], ignore_index: int | None,
                 device: torch.device, cal_scale: float = 1.0):
        self.images, self.labels = images, labels
        self.cal_scale = cal_scale  # pixels of the final calibration's data / of these
        self.ignore_index = ignore_index
        self.device = device
        self.bandwidth: float | None = None
        self.seconds_predict = 0.0
        self.seconds_per_clustering = 0.0

    def measure(self, model: UNet) -> None:
        """Time one prediction of the validation images (after a warm-up) and one
        clustering of it, for the clock's first estimate of the calibration cost."""
        from ..predict import Predictor
        from .calibrate import _cluster, margin_bandwidth

        predictor = Predictor(model, self.device)
        predictor.run(np.asarray(self.images[0]), "correct")  # warm-up
        t0 = time.perf_counter()
        preds = [predictor.run(np.asarray(image), "correct") for image in self.images]
        args = (preds[0], model.config, margin_bandwidth(model.config), 0.5,
                str(predictor.device))
        self.seconds_predict = time.perf_counter() - t0
        _cluster(*args)  # warm-up
        t1 = time.perf_counter()
        _cluster(*args)
        self.seconds_per_clustering = time.perf_counter() - t1
        model.train()

    def __call__(self, model: UNet) -> Calibration:
        from .calibrate import default_min_size, margin_bandwidth

        b = self.bandwidth or margin_bandwidth(model.config)
        t0 = time.perf_counter()
        cal = calibrate(model, self.images, self.labels,
                        bandwidths=[b / VAL_STEP, b, b * VAL_STEP], fg_thresholds=[0.5],
                        min_sizes=[default_min_size(model.config.ndim)], spatial_radii=[0.0],
                        ignore_index=self.ignore_index, device=str(self.device), search="full",
                        tolerance=0.0)  # the best of three: a wider tie would walk outwards
        model.train()
        self.bandwidth = cal.bandwidth
        n = len(self.images) * 3
        per = max(time.perf_counter() - t0 - self.seconds_predict, 0.0) / n
        # the latest measurement: the clustering cost follows the model as it learns
        self.seconds_per_clustering = per
        return cal

    def calibration_cost(self, n_clusterings: int) -> float:
        return self.seconds_predict + len(self.images) * n_clusterings * (
            self.seconds_per_clustering)

    def final_cost(self, n_clusterings: int) -> float:
        """The final calibration's estimated cost: on its data, which may be larger (its
        cost grows with the pixels, as prediction and clustering do)."""
        extra = self.calibration_cost(1) if self.cal_scale != 1 else 0.0  # held-out AP
        return self.cal_scale * self.calibration_cost(n_clusterings) + extra


def train(
    images: Sequence[Any],
    labels: Sequence[Any],
    config: TrainConfig,
    *,
    init_model: UNet | str | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
    validation: tuple[Sequence[Any], Sequence[Any]] | None = None,
) -> TrainResult:
    """Train (or fine-tune) an embedding U-Net on image/label pairs, then calibrate it.

    Parameters
    ----------
    images, labels
        Arrays of equal shape: 2D images (or z-stacks, trained plane by plane, planes without
        instances skipped) for a 2D model, 3D volumes for a 3D model. Labels are integer
        instance ids, 0 = background, ``config.ignore_index`` = unannotated; at least two
        instances in all. An ID in several disconnected pieces is warned about.
    config
        :class:`TrainConfig`.
    init_model
        Fine-tune from this model (a :class:`UNet`, a file, or ``"default"``) instead of
        starting from random weights; its architecture and normalisation are kept.
    progress
        Called with one dict per event. Every event has ``"stage"``:

        - ``"train"``, after every iteration: ``"iteration", "iterations", "loss", "var",
          "dist", "reg", "fg", "lr", "seconds"`` (since the call started), ``"fraction"``
          (of the run done, by iterations or by the clock) and, when validated,
          ``"val_ap"`` (AP@0.5 on the validation split) and ``"val_bandwidth"``;
          these are also ``TrainResult.history``;
        - ``"calibrate"``: ``"done", "total"`` (grid points), ``"iteration"``;
        - ``"done"``: ``"iteration", "seconds", "val_ap"`` (the calibrated AP, or None),
          ``"bandwidth", "fg_threshold", "min_size"`` (None without calibration),
          ``"stopped"`` (``"iterations"``, ``"time_limit"`` or ``"cancelled"``).
    cancel
        A callable or ``threading.Event``, checked every iteration; when set, training stops
        and the model so far is calibrated and returned with
        ``model.config.extra["cancelled"] = True``.
    checkpoint_dir
        Folder for ``checkpoint-NNNNNN.pt`` every ``config.checkpoint_every`` iterations.
    resume
        A checkpoint file: training continues from it with the checkpoint's settings (only
        ``iterations``, ``time_limit``, ``device``, ``val_every`` and ``checkpoint_every``
        come from ``config``); on the CPU the result equals an uninterrupted run.
    validation
        ``(images, labels)`` to validate and calibrate on; default: a crop held out of the
        training data (``config.val_fraction`` of the largest array). When the data is too
        small to hold one out, calibration uses the training images (noted).

    Returns
    -------
    TrainResult
    """
    t_start = time.perf_counter()
    notes: list[str] = []
    state = None
    if resume is not None:
        model, state = load_checkpoint(resume)
        saved = TrainConfig.from_dict(state["train_config"])
        config = dataclasses.replace(
            saved, iterations=config.iterations, time_limit=config.time_limit,
            device=config.device, val_every=config.val_every,
            checkpoint_every=config.checkpoint_every)
        notes.append(f"resumed from {resume} at iteration {state['iteration']}")
    else:
        model = _start_model(config, init_model, notes)
    geometry = model.config.geometry
    if config.checkpoint_every and checkpoint_dir is None:
        raise NSEError("checkpoint_every is set but no checkpoint folder was given")

    arrays, raw = prepare_data(images, labels, geometry.ndim, model.config.normalization,
                               config.ignore_index, notes, config.boundary_gap)
    net_output, window = resolve_window(config, geometry, [a.labels.shape for a in arrays],
                                        notes)
    unsplit = list(arrays)  # the split replaces the array it cuts the crop from
    val, val_desc = _validation_data(validation, arrays, raw, window, config, notes)
    device = resolve_device(config.device)
    started = init_model is not None or state is not None
    loss_fn = TrainingLoss(delta_v=config.delta_v, delta_d=config.delta_d, w_fg=config.w_fg,
                           background=config.background, ignore_index=config.ignore_index,
                           fg_kind=config.fg_loss,
                           coord_scale=_coord_scale(config, model, started, arrays, window,
                                                      notes))
    model.config.window = tuple(window)
    model.config.loss = loss_fn.config()
    clear_calibration(model.config)
    model.config.extra = {**model.config.extra, "train": config.to_dict(), "cancelled": False}
    model.to(device).train()

    clock = Clock(config, t_start)
    validator = None
    cal_data, cal_desc = val, val_desc
    if cal_data is None and config.calibrate:
        cal_data = ([r[0] for r in raw], [r[1] for r in raw])
        cal_desc = "the training images (no validation split could be held out: optimistic)"
        notes.append("calibrating on the training images: no validation split")
    elif val is not None and validation is None and config.calibrate_on == "all":
        cal_data, cal_desc = _calibration_data(val, raw, val_desc, notes)
    if cal_data is not None:
        watched = val or cal_data  # what is validated while training
        validator = Validator(*watched, config.ignore_index, device,
                              cal_scale=_pixels(cal_data) / _pixels(watched))
    n_cal = _calibration_clusterings(model.config, cal_data)
    # built before the time check: the first optimizer imports much of torch (seconds)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    if config.time_limit is not None:
        _check_time_limit(config, clock, validator, n_cal, model,
                          val is not None and validation is None)
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(config.seed)
    history: list[dict] = []
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        history = list(state["history"])
        start = int(state["iteration"])
    refit = Refit(config, val, validation is not None, history)
    sampler = CropSampler(unsplit if refit.done else arrays, geometry, net_output, window,
                          config, rng)
    crop = (slice(None), slice(None), *(slice(0, w) for w in window))
    val_on = val is not None and config.val_every != 0 and not refit.done
    val_iters = config.val_every or max(1, config.iterations // VALIDATIONS_PER_RUN)
    next_val_time = None
    stopped = "iterations"
    best: tuple[float, int, dict] | None = None

    clock.train_start = time.perf_counter()
    if config.time_limit is not None and config.val_every is None:
        next_val_time = clock.train_start + clock.budget() / VALIDATIONS_PER_RUN
    with torch_state(device, config.deterministic):
        for it in range(start, config.iterations):
            if is_cancelled(cancel):
                stopped = "cancelled"
                break
            if clock.out_of_time():
                stopped = "time_limit"
                break
            t_it = time.perf_counter()
            fraction = clock.fraction(it)
            if refit.due(fraction):
                refit.measure(model, cal_data, cal_desc, val, config, device, it,
                              clock.training_left())
                sampler = CropSampler(unsplit, geometry, net_output, window, config, rng)
                val_on = False  # the crop is training data from here on
                notes.append(refit.note())
            lr = config.lr * _lr_factor(config, fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = sampler.draw(config.batch_size)
            output = model(x.to(device))[crop]
            terms = loss_fn(output, y.to(device))
            loss = terms["total"]
            if not torch.isfinite(loss):
                raise NSEError(f"training diverged (loss is {float(loss)}) at iteration "
                               f"{it + 1}; try a lower learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clock.tick(time.perf_counter() - t_it)
            entry = {"stage": "train", "iteration": it + 1, "iterations": config.iterations,
                     "loss": float(loss.detach())}
            entry.update({k: float(terms[k].detach()) for k in ("var", "dist", "reg", "fg")})
            entry.update({"lr": lr, "seconds": clock.elapsed(),
                          "fraction": clock.fraction(it + 1)})
            if refit.iteration == it:
                entry[HISTORY_KEY] = refit.heldout_ap
            if val_on and _validate_now(it + 1, config, val_iters, next_val_time) and not (
                    clock.out_of_time(validator.calibration_cost(3))):
                cal = validator(model)
                entry["val_ap"], entry["val_bandwidth"] = cal.ap, cal.bandwidth
                if next_val_time is not None:
                    next_val_time = time.perf_counter() + clock.budget() / VALIDATIONS_PER_RUN
                if config.keep_best and (best is None or cal.ap > best[0]):
                    best = (cal.ap, it + 1, {k: v.detach().cpu().clone()
                                             for k, v in model.state_dict().items()})
            if config.time_limit is not None and validator is not None:
                clock.reserve = min(RESERVE_FACTOR * validator.final_cost(n_cal),
                                    MAX_RESERVE_SHARE * config.time_limit)
            history.append(entry)
            if progress is not None:
                progress(entry)
            if checkpoint_dir is not None and config.checkpoint_every and (
                    (it + 1) % config.checkpoint_every == 0):
                save_checkpoint(checkpoint_dir / f"checkpoint-{it + 1:06d}.pt", model,
                                optimizer, rng, it + 1, history, config)

        done = history[-1]["iteration"] if history else start
        if best is not None and best[1] != done:
            model.load_state_dict(best[2])
            notes.append(f"kept the weights of iteration {best[1]} (best validation AP@0.5 "
                         f"{best[0]:.3f})")
        calibration = None
        if config.calibrate and cal_data is not None:
            calibration = _final_calibration(model, cal_data, cal_desc, config, device,
                                             progress, done, clock)
            calibration.apply(model)
            if cal_data is not val and val is not None:
                if refit.done:
                    calibration.heldout_ap = refit.heldout_ap
                    calibration.heldout_iteration = refit.iteration
                else:
                    calibration.heldout_ap = heldout_ap(model, val, config, device)
                calibration.apply(model)  # the record with it
            if not calibration.complete:
                notes.append("the calibration search was cut short by the time limit")
            notes.append(f"calibrated on {cal_desc}: {calibration.describe()}: "
                         f"{calibration.ap_text()}")
    model.eval().cpu()
    cancelled = stopped == "cancelled"
    model.config.extra.update({"cancelled": cancelled, "iterations_done": done,
                               "stopped": stopped})
    if cancelled:
        notes.append(f"cancelled after {done} of {config.iterations} iterations")
    elif stopped == "time_limit":
        notes.append(f"time limit {config.time_limit:g} s: stopped after {done} iterations")
    if progress is not None:
        progress({"stage": "done", "iteration": done, "iterations": config.iterations,
                  "seconds": clock.elapsed(), "stopped": stopped,
                  "val_ap": calibration.validation_ap if calibration else None,
                  "bandwidth": calibration.bandwidth if calibration else None,
                  "fg_threshold": calibration.fg_threshold if calibration else None,
                  "min_size": calibration.min_size if calibration else None,
                  "relative_min_size": calibration.relative_min_size if calibration else None})
    return TrainResult(model, history, notes, config, calibration)


def _validation_data(validation, arrays, raw, window, config: TrainConfig, notes: list[str]):
    if validation is not None:
        val_images, val_labels = (list(v) for v in validation)
        if len(val_images) != len(val_labels) or not val_images:
            raise NSEError("validation needs at least one image and as many label images as "
                           "images")
        return (val_images, val_labels), f"{len(val_images)} given validation image(s)"
    if not (config.calibrate or config.val_every != 0):
        return None, ""
    held = split_validation(arrays, raw, window, config.val_fraction, config.ignore_index,
                            notes)
    if held is None:
        return None, ""
    desc = next((n for n in reversed(notes) if n.startswith("validation on")), "")
    return ([held[0]], [held[1]]), desc.removeprefix("validation on ").split(" (")[0]


def _pixels(data: tuple[list, list]) -> int:
    return sum(int(np.asarray(lab).size) for lab in data[1])


def _calibration_data(val: tuple[list, list], raw: list[tuple[np.ndarray, np.ndarray]],
                      val_desc: str, notes: list[str]) -> tuple[tuple[list, list], str]:
    """``calibrate_on="all"``: the whole training images (the one the split came from first)
    while they hold at most :data:`CALIBRATION_PIXELS` pixels, and the held-out split as
    images of its own (its AP weighs as much as a whole image's)."""
    source = next((i for i, (im, _) in enumerate(raw) if np.shares_memory(im, val[0][0])),
                  None)
    order = ([] if source is None else [source]) + [i for i in range(len(raw)) if i != source]
    used, total = [], 0
    for i in order:
        if total + raw[i][1].size <= CALIBRATION_PIXELS:
            used.append(i)
            total += raw[i][1].size
    if not used:
        return val, val_desc
    # the split on its own as well: the mean over both chose better settings on tuning data
    # than the whole images alone (docs/training.md, "The widest bandwidth within 0.02")
    images = [raw[i][0] for i in used] + list(val[0])
    labels = [raw[i][1] for i in used] + list(val[1])
    left = len(raw) - len(used)
    desc = (f"{len(used)} whole training image(s)"
            + (f" ({left} left out: over {CALIBRATION_PIXELS} px)" if left else "")
            + f", and {val_desc} on its own")
    notes.append(f"calibrating on {desc}: a held-out crop alone often holds too few objects "
                 "to choose settings; its AP at the chosen ones is reported apart (the "
                 "training pixels make the calibration's own AP optimistic)")
    return (images, labels), desc


def _validate_now(iteration: int, config: TrainConfig, every: int,
                  next_time: float | None) -> bool:
    if iteration == config.iterations:
        return True
    if next_time is not None:
        return time.perf_counter() >= next_time
    return iteration % every == 0


def _calibration_clusterings(config: ModelConfig, data) -> int:
    """Clusterings per image of the final (coordinate) calibration, at most."""
    from .calibrate import BANDWIDTH_FACTORS, FG_THRESHOLDS

    return 2 * len(BANDWIDTH_FACTORS) + len(FG_THRESHOLDS) - 2 if data is not None else 0


def _check_time_limit(config: TrainConfig, clock: Clock, validator: Validator | None,
                      n_cal: int, model: UNet, split: bool) -> None:
    """Refuse, before anything is trained or written, a limit that cannot hold the setup
    already spent, one validation and the final calibration (twice with ``refit``) in half
    of it."""
    if validator is None:
        return
    validator.measure(model)
    full = RESERVE_FACTOR * validator.final_cost(n_cal)
    clock.reserve = min(full, MAX_RESERVE_SHARE * config.time_limit)
    need = clock.elapsed() + full + validator.seconds_predict
    if config.refit_share and split:
        need += full  # the crop's AP before it joins training
    if need >= MIN_TRAINING_SHARE * config.time_limit:
        raise NSEError(
            f"time limit {config.time_limit:g} s is too short: loading the data took "
            f"{clock.elapsed():.1f} s and one validation prediction "
            f"{validator.seconds_predict:.2g} s here, and validating and calibrating at the end "
            f"needs about {full:.2g} s; give at least "
            f"{math.ceil(need / MIN_TRAINING_SHARE)} s")


def _final_calibration(model: UNet, data, desc: str, config: TrainConfig,
                       device: torch.device, progress: ProgressFn | None, done: int,
                       clock: Clock) -> Calibration:
    def report(i: int, n: int) -> None:
        if progress is not None:
            progress({"stage": "calibrate", "done": i, "total": n, "iteration": done,
                      "iterations": config.iterations})

    budget = None
    if clock.limit is not None:
        budget = max(clock.limit - clock.elapsed(), 0.0)
    cal = calibrate(model, *data, ignore_index=config.ignore_index, device=str(device),
                    data=desc, progress=report, time_limit=budget)
    return cal
