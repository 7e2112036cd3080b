"""OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3) in and out.

Reading picks one resolution level of a multiscale image and returns it lazily (a zarr array,
read box by box) with its axes and physical scale. Writing creates labels either inside an
existing OME-Zarr image (``labels/<name>``, the layout napari-ome-zarr, ome-zarr-py and other
NGFF viewers read) or as a new OME-Zarr whose root is the label image. The level-0 array is
returned empty so that a blockwise writer can fill it chunk by chunk; ``finish_omezarr_labels``
then builds the lower resolution levels, registers the labels in the image and marks them
complete. Until then ``omezarr_labels_complete`` is False and the image does not list them.

The metadata itself is written with the ``ome-zarr`` package's writer functions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NSEError

#: the attribute (in the label group, next to ``image-label``) that says the data is complete
COMPLETE_KEY = "nse-complete"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}


def _open_group(path: str | os.PathLike, mode: str = "r") -> Any:
    import zarr

    try:
        node = zarr.open(str(path), mode=mode)
    except Exception:  # noqa: BLE001 - zarr raises several types for "not a zarr store"
        return None
    return node if not hasattr(node, "shape") else None


def _ome_attrs(group: Any) -> dict:
    """The NGFF attributes of a group: under ``ome`` in 0.5 (zarr v3), top level in 0.4."""
    attrs = dict(group.attrs)
    return dict(attrs["ome"]) if isinstance(attrs.get("ome"), dict) else attrs


def _zarr_format(group: Any) -> int:
    return int(group.metadata.zarr_format)


def is_omezarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr group holding NGFF ``multiscales`` metadata."""
    if not Path(path).is_dir():
        return False
    group = _open_group(path)
    return group is not None and bool(_ome_attrs(group).get("multiscales"))


def _scale_of(transforms: Sequence[dict] | None, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for t in transforms or ():
        if t.get("type") == "scale" and "scale" in t:
            scale = scale * np.asarray(t["scale"], dtype=float)
        elif t.get("type") == "translation" and "translation" in t:
            translation = translation + np.asarray(t["translation"], dtype=float)
    return scale, translation


def _multiscale(group: Any, path: Path) -> dict:
    multiscales = _ome_attrs(group).get("multiscales")
    if not multiscales:
        raise NSEError(f"{path} is not an OME-Zarr image (no multiscales metadata)")
    return multiscales[0]


def read_omezarr(path: str | os.PathLike, level: int = 0) -> tuple[Any, dict]:
    """Open one resolution level of an OME-Zarr image.

    Returns
    -------
    array
        The level's zarr array (lazy: nothing is read until indexed).
    meta
        ``axes`` (names, e.g. ``["z", "y", "x"]``), ``units`` (axis name -> unit, where given),
        ``scale`` and ``translation`` (one float per axis, physical units of this level),
        ``n_levels``, ``level``, ``shapes`` (every level's shape), ``version`` (NGFF),
        ``name``, ``is_labels`` (the root is a label image) and ``labels`` (names listed in
        the image's ``labels`` group).
    """
    path = Path(path)
    group = _open_group(path)
    if group is None:
        raise NSEError(f"{path} is not a zarr group; cannot read it as OME-Zarr")
    ms = _multiscale(group, path)
    datasets = ms.get("datasets") or []
    if not datasets:
        raise NSEError(f"{path}: OME-Zarr multiscales metadata lists no datasets")
    if not 0 <= int(level) < len(datasets):
        raise NSEError(
            f"{path.name} has {len(datasets)} resolution level(s) (0..{len(datasets) - 1}); "
            f"level {level} does not exist"
        )
    try:
        arrays = [group[d["path"]] for d in datasets]
    except KeyError as exc:
        raise NSEError(f"{path}: OME-Zarr level {exc} is listed but missing") from None
    arr = arrays[int(level)]
    ndim = arr.ndim
    raw_axes = ms.get("axes") or list(_DEFAULT_AXES.get(ndim, "tczyx"[-ndim:]))
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in raw_axes]
    units = {a["name"]: a["unit"] for a in raw_axes if isinstance(a, dict) and a.get("unit")}
    scale, translation = _scale_of(datasets[int(level)].get("coordinateTransformations"), ndim)
    global_scale, global_shift = _scale_of(ms.get("coordinateTransformations"), ndim)
    attrs = _ome_attrs(group)
    meta = {
        "axes": axes,
        "units": units,
        "scale": [float(s) for s in scale * global_scale],
        "translation": [float(t) for t in translation * global_scale + global_shift],
        "n_levels": len(datasets),
        "level": int(level),
        "shapes": [tuple(a.shape) for a in arrays],
        "version": str(attrs.get("version") or ms.get("version") or ""),
        "name": ms.get("name"),
        "is_labels": "image-label" in attrs,
        "labels": list_labels(path),
    }
    return arr, meta


