"""The blockwise output store: never complete-looking before it is, resumable after a kill.

A new output is built at ``OUT.partial`` (a zarr array, or an OME-Zarr whose root is the label
image) and renamed to ``OUT`` when the last block is written. Labels written into an existing
OME-Zarr image (``IMAGE/labels/<name>``) cannot be renamed into place; they carry
``nse-complete: false`` and are not listed in the image until done. Either way the work folder
``.nse-work`` inside the store holds the scratch arrays and one done marker per finished task
(written atomically after the task's chunks), so ``resume=True`` skips finished tasks. A
manifest (image shape, model and options) guards against resuming with other settings.
"""

from __future__ import annotations

import errno
import io as _io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NSEError

WORK = ".nse-work"
MANIFEST = "manifest.json"
ATTR = "nse-blockwise"


def os_error(exc: OSError, path: Path | str) -> NSEError:
    """One clear line for a failed write."""
    if exc.errno == errno.ENOSPC:
        return NSEError(f"out of disk space writing {path}")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EROFS):
        return NSEError(f"cannot write {path}: permission denied or read-only")
    return NSEError(f"cannot write {path}: {exc.strerror or exc}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def is_omezarr_target(path: Path) -> bool:
    from ..omezarr import is_omezarr

    return path.name.lower().endswith(".ome.zarr") or is_omezarr(path)


@dataclass(frozen=True)
class StorePaths:
    """Where everything lives; picklable, so tasks on other machines open the same store
    (``out`` must be on a file system every worker sees)."""

    final: str        # what the user asked for
    root: str         # the store being written (``final`` + ``.partial``, or ``final``)
    array: str        # the output zarr array
    work: str         # scratch folder
    omezarr: str | None = None  # label name when writing OME-Zarr labels
    rename: bool = True

    def open_array(self, mode: str = "r+") -> Any:
        import zarr

        return zarr.open_array(self.array, mode=mode)

    def scratch(self, name: str) -> Any:
        import zarr

        return zarr.open_array(str(Path(self.work) / name), mode="r+")

    def marker(self, phase: str, index: int) -> Path:
        return Path(self.work) / phase / f"{index}.npz"

    def done(self, phase: str, index: int) -> bool:
        return self.marker(phase, index).exists()

    def mark(self, phase: str, index: int, **arrays: Any) -> None:
        """Record a finished task (after its chunks are written): write then rename."""
        path = self.marker(phase, index)
        buf = _io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, path)
        except OSError as exc:
            raise os_error(exc, path) from None

    def load(self, phase: str, index: int) -> dict[str, np.ndarray]:
        with np.load(self.marker(phase, index), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}


def _attrs(paths: StorePaths) -> dict | None:
    """The output array's attributes, ``None`` when there is no readable array."""
    try:
        return dict(paths.open_array("r").attrs)
    except Exception:  # noqa: BLE001 - anything unreadable is no output of ours
        return None


def _diff(manifest: dict, old: dict | None) -> list[str]:
    old = old or {}
    return [k for k in manifest if old.get(k) != manifest[k]]


