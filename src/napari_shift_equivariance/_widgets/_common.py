"""Pieces both widgets share: layer choices, image input, messages."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from magicgui.widgets import Label
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy

from ..errors import NSEError
from ..predict import axis_layout

log = logging.getLogger("napari_shift_equivariance")


def layers_of(viewer: Any, kind: type) -> list[tuple[str, Any]]:
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, kind)]


def image_choices(viewer: Any, exclude: set[int] | None = None) -> list[tuple[str, Any]]:
    return [(n, layer) for n, layer in layers_of(viewer, Image)
            if not exclude or id(layer) not in exclude]


def labels_choices(viewer: Any) -> list[tuple[str, Any]]:
    return layers_of(viewer, Labels)


def report_error(exc: BaseException, what: str) -> None:
    """One-line notification; unexpected errors also go to the log with their traceback."""
    if isinstance(exc, NSEError):
        show_error(str(exc))
        return
    log.error("%s failed", what, exc_info=exc)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    show_error(f"{what} failed: {type(exc).__name__}{': ' + msg if msg else ''}")


def notify(msg: str) -> None:
    show_info(msg)


@dataclass
class ImageInput:
    """What a model sees of an image layer, and where results go back."""

    data: Any                  # level 0, channels as the model wants them
    channel_axis: int | None   # in ``data``
    result_axes: tuple[int, ...]  # axes of ``data`` kept in results (all but the channel axis)
    scale: tuple[float, ...]   # of the result layers
    translate: tuple[float, ...]
    gray_from_rgb: bool = False

    @property
    def result_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[a] for a in self.result_axes)


def image_input(layer: Any, ndim: int, in_channels: int = 1) -> ImageInput:
    """Level 0 of ``layer``, with RGB handled as the model allows; raises NSEError if unusable."""
    data = layer.data[0] if layer.multiscale else layer.data
    gray = False
    channel_axis = None
    if layer.rgb:
        if in_channels == data.shape[-1]:
            channel_axis = data.ndim - 1
        elif in_channels == 1:
            data = _Gray(data)  # averaged lazily, tile by tile
            gray = True
        else:
            raise NSEError(f"layer {layer.name!r} is RGB with {data.shape[-1]} channels, "
                           f"the model needs {in_channels}")
    layout = axis_layout(data.shape, ndim, in_channels, channel_axis)
    kept = tuple(a for a in range(len(data.shape)) if a != layout.channel)
    # napari's scale/translate cover the layer's axes (an RGB axis has none)
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    if not layer.rgb and layout.channel is not None:
        scale = tuple(s for a, s in enumerate(scale) if a != layout.channel)
        translate = tuple(t for a, t in enumerate(translate) if a != layout.channel)
    return ImageInput(data, layout.channel, kept, scale, translate, gray)


class _Gray:
    """Read-only lazy mean over the last (RGB) axis; supports the slicing the predictor does."""

    def __init__(self, rgb: Any) -> None:
        self._rgb = rgb
        self.shape = tuple(rgb.shape[:-1])
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        block = np.asarray(self._rgb[(*key, slice(None))], dtype=np.float32)
        return block.mean(axis=-1)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.asarray(self._rgb, dtype=np.float32).mean(axis=-1)
        return out if dtype is None else out.astype(dtype)


class NullProgress:
    """Stands in for napari's progress bar when the user switched it off."""

    total = 0
    n = 0
    cancel_callback = None

    def reset(self, total: int | None = None) -> None:
        self.total, self.n = total or 0, 0

    def set_description(self, desc: str) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass


def activity_progress(enabled: bool, total: int, desc: str) -> Any:
    """napari's (cancelable) activity progress bar, or a stand-in when disabled.

    napari animates a busy indicator while any progress bar exists; with software OpenGL
    (remote desktops, virtual displays) that repaints the canvas continuously and takes CPU
    from the computation (see benchmarks/bench_widget.py), hence the option.
    """
    if not enabled:
        return NullProgress()
    from napari.utils import cancelable_progress

    return cancelable_progress(total=total, desc=desc)


class WrapLabel(Label):
    """A magicgui Label that wraps its text (top-left aligned) and keeps room for ``lines``
    lines (Qt layouts do not always grow a wrapped label when its text changes)."""

    def __init__(self, lines: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.native.setWordWrap(True)
        self.native.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        policy = self.native.sizePolicy()
        policy.setHorizontalPolicy(QSizePolicy.Policy.Expanding)
        self.native.setSizePolicy(policy)
        if lines > 1:
            self.native.setMinimumHeight(lines * self.native.fontMetrics().lineSpacing() + 4)


def collapsible(title: str, container: Any, expanded: bool = False) -> Any:
    """A collapsible section (superqt) holding a magicgui container."""
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.addWidget(container.native)
    if expanded:
        box.expand(animate=False)
    return box


def insert_after(container: Any, widget: Any, qwidget: Any) -> None:
    """Put a plain Qt widget in ``container``'s layout right below magicgui ``widget``."""
    layout = container.native.layout()
    for i in range(layout.count()):
        row = layout.itemAt(i).widget()
        if row is not None and (row is widget.native or row.isAncestorOf(widget.native)):
            layout.insertWidget(i + 1, qwidget)
            return
    layout.addWidget(qwidget)


def tile_label(shape: Any) -> str:
    values = [int(v) for v in shape]
    return str(values[0]) if len(set(values)) == 1 else "×".join(map(str, values))