def labels_target(path: str | os.PathLike) -> tuple[Path, str] | None:
    """Where labels named by an output path go as OME-Zarr: ``IMAGE.zarr/labels/NAME`` (an
    existing OME-Zarr image) gives ``(IMAGE.zarr, NAME)``, ``X.ome.zarr`` gives
    ``(X.ome.zarr, "labels")``; anything else (a plain ``.zarr`` too) gives ``None``. A
    ``.zarr`` ending of NAME (napari appends one) is not part of the label's name."""
    path = Path(path)
    image = path.parent.parent
    if path.parent.name == "labels" and is_omezarr(image) and not _is_root_label(image):
        name = path.name[:-5] if path.name.lower().endswith(".zarr") else path.name
        return image, name or path.name
    if path.name.lower().endswith(".ome.zarr"):
        return path, "labels"
    return None


def omezarr_levels(path: str | os.PathLike) -> tuple[list[Any], dict]:
    """Every resolution level (largest first) and the level-0 metadata (for a multiscale layer)."""
    arr, meta = read_omezarr(path, 0)
    group = _open_group(path)
    ms = _multiscale(group, Path(path))
    return [group[d["path"]] for d in ms["datasets"]], meta


def list_labels(path: str | os.PathLike) -> list[str]:
    """Names of the complete label images registered in an OME-Zarr image's ``labels`` group."""
    group = _open_group(Path(path) / "labels")
    if group is None:
        return []
    return [str(n) for n in _ome_attrs(group).get("labels", [])]


def omezarr_labels_complete(path: str | os.PathLike, name: str = "labels") -> bool:
    """Whether labels created by :func:`create_omezarr_labels` were finished."""
    group = _label_group_if_any(Path(path), name)
    return group is not None and bool(_ome_attrs(group).get(COMPLETE_KEY, True))


def _is_root_label(path: Path) -> bool:
    root = _open_group(path)
    return root is not None and "image-label" in _ome_attrs(root)


def _label_group_if_any(path: Path, name: str, mode: str = "r") -> Any:
    root = _open_group(path, mode)
    if root is None:
        return None
    if "image-label" in _ome_attrs(root):
        return root
    return _open_group(path / "labels" / name, mode)


def _axes_for(ndim: int, axes: Sequence[str] | str | None,
              image_axes: list[str] | None) -> list[str]:
    if axes is None and image_axes is not None:
        axes = image_axes if len(image_axes) == ndim else [a for a in image_axes if a != "c"]
    if axes is None:
        if ndim not in _DEFAULT_AXES:
            raise NSEError(f"labels with {ndim} axes need explicit axes (2 to 5 axes of tczyx)")
        axes = _DEFAULT_AXES[ndim]
    axes = list(axes)
    if len(axes) != ndim:
        raise NSEError(f"axes {''.join(axes)} do not match labels with {ndim} axes")
    if any(a not in _AXIS_TYPES for a in axes) or len(set(axes)) != ndim:
        raise NSEError(f"axes must be distinct letters of tczyx, got {''.join(axes)}")
    return axes


def _axes_json(axes: list[str], units: dict[str, str]) -> list[dict]:
    out = []
    for a in axes:
        entry = {"name": a, "type": _AXIS_TYPES[a]}
        if units.get(a):
            entry["unit"] = units[a]
        out.append(entry)
    return out


def _write_multiscales(group: Any, fmt: Any, axes: list[str], units: dict[str, str],
                       scales: list[list[float]], name: str, paths: list[str]) -> None:
    from ome_zarr.writer import write_multiscales_metadata

    datasets = [
        {"path": p,
         "coordinateTransformations": [{"type": "scale", "scale": [float(v) for v in s]}]}
        for p, s in zip(paths, scales)
    ]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=_axes_json(axes, units), name=name)


