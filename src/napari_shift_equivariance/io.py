"""Reading and writing images without ever leaving a half-written output.

Which reader opens which file (tif, npy, zarr, OME-Zarr, czi/nd2/lif/OME-TIFF) is decided in
:mod:`.formats`; OME-Zarr labels are written by :mod:`.omezarr`.

Outputs are written to ``<name>.partial`` next to the target and renamed when complete, so an
interrupted run leaves no file that looks finished, and an existing file is never replaced
unless the caller asked to overwrite it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NSEError
from .geometry import Roi

#: what ``read_image`` opens (czi/nd2/lif and OME-TIFF metadata need the ``formats`` extra)
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".czi", ".nd2", ".lif")
#: what ``write_array``/``write_labels`` write
OUTPUT_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
PAD_MODES = ("reflect", "symmetric", "edge", "zero")


def _suffix(path: Path, output: bool = False) -> str:
    s = path.suffix.lower()
    if not output and not s and any(p.lower().endswith(".zarr") for p in path.parts[:-1]):
        s = ".zarr"  # an array inside a zarr group: g.zarr/NAME
    allowed = OUTPUT_SUFFIXES if output else IMAGE_SUFFIXES
    if s not in allowed:
        names = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        what = "output" if output else "file"
        raise NSEError(f"{path.name}: unsupported {what} type {s or '(none)'}; use {names}")
    return s


def read_image(path: str | os.PathLike, lazy: bool = True, *, level: int = 0,
               scene: int | str | None = None, channel: int | str | None = None) -> Any:
    """Open an image. ``.zarr`` (plain or OME-Zarr, resolution ``level``) stays lazy (a zarr
    array) unless ``lazy=False``; ``.npy`` is memory-mapped; ``.tif`` is memory-mapped when
    uncompressed and contiguous, else read into memory; czi/nd2/lif/OME-TIFF (the ``formats``
    extra) are lazy arrays of one ``scene``.
    ``channel`` (index or name) keeps one channel. For the axes and physical pixel size use
    :func:`formats.image_metadata` or :func:`formats.open_image`."""
    from .formats import open_image

    return open_image(path, lazy=lazy, level=level, scene=scene, channel=channel)[0]


def _open_zarr(path: Path) -> Any:
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    arrays = list(node.array_keys())
    if len(arrays) != 1:
        raise NSEError(
            f"{path.name} is a zarr group with {len(arrays)} arrays; name one as {path.name}/NAME"
        )
    return node[arrays[0]]


def check_image(image: Any, name: str = "image") -> None:
    """Reject empty, non-numeric or complex arrays with one clear line."""
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "biuf":
        raise NSEError(f"{name} has dtype {dtype}; a numeric (integer or float) image is needed")
    if any(s == 0 for s in image.shape) or len(image.shape) == 0:
        raise NSEError(f"{name} is empty (shape {tuple(image.shape)})")


def check_finite(block: np.ndarray, name: str = "image") -> None:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise NSEError(f"{name} contains NaN or infinite values; fix or mask them first")


def _map_indices(start: int, stop: int, n: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Image index for each coordinate in ``[start, stop)`` under a padding mode, plus a mask of
    coordinates inside the image (``zero`` mode only)."""
    idx = np.arange(start, stop)
    inside = None
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(idx), None
        period = 2 * (n - 1)
        idx = np.abs(idx) % period
        idx = np.where(idx >= n, period - idx, idx)
    elif mode == "symmetric":
        period = 2 * n
        idx = idx % period
        idx = np.where(idx >= n, period - 1 - idx, idx)
    elif mode in ("edge", "zero"):
        if mode == "zero":
            inside = (idx >= 0) & (idx < n)
        idx = np.clip(idx, 0, n - 1)
    else:
        raise NSEError(f"padding must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    return idx, inside


def read_box(array: Any, roi: Roi, pad: str = "reflect", fill: float = 0.0,
             lead: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``roi`` from the last ``roi.dims`` axes of ``array`` (at leading index ``lead``),
    padding outside the image. Reads only the hull of the pixels needed, so lazy arrays (zarr,
    dask, memmap) load one box per tile.

    Returns the block and, for ``pad="zero"``, the mask of pixels inside the image (the caller
    fills the rest after normalisation), else ``None``.
    """
    spatial = array.shape[len(array.shape) - roi.dims:]
    maps = [_map_indices(b, e, n, pad) for b, e, n in zip(roi.begin, roi.end, spatial)]
    lo = [int(m[0].min()) for m in maps]
    hi = [int(m[0].max()) + 1 for m in maps]
    hull = np.asarray(array[lead + tuple(slice(a, b) for a, b in zip(lo, hi))])
    block = hull[np.ix_(*[m[0] - a for m, a in zip(maps, lo)])]
    inside = None
    if pad == "zero":
        inside = np.ones(block.shape, dtype=bool)
        for axis, (_, m) in enumerate(maps):
            shape = [1] * block.ndim
            shape[axis] = -1
            inside &= m.reshape(shape)
    return block, inside


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing output unless ``overwrite``; the parent folder must exist."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise NSEError(f"{path} exists; refusing to overwrite it (pass --overwrite)")
    if not path.parent.exists():
        raise NSEError(f"output folder {path.parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write to; rename it to ``path`` only if the block succeeds."""
    path = check_output_path(path, overwrite)
    tmp = path.with_name(path.name + ".partial")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.exists():
        _remove(path)
    os.replace(tmp, path)


def write_array(path: str | os.PathLike, data: np.ndarray, overwrite: bool = False,
                chunks: Sequence[int] | None = None) -> Path:
    """Write an array as ``.tif``, ``.npy`` or ``.zarr``, atomically."""
    path = Path(path)
    suffix = _suffix(path, output=True)
    with atomic_path(path, overwrite) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, data)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, data, compression="zlib")
        else:
            z = create_zarr(tmp, data.shape, data.dtype, chunks)
            z[...] = data
    return path


