"""Which reader opens a file, and the image's axes and physical pixel size.

``.npy``, plain ``.tif`` and plain ``.zarr`` are read directly; OME-Zarr through
:mod:`.omezarr`; czi, nd2, lif and OME-TIFF through ``bioio`` and its reader plugins, which
come with the optional extra ``pip install napari-shift-equivariance[formats]``. Without the
OME-TIFF plugin an OME-TIFF is still read as a plain tif (pixels, not its metadata).

Every reader returns the pixels (lazy where the format allows) and one metadata dict:
``axes`` (letters of ``tczyx``, or ``None`` when the file does not say), ``scale`` (physical
size per axis, 1.0 where unknown), ``units`` (axis -> unit), ``format``, ``scenes`` and
``scene``, ``channel_names``, ``n_levels`` and ``level``. Labels written from the image carry
``axes``/``scale``/``units`` on (see :func:`io.write_labels`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NSEError

EXTRA = "pip install napari-shift-equivariance[formats]"
#: format -> (python module, distribution) of the bioio reader plugin
BIOIO_READERS = {
    "czi": ("bioio_czi", "bioio-czi"),
    "nd2": ("bioio_nd2", "bioio-nd2"),
    "lif": ("bioio_lif", "bioio-lif"),
    "ome-tiff": ("bioio_ome_tiff", "bioio-ome-tiff"),
}
MICROSCOPY_SUFFIXES = (".czi", ".nd2", ".lif")
_SPATIAL_UNIT = "micrometer"  # bioio reports physical pixel sizes in micrometres


def format_of(path: str | os.PathLike) -> str:
    """``npy``, ``tif``, ``ome-tiff``, ``zarr``, ``ome-zarr``, ``czi``, ``nd2`` or ``lif``."""
    from .io import _suffix

    path = Path(path)
    suffix = _suffix(path)
    if suffix in MICROSCOPY_SUFFIXES:
        return suffix[1:]
    if suffix in (".tif", ".tiff"):
        return "ome-tiff" if _is_ome_tiff(path) else "tif"
    if suffix == ".zarr":
        from .omezarr import is_omezarr

        return "ome-zarr" if is_omezarr(path) else "zarr"
    return "npy"


def _is_ome_tiff(path: Path) -> bool:
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return True
    import tifffile

    try:
        if _no_first_page(path):
            return False
        with tifffile.TiffFile(path) as tf:
            return bool(tf.is_ome)
    except Exception:  # noqa: BLE001 - a corrupt tif is reported when it is read
        return False


def _meta(axes: list[str] | None, ndim: int, fmt: str, **kw: Any) -> dict:
    meta = {"axes": axes, "scale": [1.0] * ndim, "units": {}, "format": fmt, "scenes": [],
            "scene": None, "channel_names": [], "n_levels": 1, "level": 0}
    meta.update(kw)
    return meta


def bioio_reader(path: str | os.PathLike, fmt: str) -> Any:
    """The bioio ``Reader`` class for ``fmt``, or a one-line error naming the extra."""
    import importlib

    module, dist = BIOIO_READERS[fmt]
    name = Path(path).name
    try:
        importlib.import_module("bioio")
        plugin = importlib.import_module(module)
    except ImportError:
        raise NSEError(
            f"reading {name} ({fmt}) needs the {dist} reader, which is not installed: {EXTRA}"
        ) from None
    return plugin.Reader


#: warnings that reader plugins raise about their own dependencies, never about the file
#: (bioio-ome-tiff passes ome-types a ``parser`` argument that ome-types 0.4+ ignores)
READER_NOISE = (r"As of version 0\.4\.0, the parser argument is ignored",)


@contextlib.contextmanager
def _quiet_readers() -> Iterator[None]:
    """Hide :data:`READER_NOISE` while a reader plugin parses a file (restored after)."""
    with warnings.catch_warnings():
        for message in READER_NOISE:
            warnings.filterwarnings("ignore", message=message)
        yield


def _bioimage(path: Path, fmt: str) -> Any:
    from bioio import BioImage

    return BioImage(path, reader=bioio_reader(path, fmt))


def _pick(kind: str, choice: int | str, options: list[str], name: str) -> int:
    if isinstance(choice, str) and not choice.lstrip("-").isdigit():
        if choice not in options:
            raise NSEError(f"{name} has no {kind} {choice!r}; it has {', '.join(options)}")
        return options.index(choice)
    index = int(choice)
    if not 0 <= index < len(options):
        raise NSEError(
            f"{name} has {len(options)} {kind}(s) (0..{len(options) - 1}); {kind} {index} "
            "does not exist"
        )
    return index


def read_bioimage(path: str | os.PathLike, scene: int | str | None = None,
                  channel: int | str | None = None, level: int = 0,
                  fmt: str | None = None) -> tuple[Any, dict]:
    """Read one scene (and optionally one channel) of a czi/nd2/lif/OME-TIFF file lazily.

    Axes come in bioio's order (``TCZYX``, plus any extra axis of the reader) with every
    length-1 axis except Y and X dropped; a chosen channel drops the C axis.
    """
    with _quiet_readers():
        return _read_bioimage(Path(path), scene, channel, level, fmt or format_of(path))


def _read_bioimage(path: Path, scene: int | str | None, channel: int | str | None,
                   level: int, fmt: str) -> tuple[Any, dict]:
    img = _bioimage(path, fmt)
    scenes = [str(s) for s in img.scenes]
    if scene is not None:
        img.set_scene(_pick("scene", scene, scenes, path.name))
    levels = list(getattr(img, "resolution_levels", (0,)) or (0,))
    if level:
        img.set_resolution_level(_pick("resolution level", level,
                                       [str(v) for v in levels], path.name))
    order = str(img.dims.order)
    names = [str(c) for c in (img.channel_names or [])]
    kwargs = {}
    if channel is not None:
        if "C" not in order:
            raise NSEError(f"{path.name} has no channel axis to choose from")
        n_channels = int(img.dims.C)
        kwargs["C"] = _pick("channel", channel, names or [str(i) for i in range(n_channels)],
                            path.name)
        order = order.replace("C", "")
    data = img.get_image_dask_data(order, **kwargs)
    keep = [i for i, a in enumerate(order) if data.shape[i] > 1 or a in "YX"]
    data = data[tuple(slice(None) if i in keep else 0 for i in range(len(order)))]
    axes = [order[i].lower() for i in keep]
    sizes = img.physical_pixel_sizes
    physical = {"z": sizes.Z, "y": sizes.Y, "x": sizes.X}
    scale = [float(physical[a]) if physical.get(a) else 1.0 for a in axes]
    units = {a: _SPATIAL_UNIT for a in axes if physical.get(a)}
    meta = _meta(axes, len(axes), fmt, scale=scale, units=units, scenes=scenes,
                 scene=str(img.current_scene), n_levels=len(levels), level=int(level),
                 channel_names=[names[kwargs["C"]]] if "C" in kwargs and names else names)
    return data, meta


class LazyImage:
    """A dask array that reads like a zarr array: indexing returns numpy (box by box)."""

    def __init__(self, data: Any) -> None:
        self.dask = data

    shape = property(lambda self: tuple(self.dask.shape))
    dtype = property(lambda self: self.dask.dtype)
    ndim = property(lambda self: self.dask.ndim)
    size = property(lambda self: int(self.dask.size))
    chunks = property(lambda self: tuple(c[0] for c in self.dask.chunks))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.dask[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.dask)
        return out.astype(dtype, copy=False) if dtype is not None else out

    def __repr__(self) -> str:
        return f"LazyImage(shape={self.shape}, dtype={self.dtype})"


def _tif_meta(path: Path, shape: tuple[int, ...]) -> dict:
    """Axes and pixel size of a plain tif: tifffile's series axes, ImageJ spacing/resolution."""
    import tifffile

    axes, scale, units = None, [1.0] * len(shape), {}
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0] if tf.series else None
        if series is not None and len(series.axes) == len(shape):
            letters = series.axes.lower().replace("q", "").replace("i", "z")
            if len(letters) == len(shape) and set(letters) <= set("tczyx"):
                axes = list(letters)
        page = tf.pages[0]
        ij = tf.imagej_metadata or {}
        res = {t: page.tags[t].value for t in ("XResolution", "YResolution") if t in page.tags}
    if axes is not None:
        size = {}
        for axis, tag in (("x", "XResolution"), ("y", "YResolution")):
            num, den = res.get(tag, (1, 1))
            if num and den and (num, den) != (1, 1) and ij:
                size[axis] = den / num
        if ij.get("spacing"):
            size["z"] = float(ij["spacing"])
        unit = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer",
                "nm": "nanometer", "mm": "millimeter"}.get(str(ij.get("unit", "")))
        for i, a in enumerate(axes):
            if a in size:
                scale[i] = float(size[a])
                if unit:
                    units[a] = unit
    return _meta(axes, len(shape), "tif", scale=scale, units=units)


