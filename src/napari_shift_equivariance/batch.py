"""Many images at once: a folder or a glob in, one output per image and ``summary.csv`` out.

:func:`expand_inputs` turns ``FOLDER`` or ``'GLOB'`` into the image files (``None`` for one
image, so callers keep their single-image path). :func:`run_batch` runs a *task* on each
file and yields one :class:`BatchItem` per file as it finishes: existing outputs are skipped
unless ``overwrite``, a file that fails is reported by name while the others go on, and
``summary.csv`` (file, shape, instances, seconds, status) is rewritten after every file.
Tasks for the common jobs: :func:`segment_task` and :func:`predict_task` (the model is loaded
once for all files). No CLI or Qt here: the ``nse`` commands and the napari dock share it.
"""

from __future__ import annotations

import csv
import glob
import io as _io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import io
from .errors import Cancelled, NSEError, is_cancelled

#: ``task(source, out) -> {"shape": ..., "instances": ...}``: process one file, write ``out``
#: (atomically) and say what it wrote.
Task = Callable[[Path, Path], dict[str, Any]]
SUMMARY = "summary.csv"
COLUMNS = ("file", "out", "shape", "instances", "seconds", "status", "error")
#: double suffixes that belong together (``a.ome.tif`` has stem ``a``)
_DOUBLE = (".ome.tif", ".ome.tiff", ".ome.zarr")
_GLOB_CHARS = set("*?[")


@dataclass
class BatchItem:
    """What happened to one file: ``status`` is ``"done"``, ``"skipped"`` (its output
    existed) or ``"failed"`` (``error`` says why)."""

    source: Path
    out: Path
    status: str
    index: int
    total: int
    shape: tuple[int, ...] | None = None
    instances: int | None = None
    seconds: float = 0.0
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_row(self) -> dict[str, Any]:
        return {
            "file": str(self.source), "out": str(self.out),
            "shape": "x".join(map(str, self.shape)) if self.shape else "",
            "instances": "" if self.instances is None else int(self.instances),
            "seconds": f"{self.seconds:.3f}", "status": self.status,
            "error": self.error or "",
        }

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.source), "out": str(self.out), "status": self.status,
                "shape": list(self.shape) if self.shape else None,
                "instances": self.instances, "seconds": round(self.seconds, 3),
                "error": self.error}


def is_image_path(path: Path) -> bool:
    """A file (or ``.zarr`` folder) with a suffix :func:`io.read_image` reads."""
    name = path.name.lower()
    if name.startswith(".") or name.endswith(".partial"):
        return False
    return path.suffix.lower() in io.IMAGE_SUFFIXES


def expand_inputs(spec: str | os.PathLike) -> list[Path] | None:
    """The images ``spec`` names.

    ``None`` for one image: a file, a ``.zarr`` or a path inside one, or a path that does
    not exist and is no glob. Else the sorted images of a folder (not recursive) or the
    sorted matches of a glob (``**`` recurses). No image at all is an error."""
    text = str(spec)
    path = Path(text)
    if path.exists():
        if not path.is_dir() or any(p.lower().endswith(".zarr") for p in path.parts):
            return None  # a file, a zarr array, or an array inside a group (g.zarr/NAME)
        found = sorted(p for p in path.iterdir() if is_image_path(p))
        if not found:
            raise NSEError(f"folder {path} holds no images "
                           f"({', '.join(io.IMAGE_SUFFIXES)})")
        return found
    if not (_GLOB_CHARS & set(text)):
        return None
    matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
    found = [p for p in matches if is_image_path(p)]
    if not found:
        extra = f" ({len(matches)} other files)" if matches else ""
        raise NSEError(f"no images match {text!r}{extra}")
    return found