def create_zarr(path: str | os.PathLike, shape: Sequence[int], dtype: Any,
                chunks: Sequence[int] | None = None) -> Any:
    import zarr

    return zarr.open_array(
        str(path), mode="w", shape=tuple(shape), dtype=dtype,
        chunks=tuple(chunks) if chunks is not None else True,
    )


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False, *,
                 metadata: dict | None = None) -> Path:
    """Labels are written as uint32, 0 = background.

    ``metadata`` (from :func:`formats.image_metadata` of the image) carries the axes and the
    physical pixel size on: into OME-TIFF metadata for ``.tif``. A path ending ``.ome.zarr``
    becomes a new OME-Zarr label image, and ``IMAGE.zarr/labels/NAME`` adds labels ``NAME`` to
    the OME-Zarr image ``IMAGE.zarr``; a plain ``.zarr`` stays a plain zarr array.
    """
    from .omezarr import labels_target, write_omezarr_labels

    path = Path(path)
    labels = np.asarray(labels).astype(np.uint32, copy=False)
    target = labels_target(path)
    axes, scale, units = _labels_axes(metadata, labels.ndim)
    if target is not None:
        store, name = target
        write_omezarr_labels(store, labels, name=name, axes=axes, scale=scale, units=units,
                             overwrite=overwrite)
        return path
    if metadata is not None and _suffix(path, output=True) in (".tif", ".tiff"):
        return _write_ome_tif(path, labels, axes, scale, units, overwrite)
    return write_array(path, labels, overwrite)


def _labels_axes(metadata: dict | None, ndim: int) -> tuple[Any, Any, Any]:
    """The image's axes/scale/units for labels of ``ndim`` axes (the channel axis dropped)."""
    if not metadata or not metadata.get("axes"):
        scale = list((metadata or {}).get("scale") or [])
        return None, (scale if len(scale) == ndim else None), None
    axes = list(metadata["axes"])
    scale = list(metadata.get("scale") or [1.0] * len(axes))
    if len(axes) != ndim and "c" in axes:
        i = axes.index("c")
        axes, scale = axes[:i] + axes[i + 1:], scale[:i] + scale[i + 1:]
    if len(axes) != ndim:
        return None, None, None
    units = {a: u for a, u in (metadata.get("units") or {}).items() if a in axes}
    return axes, scale, units


def _write_ome_tif(path: Path, labels: np.ndarray, axes: list[str] | None, scale: Any,
                   units: dict | None, overwrite: bool) -> Path:
    import tifffile

    axes = axes or list({2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}.get(labels.ndim, "")) or None
    meta: dict[str, Any] = {}
    if axes is not None:
        meta["axes"] = "".join(axes).upper()
        for a, s in zip(axes, scale or [1.0] * len(axes)):
            if a in "zyx":
                meta[f"PhysicalSize{a.upper()}"] = float(s)
                unit = (units or {}).get(a)
                if unit:
                    meta[f"PhysicalSize{a.upper()}Unit"] = _OME_UNITS.get(unit, unit)
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", ome=True, metadata=meta or None)
    return path


_OME_UNITS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm"}