def open_store(
    out: str | os.PathLike,
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: str,
    manifest: dict,
    scratch: dict[str, tuple[Sequence[int], Sequence[int], str]],
    resume: bool = False,
    overwrite: bool = False,
    omezarr_name: str = "labels",
    omezarr_axes: Sequence[str] | str | None = None,
) -> tuple[StorePaths, bool]:
    """Create (or, with ``resume``, reopen) the store for ``out``.

    Returns the paths and whether the output is already complete (nothing left to do).
    ``scratch`` names the work arrays: ``name -> (shape, chunks, dtype)``.
    """
    final = Path(out)
    if not final.parent.exists():
        raise NSEError(f"output folder {final.parent} does not exist")
    ome = is_omezarr_target(final)
    name = omezarr_name if ome else None
    if ome and final.is_dir() and _is_image(final):
        label = final / "labels" / omezarr_name
        paths = StorePaths(str(final), str(final), str(label / "0"), str(label / WORK), name,
                           rename=False)
        existing = label.exists()
    else:
        root = final.with_name(final.name + ".partial")
        paths = StorePaths(str(final), str(root), str(root / "0") if ome else str(root),
                           str(root / WORK), name)
        if final.exists() and not overwrite:
            done = StorePaths(str(final), str(final), str(final / "0") if ome else str(final),
                              str(final / WORK), name)
            attrs = _attrs(done)
            if not resume or not attrs or not attrs.get("complete"):
                raise NSEError(f"{final} exists; refusing to overwrite it (pass --overwrite)")
            if _diff(manifest, attrs.get(ATTR)):
                raise NSEError(f"{final} is complete but was made with other "
                               f"{', '.join(_diff(manifest, attrs.get(ATTR)))}; "
                               f"pass --overwrite to redo it")
            return done, True
        existing = root.exists()
    if existing and not overwrite:
        attrs = _attrs(paths)
        if not resume and not paths.rename and attrs and attrs.get("complete"):
            raise NSEError(f"{paths.final} already has labels {paths.omezarr!r}; refusing to "
                           f"overwrite them (pass --overwrite)")
        if not resume:
            what = "labels" if not paths.rename else "an interrupted run"
            raise NSEError(f"{paths.root if paths.rename else paths.array} exists ({what}): "
                           f"pass --resume to finish it or --overwrite to start again")
        if attrs is None or attrs.get(ATTR) is None:
            raise NSEError(f"{paths.root} holds no blockwise output to resume; "
                           f"pass --overwrite")
        diff = _diff(manifest, attrs.get(ATTR))
        if diff:
            raise NSEError(f"cannot resume {paths.root}: it was started with other "
                           f"{', '.join(diff)}; pass --overwrite to start again")
        _check_array(paths, shape, chunks)
        if attrs.get("complete"):
            return paths, True  # killed while finishing: the caller finishes again
        return paths, False
    try:
        _create(paths, shape, chunks, dtype, manifest, scratch, omezarr_axes)
    except OSError as exc:
        raise os_error(exc, paths.root) from None
    return paths, False


def _is_image(path: Path) -> bool:
    from ..omezarr import _ome_attrs, _open_group

    group = _open_group(path)
    attrs = _ome_attrs(group) if group is not None else {}
    return bool(attrs.get("multiscales")) and "image-label" not in attrs


def _check_array(paths: StorePaths, shape: Sequence[int], chunks: Sequence[int]) -> None:
    arr = paths.open_array("r")
    if tuple(arr.shape) != tuple(shape) or tuple(arr.chunks) != tuple(chunks):
        raise NSEError(f"{paths.array} has shape {tuple(arr.shape)} and chunks "
                       f"{tuple(arr.chunks)}, expected {tuple(shape)} and {tuple(chunks)}; "
                       f"pass --overwrite")


def _create(paths: StorePaths, shape, chunks, dtype, manifest, scratch, axes) -> None:
    import zarr

    if paths.omezarr is not None:
        from ..omezarr import create_omezarr_labels

        if paths.rename:
            _remove(Path(paths.root))
        create_omezarr_labels(paths.root, shape, chunks, name=paths.omezarr, axes=axes,
                              dtype=dtype, overwrite=True)
        arr = paths.open_array()
    else:
        _remove(Path(paths.root))
        arr = zarr.open_array(paths.array, mode="w", shape=tuple(shape), chunks=tuple(chunks),
                              dtype=dtype, fill_value=0)
    arr.attrs.update({"complete": False, ATTR: manifest})
    work = Path(paths.work)
    _remove(work)
    work.mkdir(parents=True)
    for name, (s, c, dt) in scratch.items():
        zarr.open_array(str(work / name), mode="w", shape=tuple(s), chunks=tuple(c), dtype=dt,
                        fill_value=0)
    (work / MANIFEST).write_text(json.dumps(manifest))


def finish_store(paths: StorePaths) -> Path:
    """All tasks are done: mark complete, drop the work folder, rename into place."""
    try:
        paths.open_array().attrs.update({"complete": True})
        if paths.omezarr is not None:
            from ..omezarr import finish_omezarr_labels

            finish_omezarr_labels(paths.root, paths.omezarr)
        _remove(Path(paths.work))
        if paths.rename and paths.root != paths.final:
            final = Path(paths.final)
            if final.exists():
                _remove(final)  # only reached with overwrite: refused earlier otherwise
            os.replace(paths.root, final)
    except OSError as exc:
        raise os_error(exc, paths.root) from None
    return Path(paths.final)
