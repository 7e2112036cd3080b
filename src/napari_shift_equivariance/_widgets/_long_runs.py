"""The Segment dock's runs beyond one in-memory image.

- A **large layer** (dask/zarr-backed, multiscale, or too big for memory) is segmented
  blockwise (:func:`blockwise.run_blockwise`) into a zarr store the user names: progress per
  block, Cancel between blocks (an interrupted run resumes into the same store), and the labels
  shown as a lazy layer on that store that fills in as blocks are written. The image is never
  loaded whole: the engine reads one block box at a time in the worker thread.
- A **folder** of images goes through :func:`batch.run_batch`: one labels file per image and
  ``summary.csv``, progress per file (and per tile within it), Cancel, a bad file reported by
  name while the others go on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NSEError
from ._common import ImageInput, activity_progress, notify, report_error
from ._settings import path_or_none
from ._worker import Job

#: the result-layer role of blockwise labels
ROLE = "blockwise"



def _cli_words(exc: BaseException) -> BaseException:
    """Core messages name the CLI flags; say which box to tick instead."""
    if isinstance(exc, NSEError) and "--overwrite" in str(exc):
        return NSEError(str(exc).replace("pass --overwrite", "tick 'overwrite the store'")
                        .replace("--overwrite", "'overwrite the store'"))
    return exc


# -- blockwise ---------------------------------------------------------------------------
def is_large(layer: Any, inp: ImageInput, model: Any) -> bool:
    """A layer to segment blockwise under *auto*: lazy data (dask, zarr: anything that is not
    a numpy array), multiscale, or a prediction that would not fit the memory budget."""
    from ..blockwise import needs_blockwise

    if layer.multiscale or not isinstance(layer.data, np.ndarray):
        return True
    cfg = model.config
    return needs_blockwise(inp.result_shape, cfg.out_channels, cfg.ndim)


def wants_blockwise(dock: Any, layer: Any, inp: ImageInput, model: Any) -> bool:
    """Whether this run goes blockwise (raises NSEError for settings it cannot honour)."""
    choice = dock.blockwise.value
    if choice == "never" or (choice == "auto" and not is_large(layer, inp, model)):
        return False
    if dock.stitch.value != "correct":
        if choice == "always":
            raise NSEError("blockwise segmentation uses correct stitching (its labels equal "
                           "the in-memory ones); choose Stitching: correct")
        return False
    if dock.scope.value != "component":
        raise NSEError("blockwise segmentation is exact for the mean-shift scope "
                       "'component' only; choose it, or set Blockwise: never")
    return True


def store_path(dock: Any) -> Path:
    text = path_or_none(dock.store.value)
    if text is None:
        raise NSEError("name a zarr store for the labels (Large images ▸ Labels store), or "
                       "set Blockwise: never to segment in memory")
    path = Path(text)
    if path.suffix.lower() != ".zarr":
        raise NSEError(f"the labels store must end in .zarr or .ome.zarr, got {path.name}")
    if not path.parent.is_dir():
        raise NSEError(f"folder {path.parent} does not exist")
    return path


def _array_path(root: str | Path, out: Path, into_image: bool) -> str:
    """The labels array inside the store ``root`` (see :mod:`blockwise.store`)."""
    from ..blockwise.store import is_omezarr_target

    root = Path(root)
    if into_image:
        return str(root / "labels" / "labels" / "0")
    return str(root / "0") if is_omezarr_target(out) else str(root)


def _work_array(root: str | Path, out: Path, into_image: bool) -> Path:
    """The engine's per-block labels (before merging), in its scratch folder."""
    from ..blockwise.store import WORK

    label = Path(root) / "labels" / "labels" if into_image else Path(root)
    return label / WORK / "local"


def _open(path: str | Path) -> Any:
    import zarr

    return zarr.open_array(path, mode="r")