def _no_first_page(path: Path) -> bool:
    """A TIFF header whose first-page offset is 0: no image (tifffile would log a warning)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 8:
        return False  # not a TIFF header at all: tifffile says so
    version = int.from_bytes(head[2:4], "little" if order == "<" else "big")
    if version == 42:
        offset = head[4:8]
    elif version == 43 and len(head) == 16:
        offset = head[8:16]
    else:
        return False
    return int.from_bytes(offset, "little" if order == "<" else "big") == 0


def _read_tif(path: Path, lazy: bool = False) -> np.ndarray:
    """A plain tif's pixels; ``lazy``: memory-mapped when the file allows it (uncompressed,
    contiguous: tiles are then read from disk one box at a time), else read whole."""
    import tifffile

    if _no_first_page(path):
        raise NSEError(f"{path} is not a readable TIFF: it holds no image (corrupt or "
                       "truncated file?)")
    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.pages or not tf.series:
                raise NSEError(f"{path} is not a readable TIFF: it holds no image (corrupt or "
                               "truncated file?)")
            shape = tuple(tf.series[0].shape)
            arr = None
            if lazy and tf.series[0].dataoffset is not None:
                arr = _tif_memmap(path, shape)
            if arr is None:
                arr = tf.asarray()
    except NSEError:
        raise
    except (tifffile.TiffFileError, EOFError, ValueError, OSError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NSEError(f"{path} is corrupt or not a TIFF file ({detail})") from None
    if arr.size == 0:
        raise NSEError(f"{path} is not a readable TIFF: it holds no pixels (corrupt file?)")
    return arr


def _tif_memmap(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    import tifffile

    try:
        arr = tifffile.memmap(path, mode="r")
    except (ValueError, OSError):
        return None
    return arr if tuple(arr.shape) == shape else None


def _read_npy(path: Path, lazy: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise NSEError(f"{path} holds Python objects, not a numeric image array") from None
        raise


def _with_channel(arr: Any, meta: dict, channel: int | str | None, name: str) -> tuple[Any, dict]:
    if channel is None:
        return arr, meta
    axes = meta.get("axes")
    if not axes or "c" not in axes:
        raise NSEError(f"{name} has no known channel axis to choose a channel from")
    ax = axes.index("c")
    index = _pick("channel", channel, meta.get("channel_names") or
                  [str(i) for i in range(arr.shape[ax])], name)
    import dask.array as da

    out = da.from_array(arr, chunks=_chunks(arr))[(slice(None),) * ax + (index,)]
    meta = dict(meta, axes=axes[:ax] + axes[ax + 1:],
                scale=meta["scale"][:ax] + meta["scale"][ax + 1:])
    return (np.asarray(out) if isinstance(arr, np.ndarray) else LazyImage(out)), meta


def _chunks(arr: Any) -> Any:
    chunks = getattr(arr, "chunks", None)
    return tuple(chunks) if isinstance(chunks, tuple) and chunks else "auto"


def open_image(path: str | os.PathLike, *, lazy: bool = True, level: int = 0,
               scene: int | str | None = None,
               channel: int | str | None = None) -> tuple[Any, dict]:
    """Open any supported image: ``(pixels, metadata)``.

    ``.zarr``/OME-Zarr stay lazy zarr arrays, ``.npy`` is memory-mapped and czi/nd2/lif/
    OME-TIFF are :class:`LazyImage` (dask underneath), unless ``lazy=False``; a plain tif
    is read into memory.
    ``level`` picks an OME-Zarr (or bioio) resolution level; ``scene`` and ``channel`` (an
    index or a name) pick a scene of a czi/nd2/lif/OME-TIFF file and one channel.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise NSEError(f"image {path} does not exist")
    if scene is not None and fmt not in BIOIO_READERS:
        raise NSEError(f"{path.name} is a {fmt} file, which has no scenes (czi, nd2, lif and "
                       "OME-TIFF files do)")
    if level and fmt not in BIOIO_READERS and fmt != "ome-zarr":
        raise NSEError(f"{path.name} is a {fmt} file with one resolution level; level {level} "
                       "does not exist")
    if fmt == "ome-tiff" and scene is None and channel is None and level == 0:
        try:
            bioio_reader(path, fmt)
        except NSEError:
            fmt = "tif"  # pixels through tifffile; OME metadata needs the extra
    try:
        if fmt in BIOIO_READERS:
            data, meta = read_bioimage(path, scene, channel, level, fmt)
            channel = None
            arr = LazyImage(data) if lazy else np.asarray(data.compute())
        elif fmt == "ome-zarr":
            from .omezarr import read_omezarr

            arr, ome = read_omezarr(path, level)
            meta = _meta(ome["axes"], arr.ndim, fmt, scale=ome["scale"], units=ome["units"],
                         n_levels=ome["n_levels"], level=ome["level"])
        elif fmt == "npy":
            arr = _read_npy(path, lazy)
            meta = _meta(None, arr.ndim, fmt)
        elif fmt == "tif":
            arr = _read_tif(path, lazy)
            meta = _tif_meta(path, arr.shape)
        else:
            from .io import _open_zarr

            arr = _open_zarr(path)
            meta = _meta(None, arr.ndim, fmt)
        arr, meta = _with_channel(arr, meta, channel, path.name)
        if not lazy and not isinstance(arr, np.ndarray):
            arr = np.asarray(arr[...])
    except NSEError:
        raise
    except Exception as exc:  # noqa: BLE001 - readers raise many types on corrupt files
        message = f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        raise NSEError(message) from None
    dtype = np.dtype(arr.dtype)
    if dtype.kind in "USO":
        what = {"U": "text", "S": "bytes", "O": "Python objects"}[dtype.kind]
        raise NSEError(f"{path} holds {what} (dtype {dtype}), not a numeric image")
    return arr, meta


def image_metadata(path: str | os.PathLike, *, level: int = 0, scene: int | str | None = None,
                   channel: int | str | None = None) -> dict:
    """The metadata dict of :func:`open_image` (axes, scale, units, ...), pixels not read."""
    path = Path(path)
    if channel is None and scene is None and not level and path.is_file() \
            and format_of(path) == "tif":
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                shape = tuple(tf.series[0].shape) if tf.series else ()
        except Exception:  # noqa: BLE001 - open_image below says what is wrong with the file
            shape = ()
        if shape and all(shape):
            return _tif_meta(path, shape)
    return open_image(path, lazy=True, level=level, scene=scene, channel=channel)[1]


def spatial_scale(meta: dict | None, ndim: int) -> tuple[float, ...]:
    """The physical pixel size of the last ``ndim`` axes (1.0 where unknown)."""
    scale = list((meta or {}).get("scale") or [])
    scale = [1.0] * max(0, ndim - len(scale)) + scale
    return tuple(float(s) for s in scale[len(scale) - ndim:])