def stem(path: Path) -> str:
    """The name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for double in _DOUBLE:
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def output_paths(sources: Sequence[Path], out_dir: Path, suffix: str) -> list[Path]:
    """``out_dir / (stem + suffix)`` for each source; two sources with one output name, or an
    output that is its own input, are errors (before any work starts)."""
    if not suffix.startswith("."):
        suffix = "." + suffix
    outs = [out_dir / f"{stem(s)}{suffix}" for s in sources]
    seen: dict[Path, Path] = {}
    for s, o in zip(sources, outs):
        if o in seen:
            raise NSEError(f"{seen[o].name} and {s.name} would both write {o.name}; "
                           f"rename one or use another --suffix")
        if o.resolve() == s.resolve():
            raise NSEError(f"the output of {s} would be the file itself; choose another "
                           f"--out folder or --suffix")
        seen[o] = s
    return outs


def pair_by_stem(sources: Sequence[Path], others: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Pair each source with the file of the same stem in ``others`` (a folder or a glob),
    e.g. images with their ground truth; a missing partner is an error naming the files."""
    found = expand_inputs(others)
    if found is None:
        raise NSEError(f"{others} is one file; give a folder or a glob to pair with "
                       f"{len(sources)} files")
    by_stem: dict[str, Path] = {}
    for p in found:
        by_stem.setdefault(stem(p), p)
    missing = [s.name for s in sources if stem(s) not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise NSEError(f"no file with the same name in {others} for {shown}")
    return [(s, by_stem[stem(s)]) for s in sources]


def _read_summary(path: Path) -> dict[str, dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return {Path(row["out"]).name: row for row in csv.DictReader(fh) if row.get("out")}
    except (OSError, csv.Error, KeyError):
        return {}


def _shape(text: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in text.split("x")) if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def _write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def error_message(exc: BaseException) -> str:
    """One line for a failed file: the message (with the exception type unless ours)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, NSEError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_batch(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    task: Task,
    *,
    suffix: str = ".tif",
    overwrite: bool = False,
    summary: str | None = SUMMARY,
    cancel: Any = None,
) -> Iterator[BatchItem]:
    """Run ``task`` on every source, yielding a :class:`BatchItem` as each file finishes.

    Parameters
    ----------
    sources
        Image files, e.g. from :func:`expand_inputs`.
    out_dir
        Output folder (created if missing; its parent must exist).
    task
        ``task(source, out) -> dict`` writes ``out`` and returns ``{"shape", "instances",
        ...}`` (see :func:`segment_task`, :func:`predict_task`). Its exceptions fail that
        file only; :class:`~errors.Cancelled` and ``KeyboardInterrupt`` stop the batch.
    suffix
        Output suffix; each output is ``out_dir / (stem + suffix)``.
    overwrite
        Redo files whose output exists (default: skip them).
    summary
        File name of the table in ``out_dir`` (``None``: none). Rows of skipped files keep
        shape and instances from an earlier summary.
    cancel
        A callable or ``threading.Event``, polled between files (pass it to the task too).
    """
    paths = [Path(s) for s in sources]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NSEError(f"output folder {out_dir} is a file; batch output goes to a folder")
    if not out_dir.parent.exists():
        raise NSEError(f"folder {out_dir.parent} does not exist")
    inside = out_dir.resolve()
    paths = [p for p in paths if inside not in p.resolve().parents]  # never our own outputs
    if not paths:
        raise NSEError(f"no input images outside the output folder {out_dir}")
    outs = output_paths(paths, out_dir, suffix)
    out_dir.mkdir(exist_ok=True)
    summary_path = out_dir / summary if summary else None
    earlier = _read_summary(summary_path) if summary_path and summary_path.exists() else {}
    rows: list[dict[str, Any]] = []
    total = len(paths)
    for i, (src, out) in enumerate(zip(paths, outs)):
        if is_cancelled(cancel):
            raise Cancelled(f"batch cancelled after {i} of {total} files")
        if out.exists() and not overwrite:
            old = earlier.get(out.name, {})
            item = BatchItem(src, out, "skipped", i, total, shape=_shape(old.get("shape")),
                             instances=_int(old.get("instances")))
            row = item.to_row()
        else:
            t0 = time.perf_counter()
            try:
                info = dict(task(src, out) or {})
            except (Cancelled, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the rest
                item = BatchItem(src, out, "failed", i, total,
                                 seconds=time.perf_counter() - t0, error=error_message(exc))
            else:
                shape = info.pop("shape", None)
                item = BatchItem(src, out, "done", i, total,
                                 shape=tuple(int(s) for s in shape) if shape else None,
                                 instances=info.pop("instances", None),
                                 seconds=time.perf_counter() - t0, info=info)
            row = item.to_row()
        rows.append(row)
        if summary_path is not None:
            _write_summary(summary_path, rows)
        yield item


# -- tasks --------------------------------------------------------------------------------
def segment_task(model: Any, mode: str = "correct", tile: Any = None, *,
                 progress: Callable[[str, int, int], None] | None = None, cancel: Any = None,
                 read: dict[str, Any] | None = None, **segment_kwargs: Any) -> Task:
    """A task that segments one image with :func:`segment.segment` and writes its labels
    (with the image's axes and pixel size where the format has them).

    ``model`` is a :class:`~model.UNet` or a model spec (loaded once, here); ``read`` goes to
    :func:`formats.open_image` (``scene``, ``channel``, ``level``); ``segment_kwargs`` go to
    :func:`segment.segment` (bandwidth, device, cluster, ...).
    """
    from .formats import open_image
    from .model import UNet, load_model
    from .segment import segment

    net = model if isinstance(model, UNet) else load_model(model)

    def run(source: Path, out: Path) -> dict[str, Any]:
        image, meta = open_image(source, **(read or {}))
        result = segment(net, image, mode, tile, progress=progress, cancel=cancel,
                         **segment_kwargs)
        io.write_labels(out, result.labels, overwrite=True, metadata=meta)
        return {"shape": result.labels.shape, "instances": result.n_instances,
                "warnings": list(result.info.get("warnings", []))}

    return run


def predict_task(model: Any, mode: str = "correct", tile: Any = None, *,
                 progress: Callable[[int, int], None] | None = None, cancel: Any = None,
                 read: dict[str, Any] | None = None, **predictor_kwargs: Any) -> Task:
    """A task that writes the network output (embeddings + foreground probability) of one
    image (a ``.zarr`` output is chunked by tile); ``predictor_kwargs`` go to
    :class:`predict.Predictor` (device, amp, batch_size, pad) except ``channel_axis``, which
    goes to :meth:`predict.Predictor.run`."""
    from .formats import open_image
    from .model import UNet, load_model
    from .predict import Predictor

    channel_axis = predictor_kwargs.pop("channel_axis", None)
    net = model if isinstance(model, UNet) else load_model(model)
    predictor = Predictor(net, **predictor_kwargs)

    def run(source: Path, out: Path) -> dict[str, Any]:
        image = open_image(source, **(read or {}))[0]
        plan = predictor.plan(image.shape, mode, tile, channel_axis)
        result = predictor.run(image, mode, tile, channel_axis=channel_axis,
                               progress=progress, cancel=cancel)
        chunks = None
        if out.suffix.lower() == ".zarr":  # one chunk per output tile, as nse predict
            chunks = (result.shape[0], *([1] * (result.ndim - 1 - plan.ndim)),
                      *plan.tile_shape)
        io.write_array(out, result, overwrite=True, chunks=chunks)
        return {"shape": result.shape}

    return run
