"""Training an embedding U-Net from annotated labels: crop sampling, the loop, checkpoints.

Sampling follows the rule of Rumberger et al. (ICCV 2021, Sec. 3.2): every training crop's
*output* window is strictly larger than ``f^l`` per axis, so that neighbouring output
functions across the ``f^l`` grid are trained together and stitched predictions have no
seams. A window ``<= f^l`` is refused unless ``allow_small_window`` is set (the paper's failure
case). The input crop is the output window plus the network's context; images are padded by
reflection so that windows near a border work.

Determinism: the weights come from ``build_model(seed=...)`` and every random draw of the
sampler and the augmentation from one :class:`numpy.random.Generator` seeded with
``TrainConfig.seed``; no global seed is touched. On the CPU, the same seed and data give
bit-identical weights, also across a checkpoint and ``resume``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import normalize
from .augment import ELASTIC_DEFAULTS
from .augment import augment as augment_crop
from .errors import NSEError, is_cancelled
from .geometry import Coordinate, Roi, UNetGeometry, as_tuple
from .io import check_image, read_box
from .loss import TrainingLoss
from .model import ModelConfig, UNet, build_model, load_model, resolve_device, save_model

ProgressFn = Callable[[dict], None]
BACKGROUNDS = ("ignore", "instance")
FG_LOSSES = ("bce", "dice", "bce+dice")
CHECKPOINT_KEY = "checkpoint"


@dataclass
class TrainConfig:
    """Everything that decides a training run (architecture fields are ignored when
    fine-tuning: the start model's architecture is kept).

    ``window`` is the training *output* window per axis (``None``: :func:`default_window`);
    it must exceed ``f^l`` on every axis unless ``allow_small_window``.
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
    iterations: int = 2000
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    # loss
    delta_v: float = 0.5
    delta_d: float = 3.0
    background: str = "ignore"
    ignore_index: int | None = None
    fg_loss: str = "bce"
    w_fg: float = 5.0  # at 1 the foreground channel lagged far behind the embeddings
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
    # validation and checkpoints
    val_every: int = 0
    val_fraction: float = 0.2
    val_bandwidth: float | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "base_channels", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise NSEError(f"{name} must be a positive integer, got {value!r}")
        for name in ("val_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise NSEError(f"{name} must be 0 (off) or a positive integer, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NSEError(f"learning rate must be positive, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise NSEError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.background not in BACKGROUNDS:
            raise NSEError(f"background must be 'ignore' or 'instance', got {self.background!r}")
        if self.fg_loss not in FG_LOSSES:
            raise NSEError(f"fg_loss must be one of {', '.join(FG_LOSSES)}, got {self.fg_loss!r}")
        if not 0 <= self.p_foreground <= 1 or not 0 <= self.p_elastic <= 1:
            raise NSEError("p_foreground and p_elastic are probabilities from 0 to 1")
        if not 0 < self.val_fraction < 1:
            raise NSEError(f"val_fraction must lie between 0 and 1, got {self.val_fraction}")
        if self.ignore_index == 0:
            raise NSEError("ignore_index 0 is the background label; pick another value")
        if isinstance(self.factor, list):
            self.factor = tuple(self.factor)
        if isinstance(self.window, list):
            self.window = tuple(self.window)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), for model files and JSON."""
        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise NSEError(f"unknown training settings {sorted(unknown)}")
        tuples = ("intensity_scale", "intensity_offset", "noise_std")
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in d.items()})


@dataclass
class TrainResult:
    """The trained model (in eval mode), one history entry per iteration, and notes about
    decisions the trainer took (window rounding, skipped planes, validation split...)."""

    model: UNet
    history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config: TrainConfig | None = None


# -- windows ------------------------------------------------------------------------------


def default_window(geometry: UNetGeometry) -> Coordinate:
    """``4 * f^l`` per axis, at least 64 px (2D) or 32 px (3D), rounded up to a valid output."""
    floor = 64 if geometry.ndim == 2 else 32
    return geometry.valid_output_above(Coordinate(max(4 * g, floor) for g in geometry.grid))


def seam_rule_message(window: Sequence[int], grid: Sequence[int]) -> str:
    return (
        f"training window {tuple(window)} is not larger than f^l = {tuple(grid)} on every axis: "
        "output functions that are neighbours across the f^l grid would never be trained "
        "together, so predictions get seams on that grid (Rumberger et al. 2021, Sec. 3.2); "
        f"use a window > f^l (e.g. {tuple(4 * g for g in grid)}), or allow_small_window / "
        "--allow-small-window to reproduce this failure case on purpose"
    )


def resolve_window(config: TrainConfig, geometry: UNetGeometry,
                   shapes: Sequence[Sequence[int]], notes: list[str]
                   ) -> tuple[Coordinate, Coordinate]:
    """``(net_output, window)``: the network's output size per crop and the window the loss
    sees (its first ``window`` pixels; equal unless a small window was allowed)."""
    grid = geometry.grid
    smallest = Coordinate(min(s[a] for s in shapes) for a in range(geometry.ndim))
    if config.window is None:
        window = default_window(geometry)
        if any(w > s for w, s in zip(window, smallest)):
            below = geometry.valid_input_below(smallest + geometry.context)
            fit = below - geometry.context if below is not None else None
            if fit is None or any(w <= g for w, g in zip(fit, grid)):
                raise NSEError(
                    f"images of {tuple(smallest)} px are too small to train this network: the "
                    f"output window must be a valid size > f^l = {tuple(grid)} (at least "
                    f"{tuple(geometry.valid_output_above(grid + 1))})"
                )
            window = Coordinate(min(w, f) for w, f in zip(window, fit))
        notes.append(f"training output window {tuple(window)} (default)")
        return window, window
    window = Coordinate(as_tuple(config.window, geometry.ndim, "window"))
    if any(w < 1 for w in window):
        raise NSEError(f"window must be positive, got {tuple(window)}")
    small = any(w <= g for w, g in zip(window, grid))
    if small and not config.allow_small_window:
        raise NSEError(seam_rule_message(window, grid))
    net = geometry.valid_output_above(window)
    if small:
        notes.append(
            f"training window {tuple(window)} <= f^l = {tuple(grid)} on purpose: expect seams "
            f"on the f^l grid; the network runs at output {tuple(net)} and the loss uses its "
            f"first {tuple(window)} pixels"
        )
    elif net != window:
        notes.append(
            f"window {tuple(window)} is not a valid output size of this network; rounded up to "
            f"{tuple(net)}"
        )
        window = net
    for i, shape in enumerate(shapes):
        if any(w > s for w, s in zip(window, shape)):
            raise NSEError(
                f"training window {tuple(window)} is larger than training array {i + 1} "
                f"(shape {tuple(shape)}); use a smaller window"
            )
    return net, window


# -- data ---------------------------------------------------------------------------------


@dataclass
class TrainArray:
    """One training array: normalised image and its labels (spatial axes only)."""

    image: np.ndarray
    labels: np.ndarray
    name: str


def has_instance(labels: np.ndarray, ignore_index: int | None) -> bool:
    fg = labels != 0
    if ignore_index is not None:
        fg &= labels != ignore_index
    return bool(fg.any())


def check_pair(image: Any, labels: Any, index: int, ndim: int,
               ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one image/labels pair; every problem is one clear NSEError."""
    name = f"image {index}"
    check_image(image, name)
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise NSEError(
            f"labels {index} have dtype {labels.dtype}; instance labels must be integers "
            "(0 = background, 1..K = instances)"
        )
    if image.shape != labels.shape:
        raise NSEError(
            f"{name} has shape {image.shape} but its labels have shape {labels.shape}; "
            "they must match"
        )
    if image.ndim != ndim and not (ndim == 2 and image.ndim == 3):
        what = "2D images or z-stacks of 2D planes" if ndim == 2 else "3D volumes"
        raise NSEError(
            f"{name} has {image.ndim} axes {image.shape} but a {ndim}D model trains on {what}; "
            "model and data dimensionality do not match"
        )
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise NSEError(f"{name} contains NaN or infinite values; fix or mask them first")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        negative = np.unique(labels[labels < 0])
        if ignore_index is None or set(negative.tolist()) != {ignore_index}:
            raise NSEError(f"labels {index} contain negative values {negative[:5].tolist()}; "
                           "set ignore_index for unannotated pixels")
    return image, labels


def prepare_data(images: Sequence[Any], labels: Sequence[Any], ndim: int,
                 normalization: dict | None, ignore_index: int | None, notes: list[str]
                 ) -> tuple[list[TrainArray], list[tuple[np.ndarray, np.ndarray]]]:
    """Check all pairs, normalise each image once, split z-stacks into planes for 2D models.

    Returns the training arrays and the raw ``(image, labels)`` arrays they came from (spatial
    axes only, for a validation split).
    """
    if len(images) != len(labels):
        raise NSEError(
            f"got {len(images)} images and {len(labels)} label images; give exactly one labels "
            "image per image"
        )
    if not images:
        raise NSEError("no training data: give at least one image with its labels")
    arrays: list[TrainArray] = []
    raw: list[tuple[np.ndarray, np.ndarray]] = []
    skipped = 0
    for i, (img, lab) in enumerate(zip(images, labels), start=1):
        img, lab = check_pair(img, lab, i, ndim, ignore_index)
        offset, scale = normalize.normalization_params(img, normalization)
        planes = [()] if img.ndim == ndim else [(z,) for z in range(img.shape[0])]
        for p in planes:
            if not has_instance(lab[p], ignore_index):
                skipped += 1
                continue
            name = f"image {i}" + (f", plane {p[0]}" if p else "")
            arrays.append(TrainArray(normalize.apply(img[p], offset, scale),
                                     lab[p].astype(np.int64), name))
            raw.append((img[p], lab[p]))
    if not arrays:
        raise NSEError("the labels hold no instance at all (every pixel is 0 = background"
                       + (" or the ignore value" if ignore_index is not None else "") + ")")
    if skipped:
        notes.append(f"skipped {skipped} plane(s) without annotated instances")
    return arrays, raw


def split_validation(arrays: list[TrainArray], raw: list[tuple[np.ndarray, np.ndarray]],
                     window: Sequence[int], fraction: float, ignore_index: int | None,
                     notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Hold out the far end of the largest array along its longest axis (at least one window,
    ``fraction`` of it); the training part keeps the rest. Returns raw ``(image, labels)``."""
    k = max(range(len(arrays)), key=lambda i: arrays[i].labels.size)
    shape = arrays[k].labels.shape
    axis = int(np.argmax(shape))
    n = shape[axis]
    held = max(int(math.ceil(fraction * n)), int(window[axis]))
    if n - held < window[axis]:
        notes.append(f"validation off: {arrays[k].name} {shape} is too small to hold out a "
                     f"crop and keep a training window {tuple(window)}")
        return None
    cut = [slice(None)] * len(shape)
    keep = [slice(None)] * len(shape)
    cut[axis], keep[axis] = slice(n - held, n), slice(0, n - held)
    val = (raw[k][0][tuple(cut)], raw[k][1][tuple(cut)])
    if not has_instance(val[1], ignore_index):
        notes.append("validation off: the held-out crop has no annotated instance")
        return None
    a = arrays[k]
    arrays[k] = TrainArray(a.image[tuple(keep)], a.labels[tuple(keep)], a.name)
    notes.append(f"validation on the last {held} px of {a.name} along axis {axis} (held out "
                 "of training)")
    return val


class CropSampler:
    """Random training crops: input = output window + context, labels = output window."""

    def __init__(self, arrays: list[TrainArray], geometry: UNetGeometry, net_output: Coordinate,
                 window: Coordinate, config: TrainConfig, rng: np.random.Generator):
        self.arrays = arrays
        self.geometry = geometry
        self.net_input = net_output + geometry.context
        self.window = window
        self.config = config
        self.rng = rng
        sizes = np.array([a.labels.size for a in arrays], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        self.foreground = [np.flatnonzero((a.labels != 0) & (a.labels != config.ignore_index))
                           if config.ignore_index is not None else np.flatnonzero(a.labels)
                           for a in arrays]
        nd = geometry.ndim
        in_plane = config.in_plane_only
        if in_plane is None:
            in_plane = len(set(geometry.factor)) > 1
        self.axes = tuple(range(nd - 2, nd)) if (in_plane and nd == 3) else tuple(range(nd))

    def _origin(self, k: int) -> Coordinate:
        """A window origin; with probability ``p_foreground`` the window holds an instance
        pixel (one drawn uniformly, then a window position around it)."""
        rng, shape = self.rng, self.arrays[k].labels.shape
        fg = self.foreground[k]
        if rng.random() < self.config.p_foreground and fg.size:
            pixel = np.unravel_index(int(fg[rng.integers(fg.size)]), shape)
            return Coordinate(int(rng.integers(max(0, p - w + 1), min(p, s - w) + 1))
                              for p, w, s in zip(pixel, self.window, shape))
        return Coordinate(int(rng.integers(0, s - w + 1)) for s, w in zip(shape, self.window))

    def draw_one(self) -> tuple[np.ndarray, np.ndarray]:
        rng, cfg = self.rng, self.config
        k = int(rng.choice(len(self.arrays), p=self.weights))
        array = self.arrays[k]
        origin = self._origin(k)
        roi = Roi(origin - self.geometry.half_context, self.net_input)
        image, _ = read_box(array.image, roi, "reflect")
        labels, _ = read_box(array.labels, roi, "reflect")
        if cfg.augment:
            image, labels = augment_crop(
                image, labels, rng, flips=False, rot90=cfg.rot90, spatial_axes=self.axes,
                intensity_scale=cfg.intensity_scale, intensity_offset=cfg.intensity_offset,
                noise_std=cfg.noise_std,
                elastic=cfg.elastic if (cfg.elastic and cfg.p_elastic > 0) else False,
                p_elastic=cfg.p_elastic,
            )
            if cfg.flips:
                # drawn here rather than by augment(flips=True): this is the random stream the
                # bundled default model was trained with, so its recipe stays bit-identical
                flip = tuple(a for a, f in zip(self.axes, rng.random(len(self.axes)) < 0.5) if f)
                if flip:
                    image, labels = np.flip(image, flip), np.flip(labels, flip)
        half = self.geometry.half_context
        out = labels[tuple(slice(h, h + w) for h, w in zip(half, self.window))]
        return np.ascontiguousarray(image, np.float32), np.ascontiguousarray(out, np.int64)

    def draw(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.draw_one() for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([i for i, _ in items])[:, None])
        y = torch.from_numpy(np.stack([lab for _, lab in items]))
        return x, y


# -- evaluation ---------------------------------------------------------------------------


def evaluate(model: UNet, images: Sequence[Any], labels: Sequence[Any], *,
             bandwidth: float | None = None, ignore_index: int | None = None,
             mode: str = "correct", tile: Any = None, device: str = "auto",
             thresh: float = 0.5) -> dict[str, Any]:
    """Segment each image and match it to its labels: mean AP@``thresh`` and counts.

    Predicted objects lying mostly on ``ignore_index`` pixels are dropped before matching.
    """
    from .metrics import match
    from .segment import segment

    aps, per_image = [], []
    for image, gt in zip(images, labels):
        gt = np.asarray(gt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = segment(model, np.asarray(image), mode, tile, bandwidth=bandwidth,
                           device=device).labels
        if ignore_index is not None:
            unannotated = gt == ignore_index
            ids, counts = np.unique(pred[pred > 0], return_counts=True)
            bad_counts = np.bincount(pred[unannotated & (pred > 0)].ravel(),
                                     minlength=int(pred.max()) + 1)
            drop = ids[bad_counts[ids] * 2 > counts]
            pred = np.where(np.isin(pred, drop), 0, pred)
            gt = np.where(unannotated, 0, gt)
        m = match(gt.astype(np.int64), pred.astype(np.int64), thresh)
        aps.append(float(m["ap"]))
        per_image.append({"ap": float(m["ap"]), "n_gt": int(len(np.unique(gt[gt > 0]))),
                          "n_pred": int(len(np.unique(pred[pred > 0])))})
    return {"ap": float(np.mean(aps)) if aps else math.nan, "images": per_image}


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


# -- training -----------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(device: torch.device):
    """Deterministic kernels while training on the CPU; the previous setting is restored."""
    if device.type != "cpu":
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _lr_factor(config: TrainConfig, iteration: int) -> float:
    if config.lr_schedule == "constant":
        return 1.0
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * iteration / config.iterations))


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
    """Train (or fine-tune) an embedding U-Net on image/label pairs.

    Parameters
    ----------
    images, labels
        Arrays of equal shape: 2D images (or z-stacks, trained plane by plane, planes without
        instances skipped) for a 2D model, 3D volumes for a 3D model. Labels are integer
        instance ids, 0 = background, ``config.ignore_index`` = unannotated.
    config
        :class:`TrainConfig`.
    init_model
        Fine-tune from this model (a :class:`UNet`, a file, or ``"default"``) instead of
        starting from random weights; its architecture and normalisation are kept.
    progress
        Called after every iteration with ``{"iteration", "iterations", "loss", "var",
        "dist", "reg", "fg", "lr", "seconds"}`` and ``"val_ap"`` when validated.
    cancel
        A callable or ``threading.Event``, checked every iteration; when set, the model trained
        so far is returned with ``model.config.extra["cancelled"] = True``.
    checkpoint_dir
        Folder for ``checkpoint-NNNNNN.pt`` every ``config.checkpoint_every`` iterations.
    resume
        A checkpoint file: training continues from it with the checkpoint's settings (only
        ``iterations``, ``device``, ``val_every`` and ``checkpoint_every`` come from
        ``config``); on the CPU the result equals an uninterrupted run.
    validation
        ``(images, labels)`` to validate on; default: a crop held out of the training data
        when ``config.val_every > 0``.

    Returns
    -------
    TrainResult
    """
    notes: list[str] = []
    state = None
    if resume is not None:
        model, state = load_checkpoint(resume)
        saved = TrainConfig.from_dict(state["train_config"])
        config = dataclasses.replace(
            saved, iterations=config.iterations, device=config.device,
            val_every=config.val_every, checkpoint_every=config.checkpoint_every)
        notes.append(f"resumed from {resume} at iteration {state['iteration']}")
    else:
        model = _start_model(config, init_model, notes)
    geometry = model.config.geometry
    if config.checkpoint_every and checkpoint_dir is None:
        raise NSEError("checkpoint_every is set but no checkpoint folder was given")

    arrays, raw = prepare_data(images, labels, geometry.ndim, model.config.normalization,
                               config.ignore_index, notes)
    net_output, window = resolve_window(config, geometry, [a.labels.shape for a in arrays],
                                        notes)
    val = None
    if validation is not None:
        val_images, val_labels = (list(v) for v in validation)
        if len(val_images) != len(val_labels):
            raise NSEError("validation needs as many label images as images")
        val = (val_images, val_labels)
    elif config.val_every:
        held = split_validation(arrays, raw, window, config.val_fraction, config.ignore_index,
                                notes)
        val = ([held[0]], [held[1]]) if held is not None else None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)

    device = resolve_device(config.device)
    loss_fn = TrainingLoss(delta_v=config.delta_v, delta_d=config.delta_d, w_fg=config.w_fg,
                           background=config.background, ignore_index=config.ignore_index,
                           fg_kind=config.fg_loss)
    model.config.window = tuple(window)
    model.config.loss = loss_fn.config()
    model.config.extra = {**model.config.extra, "train": config.to_dict(), "cancelled": False}
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr,
                                 weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    history: list[dict] = []
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        history = list(state["history"])
        start = int(state["iteration"])
    sampler = CropSampler(arrays, geometry, net_output, window, config, rng)
    crop = (slice(None), slice(None), *(slice(0, w) for w in window))

    cancelled = False
    t0 = time.perf_counter()
    with _deterministic(device):
        for it in range(start, config.iterations):
            if is_cancelled(cancel):
                cancelled = True
                break
            lr = config.lr * _lr_factor(config, it)
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
            entry = {"iteration": it + 1, "iterations": config.iterations,
                     "loss": float(loss.detach())}
            entry.update({k: float(terms[k].detach()) for k in ("var", "dist", "reg", "fg")})
            entry.update({"lr": lr, "seconds": time.perf_counter() - t0})
            last = it + 1 == config.iterations
            if val is not None and config.val_every and ((it + 1) % config.val_every == 0
                                                         or last):
                entry["val_ap"] = evaluate(model, *val, bandwidth=config.val_bandwidth,
                                           ignore_index=config.ignore_index,
                                           device=str(device))["ap"]
                model.train()
            history.append(entry)
            if progress is not None:
                progress(entry)
            if checkpoint_dir is not None and config.checkpoint_every and (
                    (it + 1) % config.checkpoint_every == 0):
                save_checkpoint(checkpoint_dir / f"checkpoint-{it + 1:06d}.pt", model,
                                optimizer, rng, it + 1, history, config)

    model.eval().cpu()
    done = history[-1]["iteration"] if history else start
    model.config.extra.update({"cancelled": cancelled, "iterations_done": done})
    if cancelled:
        notes.append(f"cancelled after {done} of {config.iterations} iterations")
    return TrainResult(model, history, notes, config)


# -- presets ------------------------------------------------------------------------------

PRESETS = ("default",)
DEFAULT_PRESET_IMAGES = 48


def preset(name: str, n_images: int = DEFAULT_PRESET_IMAGES
           ) -> tuple[list[np.ndarray], list[np.ndarray], TrainConfig]:
    """A named, reproducible recipe: generated training data and settings.

    ``default`` is the recipe of the bundled ``models/default_2d.pt``: ``n_images`` nuclei
    images of 256 x 256 px, each with its own widely varied generator settings
    (``data.nuclei(style="varied", seed=i)``: sizes, elongation, density, touching, blur,
    brightness, background, noise), and a depth-3, f=2, 12-channel net with 8 embedding
    dimensions trained on 100 px output windows (``f^l = 8``), 2 crops per iteration, with
    the foreground term weighted 5 (at weight 1 the foreground channel lagged far behind).
    """
    from .data import nuclei

    if name not in PRESETS:
        raise NSEError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    pairs = [nuclei((256, 256), seed=i, style="varied") for i in range(n_images)]
    config = TrainConfig(
        ndim=2, depth=3, factor=2, base_channels=12, embedding_dim=8, upsampling="learnt",
        window=100, batch_size=2, iterations=4000, lr=2e-3, seed=0, device="cpu",
        w_fg=5.0, p_elastic=0.2,
    )
    return [p[0] for p in pairs], [p[1] for p in pairs], config
