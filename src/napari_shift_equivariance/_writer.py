"""npe2 writer: save a Labels layer as OME-Zarr (``.zarr``) or tif with its physical scale.

``X.zarr`` becomes a new OME-Zarr label image; ``IMAGE.zarr/labels/NAME`` adds labels ``NAME``
to an existing OME-Zarr image. A ``.tif`` is an OME-TIFF carrying the layer's scale as
physical pixel size. An existing file or label is never replaced: the writer refuses and
says so (napari shows the message).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import NSEError

_AXES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}
_UNITS = {"micrometer", "nanometer", "millimeter"}


def _axes_scale_units(data: Any, meta: dict) -> tuple[list[str], list[float], dict]:
    ndim = len(data.shape)
    labels = [str(a).lower() for a in (meta.get("axis_labels") or ())]
    if len(labels) != ndim or not set(labels) <= set("tczyx") or len(set(labels)) != ndim:
        labels = list(_AXES.get(ndim, ""))
    if len(labels) != ndim:
        raise NSEError(f"cannot save labels with {ndim} dimensions as OME-Zarr/tif (2 to 5)")
    scale = [float(s) for s in (meta.get("scale") if meta.get("scale") is not None
                                else [1.0] * ndim)]
    units = {}
    for a, u in zip(labels, meta.get("units") or ()):
        u = str(u)
        if u in _UNITS:
            units[a] = u
    return labels, scale, units


class SaveRefused(OSError):
    """The labels were not saved (the path exists, or cannot take labels).

    Not a ``ValueError``: napari's save call swallows those as "not a valid writer", and the
    user would never see why nothing was written."""


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """napari single-layer writer for Labels."""
    try:
        return _write_labels(path, data, meta)
    except NSEError as exc:
        raise SaveRefused(str(exc)) from None


def _write_labels(path: str, data: Any, meta: dict) -> list[str]:
    from .io import write_labels as write_file
    from .omezarr import labels_target

    if isinstance(data, list):  # multiscale: the full resolution is the data
        data = data[0]
    out = Path(path)
    axes, scale, units = _axes_scale_units(data, meta)
    if out.suffix.lower() != ".zarr" and out.parent.name != "labels":
        metadata = {"axes": axes, "scale": scale, "units": units}
        write_file(out, np.asarray(data), metadata=metadata)
        return [str(out)]
    target = labels_target(out)
    if target is None and out.suffix.lower() != ".zarr":
        raise NSEError(f"save labels as .zarr, .tif or .tiff, or into IMAGE.zarr/labels/NAME "
                       f"of an OME-Zarr image, not {out}")
    if target is not None and target[0] != out:
        _write_omezarr(target[0], target[1], data, axes, scale, units)  # unlisted until done
        out = target[0] / "labels" / target[1]
    else:
        from .io import atomic_path

        with atomic_path(out) as tmp:
            _write_omezarr(tmp, "labels", data, axes, scale, units)
    return [str(out)]


def _write_omezarr(store: Path, name: str, data: Any, axes: list[str], scale: list[float],
                   units: dict) -> None:
    import dask.array as da

    from .omezarr import create_omezarr_labels, finish_omezarr_labels

    arr = create_omezarr_labels(store, data.shape, _chunks(data), name=name, scale=scale,
                                axes=axes, units=units)
    da.store(da.from_array(data, chunks=arr.chunks).astype(np.uint32), arr, lock=False)
    finish_omezarr_labels(store, name, levels=_levels(data.shape))


def _chunks(data: Any) -> tuple[int, ...]:
    return tuple(min(s, 512 if i >= len(data.shape) - 2 else 1) or 1
                 for i, s in enumerate(data.shape))


def _levels(shape: tuple[int, ...]) -> int:
    """A pyramid down to about 512 px in y/x, so big labels display fast."""
    levels, size = 1, min(shape[-2:])
    while size >= 1024:
        size //= 2
        levels += 1
    return levels