def _set_attr(group: Any, key: str, value: Any) -> None:
    """Set one NGFF attribute: under ``ome`` on zarr v3 (NGFF 0.5), top level on zarr v2."""
    if _zarr_format(group) == 3:
        ome = dict(group.attrs.get("ome") or {})
        ome.setdefault("version", "0.5")
        ome[key] = value
        group.attrs["ome"] = ome
    else:
        group.attrs[key] = value


def _format(version: str) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    if version == "0.4":
        return FormatV04()
    if version == "0.5":
        return FormatV05()
    raise NSEError(f"OME-Zarr version must be 0.4 or 0.5, got {version!r}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def create_omezarr_labels(
    path: str | os.PathLike,
    shape: Sequence[int],
    chunks: Sequence[int] | None = None,
    *,
    name: str = "labels",
    scale: Sequence[float] | None = None,
    axes: Sequence[str] | str | None = None,
    units: dict[str, str] | None = None,
    dtype: Any = "uint32",
    overwrite: bool = False,
    version: str = "0.5",
) -> Any:
    """Create empty OME-Zarr labels and return the level-0 zarr array to fill chunk by chunk.

    If ``path`` is an OME-Zarr image, the labels go to ``path/labels/<name>`` in the image's own
    NGFF version; ``axes``, ``scale`` and ``units`` default to the image's (without its channel
    axis). Otherwise ``path`` becomes a new OME-Zarr (``version`` 0.5 = zarr v3, or 0.4 = zarr
    v2) whose root is the label image. An existing label of that name, or an existing file at a
    new store's path, is refused unless ``overwrite``.

    The labels are marked incomplete (and are not yet listed in the image's ``labels`` group)
    until :func:`finish_omezarr_labels` is called.
    """
    import zarr

    path = Path(path)
    shape = tuple(int(s) for s in shape)
    if not name or "/" in name or name in (".", ".."):
        raise NSEError(f"label name must be a plain name, got {name!r}")
    image = _open_group(path) if path.is_dir() else None
    image_attrs = _ome_attrs(image) if image is not None else {}
    into_image = bool(image_attrs.get("multiscales")) and "image-label" not in image_attrs
    image_axes, image_scale, image_units = None, None, {}
    if into_image:
        _, image_meta = read_omezarr(path, 0)
        image_axes, image_units = image_meta["axes"], image_meta["units"]
        image_scale = dict(zip(image_meta["axes"], image_meta["scale"]))
        fmt = _format("0.4" if _zarr_format(image) == 2 else "0.5")
        target = path / "labels" / name
        if target.exists():
            if not overwrite:
                raise NSEError(f"{path} already has labels {name!r}; "
                               "refusing to overwrite them (pass --overwrite)")
            _unregister(path, name)
            _remove(target)
    else:
        if path.exists():
            if not overwrite:
                raise NSEError(f"{path} exists; refusing to overwrite it (pass --overwrite)")
            _remove(path)
        if not path.parent.exists():
            raise NSEError(f"output folder {path.parent} does not exist")
        fmt = _format(version)
        target = path
    axes = _axes_for(len(shape), axes, image_axes)
    if scale is None:
        scale = [image_scale.get(a, 1.0) if image_scale else 1.0 for a in axes]
    scale = [float(s) for s in scale]
    if len(scale) != len(shape) or any(not np.isfinite(s) or s <= 0 for s in scale):
        raise NSEError(f"scale needs {len(shape)} positive numbers, got {scale}")
    if units is None:
        units = {a: u for a, u in image_units.items() if a in axes}

    if into_image:
        labels_root = zarr.open_group(str(path / "labels"), mode="a", zarr_format=fmt.zarr_format)
        if "labels" not in _ome_attrs(labels_root):
            _set_attr(labels_root, "labels", [])
        group = labels_root.create_group(name)
    else:
        group = zarr.open_group(str(target), mode="w", zarr_format=fmt.zarr_format)
    kwargs: dict[str, Any] = {}
    if fmt.zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    arr = group.create_array(
        "0", shape=shape, dtype=np.dtype(dtype), fill_value=0,
        chunks=tuple(int(c) for c in chunks) if chunks is not None else "auto",
        dimension_names=axes if fmt.zarr_format == 3 else None, **kwargs,
    )
    _write_multiscales(group, fmt, axes, units, [scale], name, ["0"])
    label_meta: dict[str, Any] = {"version": fmt.version}
    if into_image:
        label_meta["source"] = {"image": "../../"}
    _set_attr(group, "image-label", label_meta)
    _set_attr(group, COMPLETE_KEY, False)
    return arr


