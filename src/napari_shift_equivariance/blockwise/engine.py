"""The blockwise engine: predict, label, merge, cluster and write block by block.

Four stages, each a set of independent tasks (run in this process or on dask workers):

``predict``
    Per block: predict its tiles (exactly the tiles of the whole-image plan that lie in the
    block), threshold the foreground and label its connected components. Components that touch
    no internal block face are whole; they are clustered here and numbered ``1..k``. The others
    (*placeholders*, numbered ``k+1..k+m``) keep their voxels, embeddings and face layers in
    the block's done marker. (``nse predict``: only the prediction,
    written to the output.)
``merge``
    In the driver: placeholders that touch across faces are joined (:mod:`.merge`), so every
    crossing component is known exactly; the block holding its first voxel (C order) owns it.
``cluster``
    Per owner block: each owned component is clustered once, from the embeddings of all its
    voxels read back from the markers in C order, as :func:`segment` clusters it in memory.
``write``
    Per block: the final uint32 labels, numbered ``1..K`` over the image, one chunk per block.

Mean-shift gives per-component results that do not depend on the other components of a call,
so the labels are the same partition as :func:`segment` with ``scope="component"``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import normalize
from ..clustering import (
    Positions,
    clustering_points,
    components,
    drop_small,
    mean_shift,
    with_positions,
)
from ..clustering.scale import sample_plane, sample_roi
from ..errors import Cancelled, NSEError, is_cancelled
from ..geometry import Coordinate, Roi
from ..io import check_image, read_image
from ..labels import relative_size_threshold
from ..model import UNet, load_model
from ..options import ClusterOptions, cluster_options
from ..predict import AxisLayout, Predictor, auto_batch_size, axis_layout
from ..segment import fix_bandwidth_from_sample
from ..tiling import Tile
from .merge import merge_placeholders
from .plan import Block, BlockPlan, plan_blocks
from .store import StorePaths, finish_store, is_omezarr_target, open_store, os_error

KINDS = ("segment", "predict")
STAGES = {"segment": ("predict", "merge", "cluster", "write"), "predict": ("predict",)}


@dataclass(frozen=True)
class BlockEvent:
    """Progress of a blockwise run: ``done`` of ``total`` tasks of ``stage``, one of
    ``scale`` (with a relative bandwidth only: the tiles under the central sample that set
    it), ``predict``, ``merge``, ``cluster``, ``write``, then ``done``. ``block`` is the block
    just finished (``None`` for stage-level events); ``path`` the store being written (open
    it to show blocks as they land: ``array`` is the zarr array the labels or prediction go
    to); the last event (``stage == "done"``) has ``result``."""

    stage: str
    done: int
    total: int
    block: Block | None = None
    path: str = ""
    result: BlockwiseResult | None = None
    array: str = ""


@dataclass
class BlockwiseResult:
    """What a blockwise run wrote: ``path`` (a zarr array or OME-Zarr), and ``info``."""

    path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_instances(self) -> int:
        return int(self.info.get("n_instances", 0))


@dataclass(frozen=True)
class ImageRef:
    """An image file that each worker opens itself (instead of shipping its pixels);
    ``channel`` (a channels-last image's channel axis) is moved to the front, lazily."""

    path: str
    level: int = 0
    channel: int | None = None

    def open(self) -> Any:
        arr = _open_ref(self.path, self.level)
        return arr if self.channel is None else channels_first(arr, self.channel)


def channels_first(arr: Any, channel: int) -> Any:
    """``arr`` with axis ``channel`` moved to the front, as the in-memory predictor does,
    without reading it: a numpy view, else a lazy dask array (zarr, dask, files)."""
    if isinstance(arr, np.ndarray):
        return np.moveaxis(arr, channel, 0)
    import dask.array as da

    if not isinstance(arr, da.Array):
        chunks = getattr(arr, "chunks", None)
        arr = da.from_array(arr, chunks=chunks if isinstance(chunks, tuple) else "auto")
    return da.moveaxis(arr, channel, 0)


@functools.lru_cache(maxsize=4)
def _open_ref(path: str, level: int) -> Any:
    return read_image(path, level=level)


@dataclass(frozen=True)
class Job:
    """Everything a task needs, small and picklable; the model travels separately, once per
    worker (:func:`register`)."""

    key: str
    kind: str
    image: Any  # an array, or an ImageRef
    plan: BlockPlan
    layout: AxisLayout
    norm: tuple[float, float]
    model_key: str
    device: str
    amp: str | None
    batch_size: int
    pad: str
    cluster: ClusterOptions | None
    store: StorePaths


# -- per-process registry: models and jobs, filled by the driver or a worker plugin ---------
_MODELS: dict[str, UNet] = {}
_JOBS: dict[str, Job] = {}
_PREDICTORS: dict[tuple[str, str], Predictor] = {}
_DEVICE: dict[str, str] = {}  # per-worker device override (one GPU per worker)


def register(job: Job, model: UNet, device: str | None = None) -> None:
    """Make ``job`` and its model known to this process (the driver, or a dask worker)."""
    _MODELS[job.model_key] = model
    _JOBS[job.key] = job
    if device is not None:
        _DEVICE[job.key] = device


def unregister(job_key: str) -> None:
    job = _JOBS.pop(job_key, None)
    _DEVICE.pop(job_key, None)
    if job is not None and not any(j.model_key == job.model_key for j in _JOBS.values()):
        _MODELS.pop(job.model_key, None)
        for k in [k for k in _PREDICTORS if k[0] == job.model_key]:
            del _PREDICTORS[k]


def _job(key: str) -> Job:
    try:
        return _JOBS[key]
    except KeyError:
        raise RuntimeError(f"blockwise job {key} is not registered in this process") from None


def _predictor(job: Job) -> Predictor:
    device = _DEVICE.get(job.key, job.device)
    k = (job.model_key, device)
    if k not in _PREDICTORS:
        _PREDICTORS[k] = Predictor(_MODELS[job.model_key], device, job.amp, job.batch_size,
                                   job.pad)
    return _PREDICTORS[k]


def _image(job: Job) -> Any:
    return job.image.open() if isinstance(job.image, ImageRef) else job.image


def model_key(model: UNet) -> str:
    """A fingerprint of the weights and configuration (guards ``resume``)."""
    h = hashlib.sha1(repr(sorted(model.config.to_dict().items())).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- tasks ---------------------------------------------------------------------------------
def predict_block(job: Job, block: Block) -> np.ndarray:
    """``(E + 1, *write_roi.shape)``: the network output of the block, tile by tile, equal to
    the whole-image output there (the tiles are the whole-image plan's)."""
    return _predict_tiles(_predictor(job), job.plan.tiles_of(block), _image(job), job.layout,
                          block.lead, job.norm, block.write_roi, job.batch_size)


def _predict_tiles(pred: Predictor, tiles: Sequence[Tile], image: Any, layout: Any,
                   lead: tuple[int, ...], norm: Any, roi: Roi, batch_size: int) -> np.ndarray:
    """``(E + 1, *roi.shape)``: the output of the whole-image plan's ``tiles`` that partition
    ``roi`` of plane ``lead``."""
    out = np.empty((pred.config.out_channels, *roi.shape), np.float32)
    for _ in _fill_tiles(out, pred, tiles, image, layout, lead, norm, roi, batch_size):
        pass
    return out


def _fill_tiles(out: np.ndarray, pred: Predictor, tiles: Sequence[Tile], image: Any,
                layout: Any, lead: tuple[int, ...], norm: Any, roi: Roi, batch_size: int
                ) -> Iterator[int]:
    """Write the output of ``tiles`` into ``out`` (over ``roi``), yielding the number of
    tiles done after each batch."""
    for i in range(0, len(tiles), batch_size):
        batch = tiles[i : i + batch_size]
        # the predictor's own read and forward steps, on these tiles only
        y = pred._forward(pred._read(image, batch, layout, lead, norm))
        for t, yt in zip(batch, y):
            out[(slice(None), *t.output_roi.to_slices(roi.begin))] = yt[
                (slice(None), *t.crop.to_slices())]
        yield i + len(batch)


def _scale_bandwidth(opts: ClusterOptions, predictor: Predictor, plan: BlockPlan, image: Any,
                     layout: Any, norm: Any, batch_size: int, device: str, cancel: Any
                     ) -> Generator[BlockEvent, None, tuple[ClusterOptions, float | None]]:
    """A relative bandwidth made absolute from the image's central sample
    (:mod:`..clustering.scale`), predicted from the same tiles as in memory, so the run
    clusters at the bandwidth ``segment`` would use. Yields ``scale`` events per tile batch
    (``cancel`` polled between them); returns the options and the diameter found."""
    if not opts.relative_bandwidth:
        return opts, None
    spatial = tuple(plan.spatial)
    roi = sample_roi(spatial)
    lead = sample_plane(plan.leading)
    cover = plan.tiles_of(Block(-1, (), lead, roi, roi))
    begin = Coordinate(min(v) for v in zip(*(t.output_roi.begin for t in cover)))
    end = Coordinate(max(v) for v in zip(*(t.output_roi.end for t in cover)))
    hull = Roi(begin, end - begin)  # the whole tiles under the sample
    y = np.empty((predictor.config.out_channels, *hull.shape), np.float32)
    yield BlockEvent("scale", 0, len(cover))
    for n in _fill_tiles(y, predictor, cover, image, layout, lead, norm, hull, batch_size):
        if is_cancelled(cancel):
            raise Cancelled("blockwise run cancelled")
        yield BlockEvent("scale", n, len(cover))
    sample = y[(slice(None), *roi.to_slices(hull.begin))]
    return fix_bandwidth_from_sample(sample, roi, spatial, opts, device=device)


def _write(array: Any, index: tuple, data: np.ndarray, path: str) -> None:
    try:
        array[index] = data
    except OSError as exc:
        raise os_error(exc, path) from None


def _cluster(job: Job, points: np.ndarray, groups: np.ndarray) -> np.ndarray:
    opts = job.cluster
    device = str(_predictor(job).device)
    if opts.backend == "sklearn":
        from ..clustering.reference import sklearn_mean_shift

        return sklearn_mean_shift(points, opts.bandwidth, groups=groups)
    return mean_shift(points, opts.bandwidth, device, groups=groups)


def _positions(opts: ClusterOptions) -> Positions:
    return Positions.of(opts.bandwidth, opts.spatial_radius or 0.0, opts.coord_scale or 0.0)


def task_predict(key: str, index: int) -> int:
    """Stage ``predict`` of ``nse predict``: write the block's prediction."""
    job = _job(key)
    block = job.plan[index]
    y = predict_block(job, block)
    _write(job.store.open_array(), (slice(None), *block.slices), y, job.store.array)
    job.store.mark("predict", index)
    return index


def task_label(key: str, index: int) -> int:
    """Stage ``predict`` of ``segment``: predict, label components, cluster the whole ones."""
    job = _job(key)
    plan, opts = job.plan, job.cluster
    block = plan[index]
    y = predict_block(job, block)
    fg = y[-1] > opts.fg_threshold
    comp = components(fg)
    n = int(comp.max())
    faces = plan.internal_faces(block)
    touch = np.zeros(n + 1, bool)
    for a, (lo, hi) in enumerate(faces):
        if lo:
            touch[np.take(comp, 0, axis=a)] = True
        if hi:
            touch[np.take(comp, -1, axis=a)] = True
    touch[0] = False
    whole = fg & ~touch[comp]
    local = np.zeros(fg.shape, np.uint32)
    k = 0
    if whole.any():
        pts = clustering_points(y[:-1], whole, _positions(opts), block.write_roi.begin)
        lab = _cluster(job, pts, comp[whole] - 1)
        inner = np.zeros(fg.shape, np.int64)
        inner[whole] = lab + 1
        local = drop_small(inner, opts.min_size)
        k = int(local.max())
    ids = np.nonzero(touch)[0]
    m = len(ids)
    marker: dict[str, Any] = {"k": k, "m": m, "n_fg": int(fg.sum()),
                              "sizes": np.bincount(local.ravel(), minlength=k + 1)[1:]}
    if m:
        number = np.zeros(n + 1, np.uint32)
        number[ids] = np.arange(1, m + 1, dtype=np.uint32)
        ph = number[comp]  # 1..m on placeholders
        on = ph > 0
        local[on] = ph[on] + k
        # the placeholders' voxels, by placeholder then C order, with their embeddings: all
        # that the cluster stage needs, read back without touching the block's chunks
        ph_flat = np.flatnonzero(on)
        by_ph = np.argsort(ph.ravel()[ph_flat], kind="stable")
        ph_flat = ph_flat[by_ph]
        marker["ph_points"] = y[:-1].reshape(len(y) - 1, -1)[:, ph_flat].T
        marker["ph_index"] = ph_flat
        marker["ph_starts"] = np.searchsorted(ph.ravel()[ph_flat], np.arange(1, m + 2))
        begin = np.asarray(block.write_roi.begin)
        flat_ids, first = np.unique(comp.ravel(), return_index=True)
        first = first[touch[flat_ids]]
        coords = np.array(np.unravel_index(first, fg.shape)).T + begin
        full = np.c_[np.tile(np.asarray(block.lead, np.int64), (m, 1)), coords] \
            if block.lead else coords
        marker["first"] = np.ravel_multi_index(full.T, plan.shape)
        for a, (lo, hi) in enumerate(faces):
            if lo:
                marker[f"lo{a}"] = np.take(ph, 0, axis=a)
            if hi:
                marker[f"hi{a}"] = np.take(ph, -1, axis=a)
    _write(job.store.scratch("local"), block.slices, local, job.store.work)
    job.store.mark("predict", index, **marker)
    return index


def task_cluster(key: str, owner: int, comps: list[list[tuple[int, int]]]) -> int:
    """Stage ``cluster``: the components ``owner`` owns, each once, from all its voxels.

    ``comps``: per component, its placeholders as ``(block, local id)``. Their voxels and
    embeddings come from the blocks' done markers."""
    job = _job(key)
    plan = job.plan
    positions = _positions(job.cluster)
    saved: dict[int, dict[str, np.ndarray]] = {}

    def voxels(b: int, lid: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and image-wide C-order positions of placeholder ``lid`` of block ``b``."""
        if b not in saved:
            with np.load(job.store.marker("predict", b)) as f:
                saved[b] = {n: f[n] for n in ("k", "ph_points", "ph_index", "ph_starts")}
        f, block = saved[b], plan[b]
        i = lid - int(f["k"]) - 1
        s = slice(int(f["ph_starts"][i]), int(f["ph_starts"][i + 1]))
        local = np.unravel_index(f["ph_index"][s], block.write_roi.shape)
        at = [ix + int(a) for ix, a in zip(local, block.write_roi.begin)]
        lead = [np.full(len(at[0]), v) for v in block.lead]
        pts = f["ph_points"][s]
        pts = with_positions(pts, tuple(at), positions)
        return pts, np.ravel_multi_index((*lead, *at), plan.shape)

    points, groups, spans = [], [], []
    start = 0
    for c, members in enumerate(comps):
        flats, pts, sizes = [], [], []
        for b, lid in members:
            e, flat = voxels(b, lid)
            pts.append(e)
            flats.append(flat)
            sizes.append(len(flat))
        flat = np.concatenate(flats)
        order = np.argsort(flat, kind="stable")  # the component's voxels in C order
        points.append(np.concatenate(pts)[order])
        groups.append(np.full(len(flat), c, np.int64))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        offs = np.cumsum([0, *sizes])
        spans.append([(b, lid, start + rank[offs[i]:offs[i + 1]])
                      for i, (b, lid) in enumerate(members)])
        start += len(flat)
    lab = _cluster(job, np.concatenate(points), np.concatenate(groups))
    values = drop_small(lab + 1, job.cluster.min_size)  # 0: dropped, else 1..k
    keys, starts, vals = [], [0], []
    for members in spans:
        for b, lid, pos in members:
            keys.append((b, lid))
            vals.append(values[pos])
            starts.append(starts[-1] + len(pos))
    k = int(values.max(initial=0))
    job.store.mark("cluster", owner, k=k, keys=np.array(keys, np.int64),
                   starts=np.array(starts, np.int64), values=np.concatenate(vals),
                   sizes=np.bincount(values, minlength=k + 1)[1:])
    return owner


def task_write(key: str, index: int, inner: np.ndarray,
               members: list[tuple[int, int]], owners: dict[int, np.ndarray]) -> int:
    """Stage ``write``: final labels of one block. ``inner``: the final ID of each of its own
    instances (index = local ID, 0: dropped); ``members``: ``(local id, owner)`` of its
    placeholders; ``owners``: the same lookup table for each owner's clustered instances."""
    job = _job(key)
    block = job.plan[index]
    local = np.asarray(job.store.scratch("local")[block.slices])
    k = len(inner) - 1
    out = np.zeros(local.shape, np.uint32)
    on = (local > 0) & (local <= k)
    out[on] = inner[local[on]]
    results: dict[int, dict[tuple[int, int], np.ndarray]] = {}
    for lid, owner in members:
        if owner not in results:
            r = job.store.load("cluster", owner)
            results[owner] = {(int(b), int(j)): r["values"][r["starts"][i]:r["starts"][i + 1]]
                              for i, (b, j) in enumerate(r["keys"])}
        out[local == lid] = owners[owner][results[owner][(index, lid)]]
    _write(job.store.open_array(), block.slices, out, job.store.array)
    job.store.mark("write", index)
    return index


def final_ids(inner: list[np.ndarray], cross: dict[int, np.ndarray], fraction: float
              ) -> tuple[list[np.ndarray], dict[int, np.ndarray], int, int]:
    """Final label IDs from the instance sizes: ``inner[i]`` of block ``i``'s own instances
    and ``cross[o]`` of those owner ``o`` clustered. Instances under the relative size
    threshold (:func:`~..labels.relative_size_threshold` of all sizes, as in memory) get 0;
    the others 1..K, block by block, each block's own before its owned ones. Returns one
    lookup table per block and per owner (index = the ID there), K and the threshold."""
    every = [*inner, *cross.values()]
    threshold = relative_size_threshold(np.concatenate(every) if every else [], fraction)
    n = 0

    def number(sizes: np.ndarray) -> np.ndarray:
        nonlocal n
        keep = np.asarray(sizes) >= max(threshold, 1)
        lut = np.zeros(len(keep) + 1, np.int64)
        lut[1:][keep] = np.arange(n + 1, n + 1 + int(keep.sum()))
        n += int(keep.sum())
        return lut

    inner_lut, owner_lut = [], {}
    for i, sizes in enumerate(inner):
        inner_lut.append(number(sizes))
        if i in cross:
            owner_lut[i] = number(cross[i])
    return inner_lut, owner_lut, n, threshold


# -- execution -----------------------------------------------------------------------------
class LocalExecutor:
    """Runs tasks one after the other in this process."""

    def run(self, fn: Callable, calls: Sequence[tuple], cancel: Any) -> Iterator[Any]:
        for args in calls:
            if is_cancelled(cancel):
                raise Cancelled("blockwise run cancelled")
            yield fn(*args)

    def close(self) -> None:
        pass


def _resolve_cluster(model: UNet, cluster: ClusterOptions | None, **overrides: Any
                     ) -> ClusterOptions:
    opts = cluster_options(cluster, **overrides).resolve(model.config)
    if opts.scope != "component":
        raise NSEError(f"blockwise segmentation is exact for scope 'component' only, "
                       f"got {opts.scope!r}")
    return opts


def _as_image(image: Any) -> tuple[Any, Any]:
    """The job's image (an ImageRef for files) and an array to inspect here."""
    if isinstance(image, str | Path):
        ref = ImageRef(str(image))
        return ref, ref.open()
    if isinstance(image, ImageRef):
        return image, image.open()
    return image, image


def run_blockwise(
    model: UNet | str,
    image: Any,
    out: str | Path,
    *,
    kind: str = "segment",
    block: int | Sequence[int] | None = None,
    tile: int | Sequence[int] | None = None,
    client: Any = None,
    cluster: ClusterOptions | None = None,
    bandwidth: float | None = None,
    fg_threshold: float | None = None,
    min_size: int | None = None,
    spatial_radius: float | None = None,
    relative_min_size: float | None = None,
    relative_bandwidth: float | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    amp: str | None = None,
    pad: str = "reflect",
    channel_axis: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    cancel: Any = None,
    omezarr_name: str = "labels",
    threads_per_worker: int | None = None,
) -> Iterator[BlockEvent]:
    """Blockwise segmentation (``kind="segment"``) or prediction (``"predict"``) of ``image``
    into the zarr store ``out``, as a generator of :class:`BlockEvent`.

    Iterate it to run; stop iterating (or raise ``cancel``, polled between tasks) to stop:
    finished blocks stay and ``resume=True`` continues. The last event has ``result``.
    ``image`` is an array (numpy, zarr, dask) or a path (each worker opens it);
    ``client`` a ``dask.distributed.Client`` (``None``: this process).
    """
    if kind not in KINDS:
        raise NSEError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "predict" and is_omezarr_target(Path(out)):
        raise NSEError("a prediction goes to a plain .zarr, not an OME-Zarr (labels only)")
    t_start = time.perf_counter()
    if not isinstance(model, UNet):
        model = load_model(model)
    ref, arr = _as_image(image)
    check_image(arr)
    cfg = model.config
    layout = axis_layout(arr.shape, cfg.ndim, cfg.in_channels, channel_axis)
    if layout.channel is not None and layout.channel > layout.spatial[0]:
        # channels-last (RGB-like): the channel axis goes in front, as in memory
        arr = channels_first(arr, layout.channel)
        ref = dataclasses.replace(ref, channel=layout.channel) if isinstance(
            ref, ImageRef) else arr
        channel_axis = 0
        layout = axis_layout(arr.shape, cfg.ndim, cfg.in_channels, channel_axis)
    local_model = copy.deepcopy(model)  # never move or switch the caller's model
    predictor = Predictor(local_model, device, amp, batch_size, pad)
    tiles = predictor.plan(arr.shape, "correct", tile, channel_axis)
    plan = plan_blocks(layout.leading_shape(arr.shape), tiles, block)
    bs = batch_size or auto_batch_size(tiles)
    norm = normalize.normalization_params(arr, cfg.normalization)
    opts = _resolve_cluster(model, cluster, bandwidth=bandwidth, fg_threshold=fg_threshold,
                            min_size=min_size, spatial_radius=spatial_radius,
                            relative_min_size=relative_min_size,
                            relative_bandwidth=relative_bandwidth
                            ) if kind == "segment" else None
    relative, diameter = (opts.relative_bandwidth or 0.0) if opts else 0.0, None
    if opts is not None:
        opts, diameter = yield from _scale_bandwidth(opts, predictor, plan, arr, layout,
                                                     norm, bs, str(predictor.device), cancel)
    mkey = model_key(model)
    manifest = {
        "kind": kind, "image_shape": list(arr.shape), "image_dtype": str(arr.dtype),
        "model": mkey, "tile": list(tiles.tile_shape), "block": list(plan.block_shape),
        "norm": [float(v) for v in norm], "pad": pad, "amp": amp or "none",
        "cluster": opts.to_dict() if opts is not None else None,
    }
    C = cfg.out_channels
    if kind == "predict":
        shape, chunks, dtype = (C, *plan.shape), (C, *plan.chunks), "float32"
        scratch: dict = {}
    else:
        shape, chunks, dtype = plan.shape, plan.chunks, "uint32"
        scratch = {"local": (plan.shape, plan.chunks, "uint32")}
    paths, complete = open_store(out, shape=shape, chunks=chunks, dtype=dtype,
                                 manifest=manifest, scratch=scratch, resume=resume,
                                 overwrite=overwrite, omezarr_name=omezarr_name)
    info = {"kind": kind, **plan.to_dict(), "workers": 0, "resumed": False,
            "device": str(predictor.device), "bandwidth": opts.bandwidth if opts else None,
            "fg_threshold": opts.fg_threshold if opts else None,
            "min_size": opts.min_size if opts else None,
            "spatial_radius": opts.spatial_radius if opts else None,
            "relative_min_size": opts.relative_min_size if opts else None,
            "relative_bandwidth": relative, "diameter": diameter}
    if complete:
        if paths.rename and paths.root != paths.final and Path(paths.root).exists():
            finish_store(paths)
        attrs = dict(paths.open_array("r").attrs) if Path(paths.array).exists() else {}
        info.update(attrs.get("nse-info", {}), resumed=True, already_complete=True)
        yield BlockEvent("done", 1, 1, path=paths.final,
                         result=BlockwiseResult(Path(paths.final), info))
        return
    job = Job(f"{mkey}-{hashlib.sha1(paths.root.encode()).hexdigest()[:8]}-{time.time_ns()}",
              kind, ref, plan, layout, norm, mkey, device, amp, bs, pad, opts, paths)
    if client is None:
        executor: Any = LocalExecutor()
        register(job, local_model)
    else:
        from .distributed import DaskExecutor

        executor = DaskExecutor(client, job, model, threads=threads_per_worker)
        info["workers"] = executor.n_workers
    try:
        yield from _stages(job, executor, cancel, info)
    finally:
        executor.close()
        if client is None:
            unregister(job.key)
    info["times"] = {"total": time.perf_counter() - t_start, **info.get("times", {})}
    paths.open_array().attrs.update({"nse-info": _jsonable(info)})
    finish_store(paths)
    yield BlockEvent("done", 1, 1, path=paths.final,
                     result=BlockwiseResult(Path(paths.final), info))


def _jsonable(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else str(o)))


def _run_stage(job: Job, executor: Any, stage: str, fn: Callable, calls: list[tuple],
               total: int, cancel: Any, blocks: bool = True) -> Iterator[BlockEvent]:
    """Run the calls whose marker is missing; events count the finished ones too."""
    todo = [c for c in calls if not job.store.done(stage, c[1])]
    done = total - len(todo)
    yield BlockEvent(stage, done, total, path=job.store.root, array=job.store.array)
    for index in executor.run(fn, todo, cancel):
        done += 1
        yield BlockEvent(stage, done, total, job.plan[index] if blocks else None,
                         job.store.root, array=job.store.array)


def _stages(job: Job, executor: Any, cancel: Any, info: dict) -> Iterator[BlockEvent]:
    plan, store = job.plan, job.store
    n = len(plan)
    times: dict[str, float] = {}
    t = time.perf_counter()
    already = sum(store.done("predict", i) for i in range(n))
    info["resumed"] = already > 0
    if job.kind == "predict":
        yield from _run_stage(job, executor, "predict", task_predict,
                              [(job.key, i) for i in range(n)], n, cancel)
        info["times"] = {"predict": time.perf_counter() - t}
        return
    yield from _run_stage(job, executor, "predict", task_label,
                          [(job.key, i) for i in range(n)], n, cancel)
    times["predict"] = time.perf_counter() - t
    t = time.perf_counter()
    # merge: the placeholders of all blocks (small), face layers loaded on demand
    ks = np.zeros(n, np.int64)
    ms = np.zeros(n, np.int64)
    first, n_fg, inner_sizes = [], 0, []
    for i in range(n):
        with np.load(store.marker("predict", i)) as f:
            ks[i], ms[i] = int(f["k"]), int(f["m"])
            n_fg += int(f["n_fg"])
            inner_sizes.append(f["sizes"])
            if ms[i]:
                first.append(f["first"])
    base = np.concatenate([[0], np.cumsum(ms)])

    @functools.lru_cache(maxsize=64)
    def faces(i: int) -> dict[str, np.ndarray]:
        with np.load(store.marker("predict", i)) as f:
            return {k: f[k] for k in f.files if k[:2] in ("lo", "hi") and k[2:].isdigit()}

    M = int(base[-1])
    yield BlockEvent("merge", 0, 1, path=store.root)
    comp = merge_placeholders(plan, faces, base) if M else np.zeros(0, np.int64)
    owner_of_ph = np.repeat(np.arange(n), ms)
    owners: dict[int, list] = {}
    comp_owner = np.zeros(int(comp.max()) + 1 if M else 0, np.int64)
    if M:
        first_all = np.concatenate(first)
        order = np.lexsort((first_all, comp))  # by component, then first voxel
        starts = np.r_[0, np.nonzero(np.diff(comp[order]))[0] + 1, M]
        for c in range(len(starts) - 1):
            members = order[starts[c]:starts[c + 1]]
            own = int(owner_of_ph[members[0]])
            comp_owner[c] = own
            owners.setdefault(own, []).append([
                (int(owner_of_ph[p]), int(ks[owner_of_ph[p]] + p - base[owner_of_ph[p]] + 1))
                for p in members])
    times["merge"] = time.perf_counter() - t
    yield BlockEvent("merge", 1, 1, path=store.root)
    t = time.perf_counter()
    calls = [(job.key, o, cs) for o, cs in sorted(owners.items())]
    yield from _run_stage(job, executor, "cluster", task_cluster, calls, len(calls), cancel)
    times["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    cross_sizes = {}
    for o in owners:
        with np.load(store.marker("cluster", o)) as f:
            cross_sizes[o] = f["sizes"]
    inner_lut, owner_lut, total, threshold = final_ids(inner_sizes, cross_sizes,
                                                       job.cluster.relative_min_size or 0.0)
    if total >= 2**32:
        raise NSEError(f"{total} instances do not fit uint32 labels")
    calls = []
    for i in range(n):
        members = [(int(ks[i] + p - base[i] + 1), int(comp_owner[comp[p]]))
                   for p in range(int(base[i]), int(base[i + 1]))]
        calls.append((job.key, i, inner_lut[i], members,
                      {o: owner_lut[o] for o in {o for _, o in members}}))
    yield from _run_stage(job, executor, "write", task_write, calls, n, cancel)
    times["write"] = time.perf_counter() - t
    info.update(n_instances=total, n_foreground=n_fg, n_placeholders=M,
                relative_threshold=threshold,
                n_crossing=int(comp.max()) + 1 if M else 0, times=times)
