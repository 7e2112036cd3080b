"""Run a tile plan: read each tile's input box, batch, predict, crop, write.

The output holds, channels first, the embedding channels and then the foreground probability,
for every pixel of the image. Images with more axes than the model (a 2D model on a z-stack or
a time series) are processed plane by plane over the leading axes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import normalize
from .errors import Cancelled, NSEError, is_cancelled
from .geometry import Coordinate
from .io import check_finite, check_image, read_box
from .model import UNet, resolve_device
from .tiling import Tile, TilePlan, plan_tiles

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
MAX_LEADING_AXES = 2
# auto batch: about this many input pixels per forward pass (small tiles batch up to 32)
BATCH_PIXELS = 2**21
MAX_AUTO_BATCH = 32
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisLayout:
    """How an image's axes map onto the model: leading (looped), channel, spatial."""

    leading: tuple[int, ...]
    channel: int | None
    spatial: tuple[int, ...]

    def leading_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.leading)

    def spatial_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(shape[a] for a in self.spatial)


def axis_layout(shape: Sequence[int], ndim: int, in_channels: int = 1,
                channel_axis: int | None = None) -> AxisLayout:
    """Map image axes to the model: the last ``ndim`` non-channel axes are spatial."""
    n = len(shape)
    if in_channels > 1:
        if channel_axis is None:
            # the non-spatial axis of that size nearest the spatial axes, else channels-last
            before = [a for a in range(n - ndim) if shape[a] == in_channels]
            if before:
                channel_axis = before[-1]
            elif shape[-1] == in_channels:
                channel_axis = n - 1
            else:
                raise NSEError(
                    f"the model needs {in_channels} channels but no axis of image shape "
                    f"{tuple(shape)} has that size"
                )
        channel_axis %= n
        if shape[channel_axis] != in_channels:
            raise NSEError(
                f"channel axis {channel_axis} has {shape[channel_axis]} channels, "
                f"the model needs {in_channels}"
            )
    elif channel_axis is not None:
        raise NSEError("channel_axis given but the model takes a single channel")
    rest = [a for a in range(n) if a != channel_axis]
    if len(rest) < ndim:
        raise NSEError(f"image of shape {tuple(shape)} has fewer than the {ndim} spatial axes "
                       f"the {ndim}D model needs")
    if len(rest) - ndim > MAX_LEADING_AXES:
        raise NSEError(
            f"image of shape {tuple(shape)} has {len(rest)} axes; a {ndim}D model maps at most "
            f"{ndim + MAX_LEADING_AXES} (up to {MAX_LEADING_AXES} leading axes plane by plane)"
        )
    return AxisLayout(tuple(rest[: len(rest) - ndim]), channel_axis, tuple(rest[-ndim:]))


def _autocast(device: torch.device, amp: str | None):
    if amp in (None, "none", "fp32"):
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise NSEError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class _TileOutOfMemory(Exception):
    """Out of memory with one tile per batch: the tile must shrink."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a device out-of-memory error (CUDA, MPS, or a CPU allocator)."""
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError)
        and any(m in text for m in ("out of memory", "status_alloc_failed")))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _batches(tiles: Sequence[Tile], size: int) -> Iterator[Sequence[Tile]]:
    for i in range(0, len(tiles), size):
        yield tiles[i : i + size]