def start_blockwise(dock: Any, model: Any, layer: Any, inp: ImageInput) -> Job:
    """Segment ``layer`` blockwise into the dock's store, in a worker thread."""
    out = store_path(dock)
    into_image = _is_omezarr_image(out)
    options = dock._options()
    tile, block = dock._tile(), dock.block.value
    overwrite = bool(dock.overwrite_store.value)
    pbar = activity_progress(bool(dock.napari_progress.value), 0, "segment blockwise")
    key = (layer.name, "labels", ROLE)
    name = f"{layer.name} labels [blockwise]"
    common = {"scale": inp.scale, "translate": inp.translate}
    state: dict[str, Any] = {"finished": False, "stage": None, "layer": None,
                             "showing": None}

    def work(report, cancel):
        from ..blockwise import run_blockwise

        result, last = None, None
        for ev in run_blockwise(model, inp.data, out, kind="segment", block=block, tile=tile,
                                channel_axis=inp.channel_axis, resume=True,
                                overwrite=overwrite, cancel=cancel.is_set, **options):
            if ev.result is not None:
                result = ev.result
                continue
            report((ev.stage, ev.done, ev.total, ev.path),
                   force=ev.stage != last or ev.done in (0, ev.total))
            last = ev.stage
        return result

    def on_progress(payload: tuple[str, int, int, str]) -> None:
        if state["finished"]:
            return
        stage, n, total, root = payload
        if root:
            # a lazy layer on the store being written (napari reads only what it shows):
            # the per-block labels while blocks are predicted, the final ones once written
            local = _work_array(root, out, into_image)
            want = "local" if stage != "write" and local.exists() else "final"
            data = None
            if state["showing"] != want and not (want == "local" and state["showing"]):
                # not created yet: a later event shows it
                with contextlib.suppress(FileNotFoundError):
                    data = _open(local if want == "local" else _array_path(root, out,
                                                                           into_image))
            if data is not None:
                state["layer"] = dock.results.put(
                    key, "labels", data, name, info={"mode": "correct", "store": str(out),
                                                     "source": layer.name,
                                                     "provisional": want == "local"},
                    **common)
                state["showing"] = want
        if stage in ("predict", "write") and state["layer"] is not None:
            state["layer"].refresh()
        what = {"scale": "find the objects' size", "predict": "predict + label",
                "merge": "merge block faces",
                "cluster": "cluster crossing objects", "write": "write labels"}.get(stage,
                                                                                    stage)
        dock.status.value = f"blockwise {what}: {n}/{total}" + (
            " blocks" if stage in ("predict", "write") else "") + (
            " (labels per block until they are merged and written)"
            if state["showing"] == "local" else "")
        if pbar.total != total or state["stage"] != stage:
            state["stage"] = stage
            pbar.reset(total=total)
            pbar.set_description(f"blockwise: {what}")
        pbar.update(n - pbar.n)

    def done(status: str, value: Any) -> None:
        state["finished"] = True
        pbar.close()
        dock._set_running(False)
        if status == "ok":
            final = _open(_array_path(value.path, out, into_image))
            dock.results.put(key, "labels", final, name,
                             info={"mode": "correct", "store": str(value.path),
                                   "source": layer.name,
                                   "n_instances": value.n_instances}, **common)
            info = value.info
            seconds = (info.get("times") or {}).get("total", 0.0)
            dock.status.value = (f"blockwise: {value.n_instances} objects · "
                                 f"{info.get('n_blocks', '?')} blocks · {seconds:.1f} s → "
                                 f"{Path(value.path).name}")
            dock.last_result = value
            return
        dock.results.remove(key)  # a layer on an unfinished store would look complete
        if status == "cancelled":
            dock.status.value = (f"cancelled; the finished blocks are kept in "
                                 f"{out.name}.partial: Segment again to resume")
            notify("blockwise segmentation cancelled")
        else:
            value = _cli_words(value)
            dock.status.value = f"failed: {value}"
            report_error(value, "blockwise segmentation")

    job = Job(work, done, on_progress)
    pbar.cancel_callback = job.cancel.set
    return job


def _is_omezarr_image(path: Path) -> bool:
    """An existing OME-Zarr image: the labels then go into its ``labels/`` group."""
    from ..blockwise.store import is_omezarr_target
    from ..omezarr import is_omezarr

    return path.is_dir() and is_omezarr_target(path) and is_omezarr(path)


