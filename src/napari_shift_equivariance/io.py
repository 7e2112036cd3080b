"""Reading and writing images (tif, npy, zarr) without ever leaving a half-written output.

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

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
PAD_MODES = ("reflect", "symmetric", "edge", "zero")


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in IMAGE_SUFFIXES:
        raise NSEError(
            f"{path.name}: unsupported file type {s or '(none)'}; use .tif, .tiff, .npy or .zarr"
        )
    return s


def read_image(path: str | os.PathLike, lazy: bool = True) -> Any:
    """Open an image. ``.zarr`` stays lazy (a zarr array) unless ``lazy=False``; ``.npy`` is
    memory-mapped; ``.tif`` is read into memory."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise NSEError(f"image {path} does not exist")
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            arr = _open_zarr(path)
            if not lazy:
                arr = arr[...]
    except NSEError:
        raise
    except Exception as exc:  # noqa: BLE001 - readers raise many types on corrupt files
        message = f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        raise NSEError(message) from None
    return arr


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
    suffix = _suffix(path)
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


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Labels are written as uint32, 0 = background."""
    return write_array(path, np.asarray(labels).astype(np.uint32, copy=False), overwrite)
