"""npe2 reader: File ▸ Open / drag-and-drop of what the ``nse`` command line reads.

OME-Zarr images open as (multiscale) Image layers with their physical scale, together with
the complete label images in their ``labels/`` group; an OME-Zarr label image opens as a
Labels layer; plain ``.zarr`` arrays as an Image. czi, nd2, lif and OME-TIFF (the ``formats``
extra) open lazily, one layer per channel, first scene (``nse ... --scene`` picks others).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import NSEError

LayerData = tuple[Any, dict, str]


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for one path this plugin reads, else ``None`` (napari tries others)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    name = os.fspath(path).rstrip("/\\").lower()
    if name.endswith(".zarr") and Path(path).is_dir():
        return read_layers
    if name.endswith((".czi", ".nd2", ".lif", ".ome.tif", ".ome.tiff")):
        return read_layers  # without the extra, reading names it in its error
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    if isinstance(path, list):
        path = path[0]
    path = Path(path)
    from .formats import format_of

    fmt = format_of(path)
    if fmt == "ome-zarr":
        return _omezarr_layers(path)
    if fmt == "zarr":
        from .formats import open_image

        arr, _ = open_image(path)
        return [(arr, {"name": path.stem}, "image")]
    if fmt == "tif":  # an .ome.tif without the OME-TIFF plugin: tell the user what to install
        from .formats import bioio_reader

        bioio_reader(path, "ome-tiff")
    return _bioio_layers(path, fmt)


def _kwargs(meta: dict, name: str, drop: str | None = None) -> dict:
    axes = list(meta.get("axes") or [])
    scale = list(meta.get("scale") or [])
    units = meta.get("units") or {}
    if drop and drop in axes:
        i = axes.index(drop)
        axes, scale = axes[:i] + axes[i + 1:], scale[:i] + scale[i + 1:]
    kwargs: dict[str, Any] = {"name": name}
    if scale:
        kwargs["scale"] = [float(s) for s in scale]
    if axes:
        kwargs["axis_labels"] = axes
        if units:
            kwargs["units"] = [units.get(a, "pixel") for a in axes]
    return kwargs


def _omezarr_layers(path: Path) -> list[LayerData]:
    from .omezarr import list_labels, omezarr_levels

    levels, meta = omezarr_levels(path)
    data = levels if len(levels) > 1 else levels[0]
    if meta["is_labels"]:
        return [(data, _kwargs(meta, path.name.split(".")[0]), "labels")]
    kwargs = _kwargs(meta, path.name.split(".")[0], drop="c")
    kwargs["multiscale"] = len(levels) > 1
    if "c" in meta["axes"]:
        kwargs["channel_axis"] = meta["axes"].index("c")
    layers: list[LayerData] = [(data, kwargs, "image")]
    for name in list_labels(path):
        label_levels, label_meta = omezarr_levels(path / "labels" / name)
        label_kwargs = _kwargs(label_meta, name)
        label_kwargs["multiscale"] = len(label_levels) > 1
        layers.append((label_levels if len(label_levels) > 1 else label_levels[0],
                       label_kwargs, "labels"))
    return layers


def _bioio_layers(path: Path, fmt: str) -> list[LayerData]:
    from .formats import read_bioimage

    try:
        data, meta = read_bioimage(path, fmt=fmt)
    except NSEError:
        raise
    except Exception as exc:  # noqa: BLE001 - reader plugins raise many types on bad files
        message = f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        raise NSEError(message) from None
    stem = path.name.split(".")[0]
    name = stem if len(meta["scenes"]) <= 1 else f"{stem} [{meta['scene']}]"
    kwargs = _kwargs(meta, name, drop="c")
    if "c" in meta["axes"]:
        kwargs["channel_axis"] = meta["axes"].index("c")
        if meta["channel_names"]:
            kwargs["name"] = [f"{name} {c}" for c in meta["channel_names"]]
    return [(data, kwargs, "image")]