# -- folders -----------------------------------------------------------------------------
def folder_sources(dock: Any) -> tuple[list[Path], Path]:
    from ..batch import expand_inputs

    src, out = path_or_none(dock.folder_in.value), path_or_none(dock.folder_out.value)
    if src is None or not Path(src).is_dir():
        raise NSEError("choose a folder of images (Folder of images ▸ Image folder)")
    if out is None:
        raise NSEError("choose an output folder (Folder of images ▸ Output folder)")
    sources = expand_inputs(src)
    if not sources:
        raise NSEError(f"folder {src} holds no images")
    return sources, Path(out)


def start_folder(dock: Any, model: Any) -> Job:
    """Segment every image of the dock's folder, in a worker thread."""
    if dock.stitch.value == "both":
        raise NSEError("a folder is segmented with one stitching: choose correct, naive or "
                       "whole")
    sources, out_dir = folder_sources(dock)
    mode, tile, options = str(dock.stitch.value), dock._tile(), dock._options()
    suffix, overwrite = str(dock.folder_suffix.value), bool(dock.overwrite_outputs.value)
    n = len(sources)
    pbar = activity_progress(bool(dock.napari_progress.value), n, "segment folder")
    state: dict[str, Any] = {"finished": False, "items": []}

    def work(report, cancel):
        from ..batch import run_batch, segment_task

        current = [0]

        def progress(stage: str, done: int, total: int) -> None:
            report(("file", current[0], stage, done, total), force=done == 0)

        task = segment_task(model, mode, tile, progress=progress, cancel=cancel.is_set,
                            **options)
        items = []
        for item in run_batch(sources, out_dir, task, suffix=suffix, overwrite=overwrite,
                              cancel=cancel.is_set):
            items.append(item)
            current[0] = item.index + 1
            report(("item", item), force=True)
        return items

    def on_progress(payload: tuple) -> None:
        if state["finished"]:
            return
        if payload[0] == "item":
            item = payload[1]
            state["items"].append(item)
            pbar.update(item.index + 1 - pbar.n)
            dock.status.value = (f"folder: {item.index + 1}/{n} files · {_counts(state['items'])}"
                                 f" · last: {item.source.name} {item.status}")
            return
        _, i, stage, done, total = payload
        if i < n:
            what = "tiles" if stage.endswith("predict") else "%"
            amount = f"{done}/{total}" if what == "tiles" else f"{100 * done // max(total, 1)}"
            dock.status.value = (f"folder: file {i + 1}/{n} {sources[i].name}: {stage} "
                                 f"{amount}{'' if what == 'tiles' else '%'}")

    def done(status: str, value: Any) -> None:
        state["finished"] = True
        pbar.close()
        dock._set_running(False)
        items = value if status == "ok" else state["items"]
        failed = [it for it in items if it.status == "failed"]
        dock.status.tooltip = "\n".join(f"{it.source.name}: {it.error}" for it in failed)
        summary = out_dir / "summary.csv"
        if status == "ok":
            dock.status.value = (f"folder: {_counts(items)} → {out_dir.name}/ "
                                 f"(summary.csv)" + (f"; failed: "
                                 f"{', '.join(it.source.name for it in failed[:3])}"
                                 if failed else ""))
            dock.last_folder = {"items": items, "summary": summary}
            notify(f"folder done: {_counts(items)}")
        elif status == "cancelled":
            dock.status.value = (f"cancelled after {len(items)} of {n} files "
                                 f"({_counts(items)}); finished files are kept")
            notify("folder run cancelled")
        else:
            dock.status.value = f"failed: {value}"
            report_error(value, "segmenting the folder")

    job = Job(work, done, on_progress)
    pbar.cancel_callback = job.cancel.set
    return job


def _counts(items: list[Any]) -> str:
    by = {s: sum(it.status == s for it in items) for s in ("done", "skipped", "failed")}
    return ", ".join(f"{v} {k}" for k, v in by.items() if v) or "nothing yet"