class Predictor:
    """Runs a model over images with a tile plan; reusable across images and planes."""

    def __init__(self, model: UNet, device: str | torch.device = "auto", amp: str | None = None,
                 batch_size: int | None = None, pad: str = "reflect"):
        if batch_size is not None and batch_size < 1:
            raise NSEError(f"batch size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.amp = amp
        self.batch_size = batch_size
        self.pad = pad
        self.info: dict[str, Any] = {}  # what the last run did (tile, batch, out-of-memory notes)
        self.last_plan: TilePlan | None = None  # the plan the last run ended with
        self._batch = 1

    def _read(self, image: Any, tiles: Sequence[Tile], layout: AxisLayout, lead: tuple[int, ...],
              norm: tuple[float, float]) -> np.ndarray:
        blocks = []
        for t in tiles:
            if layout.channel is None:
                block, inside = read_box(image, t.input_roi, self.pad, lead=lead)
                block = block[None]
            else:
                chans = []
                for c in range(self.config.in_channels):
                    b, inside = read_box(image, t.input_roi, self.pad,
                                         lead=_insert(lead, layout, c))
                    chans.append(b)
                block = np.stack(chans)
            check_finite(block)
            block = normalize.apply(block, *norm)
            if inside is not None:
                block = block * inside[None]
            blocks.append(block)
        return np.stack(blocks)

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with _autocast(self.device, self.amp):
            y = self.model(x)
        y = y.float()
        y[:, -1] = torch.sigmoid(y[:, -1])
        return y.cpu().numpy()

    def run(
        self,
        image: Any,
        mode: str = "correct",
        tile: int | Sequence[int] | None = None,
        *,
        channel_axis: int | None = None,
        out: Any = None,
        progress: ProgressFn | None = None,
        cancel: Any = None,
    ) -> Any:
        """Predict every pixel of ``image`` (numpy, zarr, dask, memmap).

        Returns ``out`` (or a new float32 numpy array) of shape
        ``(embedding_dim + 1, *leading, *spatial)``. ``tile=None``: the default tile for this
        predictor's device (:func:`tiling.default_tile`).

        A device out-of-memory error halves the batch and retries; at one tile per batch it
        halves the tile (correct stitching, whose result does not depend on the tile) or
        turns a whole-image pass into correct tiles (equal by Cor. 4). What was done is in
        :attr:`info` (``notes``) and logged as a warning; :attr:`last_plan` is the plan used.
        """
        check_image(image)
        cfg = self.config
        layout = axis_layout(image.shape, cfg.ndim, cfg.in_channels, channel_axis)
        if layout.channel is not None and layout.channel > layout.spatial[0]:
            # channels-last (RGB-like): move the channel axis in front of the spatial axes
            image = np.moveaxis(np.asarray(image), layout.channel, 0)
            layout = axis_layout(image.shape, cfg.ndim, cfg.in_channels, 0)
        spatial = layout.spatial_shape(image.shape)
        leading = layout.leading_shape(image.shape)
        plan = plan_tiles(spatial, cfg.geometry, tile, mode, self.device)
        out_shape = (cfg.out_channels, *leading, *spatial)
        if out is None:
            out = np.empty(out_shape, dtype=np.float32)
        elif tuple(out.shape) != out_shape:
            raise NSEError(f"output array has shape {tuple(out.shape)}, expected {out_shape}")
        if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
            check_finite(np.asarray(image))
        norm = normalize.normalization_params(image, cfg.normalization)
        planes = list(np.ndindex(*leading)) if leading else [()]
        self.info = {"device": str(self.device), "mode": mode, "out_of_memory": 0, "notes": []}
        self._batch = min(self.batch_size or auto_batch_size(plan), len(planes) * len(plan))
        while True:
            self.info.update(tile=list(plan.tile_shape), n_tiles=len(plan))
            self.last_plan = plan
            try:
                self._run_plan(image, plan, layout, planes, norm, out, progress, cancel)
                break
            except _TileOutOfMemory:
                pass  # outside the except block: the error's frames hold device tensors
            _free(self.device)
            plan = self._smaller_plan(plan, spatial)
        self.info["batch_size"] = self._batch
        return out

    def _run_plan(self, image: Any, plan: TilePlan, layout: AxisLayout,
                  planes: list[tuple[int, ...]], norm: tuple[float, float], out: Any,
                  progress: ProgressFn | None, cancel: Any) -> None:
        total = len(planes) * len(plan.tiles)
        done = 0
        if progress is not None:
            progress(0, total)
        work = [(lead, b) for lead in planes for b in _batches(plan.tiles, self._batch)]
        # read the next batch while the current one runs on the device
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._read, image, work[0][1], layout, work[0][0], norm)
            for i, (lead, batch) in enumerate(work):
                if is_cancelled(cancel):
                    future.cancel()
                    raise Cancelled("prediction cancelled")
                x = future.result()
                if i + 1 < len(work):
                    nl, nb = work[i + 1]
                    future = pool.submit(self._read, image, nb, layout, nl, norm)
                y = self._forward_batched(x)
                for t, yt in zip(batch, y):
                    out[(slice(None), *lead, *t.output_roi.to_slices())] = yt[
                        (slice(None), *t.crop.to_slices())
                    ]
                done += len(batch)
                if progress is not None:
                    progress(done, total)

    def _forward_batched(self, x: np.ndarray) -> np.ndarray:
        """``_forward`` in chunks of ``self._batch`` tiles, halving it on out-of-memory."""
        outs, i = [], 0
        while i < len(x):
            size = min(self._batch, len(x) - i)
            try:
                outs.append(self._forward(x[i : i + size]))
                i += size
                continue
            except RuntimeError as err:
                if not is_out_of_memory(err):
                    raise
            _free(self.device)
            self.info["out_of_memory"] += 1
            if size == 1:
                raise _TileOutOfMemory
            self._batch = size // 2
            self._note(f"out of memory on {self.device} at batch {size}: "
                       f"retrying with batch {self._batch}")
        return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def _smaller_plan(self, plan: TilePlan, spatial: Sequence[int]) -> TilePlan:
        """The plan to retry with after an out-of-memory error at batch 1."""
        geo = self.config.geometry
        tile = Coordinate(max(g, (t // 2) // g * g) for t, g in zip(plan.tile_shape, geo.grid))
        if plan.mode == "naive":
            raise NSEError(
                f"out of memory on {self.device} with one naive tile of "
                f"{tuple(plan.tile_shape)}: choose a smaller tile (it changes a naive result) "
                f"or use correct stitching"
            )
        if tile == plan.tile_shape:
            raise NSEError(f"out of memory on {self.device} even with one tile of the grid "
                           f"f^l = {tuple(geo.grid)}; use a smaller model or the CPU")
        what = "the whole-image pass" if plan.mode == "whole" else f"tile {tuple(plan.tile_shape)}"
        self._note(f"out of memory on {self.device} at batch 1 with {what}: retrying with "
                   f"correct tiles {tuple(tile)} (same result)")
        return plan_tiles(spatial, geo, tile, "correct", self.device)

    def _note(self, text: str) -> None:
        self.info["notes"].append(text)
        log.warning(text)

    def plan(self, image_shape: Sequence[int], mode: str = "correct",
             tile: int | Sequence[int] | None = None,
             channel_axis: int | None = None) -> TilePlan:
        """The tile plan ``run`` would use for an image of ``image_shape``."""
        cfg = self.config
        layout = axis_layout(image_shape, cfg.ndim, cfg.in_channels, channel_axis)
        return plan_tiles(layout.spatial_shape(image_shape), cfg.geometry, tile, mode, self.device)


def auto_batch_size(plan: TilePlan) -> int:
    """Tiles per forward pass when none is given: small tiles batch (per-call overhead
    dominates them on a CPU), large ones run one or a few at a time (memory)."""
    return max(1, min(MAX_AUTO_BATCH, BATCH_PIXELS // plan.net_input.prod()))


def _insert(lead: tuple[int, ...], layout: AxisLayout, c: int) -> tuple[int, ...]:
    """The index over all non-spatial axes: ``lead`` with channel ``c`` at the channel axis."""
    idx = list(lead)
    idx.insert(sum(1 for a in layout.leading if a < layout.channel), c)
    return tuple(idx)


def predict(model: UNet, image: Any, mode: str = "correct",
            tile: int | Sequence[int] | None = None, *, device: str = "auto",
            batch_size: int | None = None, amp: str | None = None, pad: str = "reflect",
            channel_axis: int | None = None, out: Any = None,
            progress: ProgressFn | None = None, cancel: Any = None) -> Any:
    """Predict embeddings + foreground probability for every pixel (see :class:`Predictor`)."""
    return Predictor(model, device, amp, batch_size, pad).run(
        image, mode, tile, channel_axis=channel_axis, out=out, progress=progress, cancel=cancel
    )