def _unregister(path: Path, name: str) -> None:
    group = _open_group(path / "labels", mode="a")
    if group is None:
        return
    names = [n for n in _ome_attrs(group).get("labels", []) if n != name]
    _set_attr(group, "labels", names)


def finish_omezarr_labels(path: str | os.PathLike, name: str = "labels", levels: int = 1,
                          factor: int = 2) -> None:
    """Mark labels complete: build ``levels - 1`` lower resolutions (nearest, every ``factor``-th
    pixel of the spatial axes, computed chunk by chunk with dask), write their multiscales
    entries, and list the labels in the image's ``labels`` group."""
    import dask.array as da
    import zarr

    path = Path(path)
    group = _label_group_if_any(path, name, mode="r+")
    standalone = _is_root_label(path)
    if group is None or "image-label" not in _ome_attrs(group):
        raise NSEError(f"{path} has no OME-Zarr labels {name!r} to finish")
    attrs = _ome_attrs(group)
    ms = attrs["multiscales"][0]
    axes = [a["name"] for a in ms["axes"]]
    units = {a["name"]: a["unit"] for a in ms["axes"] if a.get("unit")}
    base_scale, _ = _scale_of(ms["datasets"][0].get("coordinateTransformations"), len(axes))
    fmt = _format("0.4" if _zarr_format(group) == 2 else "0.5")
    level0 = group["0"]
    step = [factor if _AXIS_TYPES[a] == "space" and a != "z" else 1 for a in axes]
    paths, scales = ["0"], [list(base_scale)]
    previous = da.from_zarr(level0)
    for lev in range(1, int(levels)):
        if min(s for s, st in zip(previous.shape, step) if st > 1) < 2 * factor:
            break
        down = previous[tuple(slice(None, None, st) for st in step)]
        chunks = tuple(min(c, s) for c, s in zip(level0.chunks, down.shape))
        down = down.rechunk(chunks)
        if str(lev) in group:
            del group[str(lev)]
        kwargs: dict[str, Any] = {}
        if fmt.zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        target = group.create_array(
            str(lev), shape=down.shape, dtype=level0.dtype, chunks=chunks, fill_value=0,
            dimension_names=axes if fmt.zarr_format == 3 else None, **kwargs,
        )
        da.store(down, target, lock=False)
        previous = da.from_zarr(target)
        paths.append(str(lev))
        scales.append([s * st ** lev for s, st in zip(base_scale, step)])
    _write_multiscales(group, fmt, axes, units, scales, ms.get("name") or name, paths)
    _set_attr(group, COMPLETE_KEY, True)
    if not standalone:  # inside an image: register under labels/
        labels_root = zarr.open_group(str(path / "labels"), mode="r+")
        names = [n for n in _ome_attrs(labels_root).get("labels", []) if n != name] + [name]
        _set_attr(labels_root, "labels", names)


def write_omezarr_labels(
    path: str | os.PathLike,
    labels: Any,
    *,
    name: str = "labels",
    scale: Sequence[float] | None = None,
    axes: Sequence[str] | str | None = None,
    units: dict[str, str] | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    levels: int = 1,
    version: str = "0.5",
) -> Path:
    """Write a whole label array (uint32, 0 = background) as OME-Zarr labels; see
    :func:`create_omezarr_labels` for where they go."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "biu":
        raise NSEError(f"labels must be integers, got dtype {labels.dtype}")
    path = Path(path)

    def write(target: Path) -> None:
        arr = create_omezarr_labels(
            target, labels.shape, chunks, name=name, scale=scale, axes=axes, units=units,
            overwrite=overwrite, version=version,
        )
        arr[...] = labels.astype(np.uint32, copy=False)
        finish_omezarr_labels(target, name, levels=levels)

    if is_omezarr(path) and not _is_root_label(path):
        write(path)  # into an image: incomplete labels are never listed, see finish_omezarr_labels
    else:
        from .io import atomic_path

        with atomic_path(path, overwrite) as tmp:
            write(tmp)
    return path
