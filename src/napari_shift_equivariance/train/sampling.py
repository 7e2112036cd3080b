"""Training data: checks, windows (the seam rule), the validation split and the crop sampler.

Sampling follows the rule of Rumberger et al. (ICCV 2021, Sec. 3.2): every training crop's
*output* window is strictly larger than ``f^l`` per axis, so that neighbouring output
functions across the ``f^l`` grid are trained together and stitched predictions have no
seams. A window ``<= f^l`` is refused unless ``allow_small_window`` is set (the paper's failure
case). The input crop is the output window plus the network's context; images are padded by
reflection so that windows near a border work.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import normalize
from ..augment import augment as augment_crop
from ..errors import NSEError
from ..geometry import Coordinate, Roi, UNetGeometry, as_tuple
from ..io import check_image, read_box
from ..labels import (
    check_labels,
    foreground,
    instance_ids,
    split_instances,
    split_message,
    with_boundary_gap,
)
from .config import TrainConfig


class SplitInstanceWarning(UserWarning):
    """An instance ID occurs in several disconnected pieces."""


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
    return bool(foreground(labels, ignore_index).any())


def check_pair(image: Any, labels: Any, index: int, ndim: int,
               ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one image/labels pair; every problem is one clear NSEError."""
    name = f"image {index}"
    check_image(image, name)
    image = np.asarray(image)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        check_labels(labels, f"labels {index}")
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
    check_labels(labels, f"labels {index}", ignore_index)
    return image, labels


def _warn_split_instances(lab: np.ndarray, index: int, ndim: int,
                          ignore_index: int | None, notes: list[str]) -> None:
    planes = [()] if lab.ndim == ndim else [(z,) for z in range(lab.shape[0])]
    pieces: dict[int, int] = {}
    for p in planes:
        for k, n in split_instances(lab[p], ignore_index).items():
            pieces[k] = max(pieces.get(k, 0), n)
    if pieces:
        msg = split_message(pieces, f"labels {index}")
        notes.append(msg)
        warnings.warn(msg, SplitInstanceWarning, stacklevel=4)


def prepare_data(images: Sequence[Any], labels: Sequence[Any], ndim: int,
                 normalization: dict | None, ignore_index: int | None, notes: list[str],
                 boundary_gap: bool = False
                 ) -> tuple[list[TrainArray], list[tuple[np.ndarray, np.ndarray]]]:
    """Check all pairs, normalise each image once, split z-stacks into planes for 2D models.
    With ``boundary_gap`` the training labels (not the raw ones) have the borders between
    touching instances set to background (:func:`..labels.with_boundary_gap`).

    Warns (:class:`SplitInstanceWarning`, and a note) when an instance ID occurs in several
    disconnected pieces; fewer than two instances in all the data is an error. Returns the
    training arrays and the raw ``(image, labels)`` arrays they came from (spatial axes only,
    for a validation split).
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
    n_instances = 0
    for i, (img, lab) in enumerate(zip(images, labels), start=1):
        img, lab = check_pair(img, lab, i, ndim, ignore_index)
        _warn_split_instances(lab, i, ndim, ignore_index, notes)
        n_instances += len(instance_ids(lab, ignore_index))  # an ID across planes: one
        offset, scale = normalize.normalization_params(img, normalization)
        planes = [()] if img.ndim == ndim else [(z,) for z in range(img.shape[0])]
        for p in planes:
            if not has_instance(lab[p], ignore_index):
                skipped += 1
                continue
            name = f"image {i}" + (f", plane {p[0]}" if p else "")
            target = lab[p].astype(np.int64)
            if boundary_gap:
                target = with_boundary_gap(target, ignore_index)
            arrays.append(TrainArray(normalize.apply(img[p], offset, scale), target, name))
            raw.append((img[p], lab[p]))
    if not arrays:
        raise NSEError("the labels hold no instance at all (every pixel is 0 = background"
                       + (" or the ignore value" if ignore_index is not None else "") + ")")
    if n_instances < 2:
        raise NSEError("the labels hold only one instance: the embeddings learn to tell "
                       "instances apart, so annotate at least two objects")
    if skipped:
        notes.append(f"skipped {skipped} plane(s) without annotated instances")
    return arrays, raw


def split_validation(arrays: list[TrainArray], raw: list[tuple[np.ndarray, np.ndarray]],
                     window: Sequence[int], fraction: float, ignore_index: int | None,
                     notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Hold out the far end of the largest array along its longest axis (at least one window,
    ``fraction`` of it); the training part keeps the rest. Returns raw ``(image, labels)``,
    or ``None`` (with a note) when the data is too small to spare it."""
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
    if not has_instance(a.labels[tuple(keep)], ignore_index) and len(arrays) == 1:
        notes.append("validation off: every annotated instance lies in the crop that would be "
                     "held out")
        return None
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
        self.foreground = [np.flatnonzero(foreground(a.labels, config.ignore_index))
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
                p_elastic=cfg.p_elastic, blur_sigma=cfg.blur_sigma, p_blur=cfg.p_blur,
                zoom=cfg.zoom, p_zoom=cfg.p_zoom,
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
