"""Mean-shift clustering of pixel embeddings into instances.

:func:`mean_shift` is a flat-kernel mean-shift with bin seeding, the algorithm of scikit-learn's
``MeanShift(bin_seeding=True)``, written so that it is never the bottleneck:

1. Points are binned on a grid of size ``bandwidth``; every bin holding at least ``min_bin_freq``
   points is a seed, placed at the bin centre.
2. Coarse pass: all seeds climb at once on the bin *means* weighted by bin counts (far fewer than
   the points when the bandwidth is about the cluster spread).
3. The distinct coarse modes climb again on the raw points, to exact fixed points.
4. Modes closer than ``bandwidth`` are merged, the one with more points within ``bandwidth``
   winning (as in scikit-learn), and every point goes to its nearest mode.

Departures from scikit-learn, for speed and for high dimensions: the coarse pass (only for
groups of 50,000 points or more, when bins hold 4 or more points on average); seeds that meet are
merged; from 12 dimensions on (where the mean squared distance from a bin centre to a point of
its bin, d/12, passes 1), seeds with no point within the bandwidth are found from the points'
side and skipped up front (scikit-learn drops them after a first step; below 12 dimensions
so do we, which is cheaper: 2.4x faster at 200,000 8-dim points); and, because from 5
dimensions on a bin centre can be further than the bandwidth from every point (its seed is
then dropped, and a tight cluster can be missed altogether), bins with points further than
twice the bandwidth from every mode seed once more, from one of their points; modes found so
are kept if at least 3 points lie within the bandwidth (outliers are not clusters).

Only nearby points are ever compared: queries and points are cut into tiles of nearby rows
(a k-d ordering), tile pairs whose bounding boxes are further apart than the bandwidth are
skipped, and each query tile meets all its candidate point tiles in one batched product.
Seeds that land on the same position are merged as they go, so the work shrinks with every
iteration. Distance blocks are bounded by ``chunk_size`` elements.

Points carry an optional group: points of different groups never meet, and the result for
one group does not depend on the other groups of the call (each group is centred on its own
mean, and the choices between code paths are made per group), so components clustered in one
call or in several calls get the same clusters. That is also what lets the CPU use several
cores: with more than one torch thread (the caller's setting), runs of groups of at least
50,000 points each are clustered in parallel threads, with the labels of one call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import numpy as np
import torch

from ..errors import NSEError
from ..model import resolve_device
from ._bins import bins as _bins
from ._bins import first_of_each as _first_of_each
from ._bins import ranges as _ranges
from ._bins import reached as _reached
from ._tiles import (
    FAR_AWAY,
    CancelFn,
    Context,
    ProgressFn,
    Tiles,
    blocks,
    kd_order,
    kernel_means,
)

_STOP = 1e-3  # convergence threshold in bandwidth units, as in scikit-learn
_QUANTUM = 1e-4  # seeds closer than this (bandwidth units) are one seed from then on
_FAR = 2.0  # points further than this from every mode seed again (bandwidth units)...
_RESEED_MIN = 3  # ...and keep the modes found with at least this many points in reach
_REACH_DIMS = 12  # from this many dims on, seeds out of every point's reach are skipped up front
_COARSE = 0.25  # a coarse pass on the bins when there are at most this many bins per point...
_COARSE_MIN = 50_000  # ...and at least this many points (it can change the result in
# delicate cases, such as overlapping blobs, and pays off only for large inputs)
_LEAF = {"cpu": (16, 64), "other": (64, 256)}  # rows per tile: (queries, points)
_CHUNK = {"cpu": 2**21, "other": 2**26}  # elements per distance block
_PARALLEL_MIN = 50_000  # points per thread, at least, when groups are clustered in threads


def estimate_bandwidth_from_margins(delta_v: float, delta_d: float) -> float:
    """A default mean-shift bandwidth from the discriminative-loss margins.

    At zero loss every pixel lies within ``delta_v`` of its instance mean and instance means are
    at least ``2 * delta_d`` apart. The bandwidth returned is ``max(2 * delta_v, delta_d / 2)``,
    capped at ``delta_d``:

    - ``>= 2 * delta_v``, the diameter of an instance, so one instance cannot leave two modes
      further apart than the bandwidth (which would not be merged: a false split);
    - ``>= delta_d / 2``, the common choice, which keeps it away from zero when ``delta_v = 0``;
    - ``<= delta_d``, the midpoint between an instance's own pixels (``<= delta_v`` from its
      mean) and the nearest foreign pixels (``>= 2 * delta_d - delta_v``), so a kernel centred
      on one instance does not reach another and modes of different instances are not merged.

    Parameters
    ----------
    delta_v, delta_d
        Pull (variance) and push (distance) margins, ``0 <= delta_v < delta_d``.
    """
    dv, dd = float(delta_v), float(delta_d)
    if not (math.isfinite(dv) and math.isfinite(dd)) or dv < 0 or dd <= dv:
        raise NSEError(f"margins must satisfy 0 <= delta_v < delta_d, got {dv}, {dd}")
    return min(max(2.0 * dv, dd / 2.0), dd)


# --------------------------------------------------------------------------------------------
# mean-shift


def mean_shift(
    points: np.ndarray,
    bandwidth: float,
    device: str | torch.device = "auto",
    *,
    groups: np.ndarray | None = None,
    max_iter: int = 300,
    chunk_size: int | None = None,
    min_bin_freq: int = 1,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> np.ndarray:
    """Flat-kernel mean-shift with bin seeding; labels of ``N`` points in ``D`` dimensions.

    Parameters
    ----------
    points
        ``(N, D)`` finite floats.
    bandwidth
        Kernel radius (Euclidean), also the seeding grid size and the mode-merging distance.
    device
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    groups
        Optional ``(N,)`` non-negative integers: points of different groups never share a
        kernel, a mode or a cluster (as if infinitely far apart). Used to cluster many
        connected components in one call; each group gets the clusters it would get alone.
    max_iter
        Iterations per seed in each pass.
    chunk_size
        Largest number of seed-point distances held at once (default: 2**21 on CPU, 2**26 on
        a GPU).
    min_bin_freq
        Only bins with at least this many points seed; every group keeps its fullest bin.
    progress
        ``progress(done, total)`` is called as work completes; it ends at ``done == total``.
    cancel
        Polled between iterations and blocks; returning True raises :class:`Cancelled`.

    Returns
    -------
    np.ndarray
        ``(N,)`` int64 labels ``0..K-1``; label 0 is the largest cluster, ties broken by the
        mode order of scikit-learn (more points within the bandwidth first). There is no
        randomness: the same points give the same labels.
    """
    dev = resolve_device(device)
    b = check_bandwidth(bandwidth)
    x = _check_points(points)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (len(x),) or groups.dtype.kind not in "iub" or (
            groups.size and groups.min() < 0
        ):
            raise NSEError("groups must be N non-negative integers, one per point")
    if int(max_iter) < 1:
        raise NSEError(f"max_iter must be >= 1, got {max_iter}")
    if int(min_bin_freq) < 1:
        raise NSEError(f"min_bin_freq must be >= 1, got {min_bin_freq}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise NSEError(f"chunk_size must be >= 1, got {chunk_size}")
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    kind = "cpu" if dev.type == "cpu" else "other"
    chunk = int(chunk_size) if chunk_size is not None else _CHUNK[kind]
    ctx = Context(dev, *_LEAF[kind], chunk, int(max_iter), progress, cancel)
    g = np.zeros(len(x), np.int64) if groups is None else groups.astype(np.int64)
    with _numerics(dev) as threads:
        parts = _parts(g, threads) if dev.type == "cpu" else []
        if len(parts) < 2:
            lab, n_modes = _mean_shift(x, g, b, int(min_bin_freq), ctx)
        else:
            lab, n_modes = _in_threads(x, g, b, int(min_bin_freq), ctx, parts)
    ctx.report(100)
    return _by_size(lab, n_modes)


def _parts(g: np.ndarray, threads: int) -> list[np.ndarray]:
    """Rows of up to ``threads`` runs of consecutive groups with about equal points, for
    mean-shift in threads (groups are independent); none when the work is too small to pay."""
    n = len(g)
    k = min(int(threads), n // _PARALLEL_MIN)
    if k < 2:
        return []
    gid, inv, count = np.unique(g, return_inverse=True, return_counts=True)
    if len(gid) < 2:
        return []
    # cut after the group (in group order) whose running point count reaches i * n / k
    cut = np.searchsorted(np.cumsum(count), np.arange(1, k) * n / k)
    part_of_group = np.searchsorted(cut, np.arange(len(gid)), "left")
    part = part_of_group[inv.reshape(-1)]
    return [r for r in (np.flatnonzero(part == i) for i in range(part.max() + 1)) if len(r)]


def _in_threads(x, g, b, min_bin_freq, ctx: Context, parts: list[np.ndarray]):
    """:func:`_mean_shift` on runs of groups in parallel threads (torch and numpy release the
    GIL). Modes are numbered by group first, so the runs' modes, laid end to end in group
    order, are numbered as one call numbers them: the labels are the same."""
    from concurrent.futures import ThreadPoolExecutor

    lock, done = threading.Lock(), np.zeros(len(parts))
    weight = np.array([len(r) for r in parts], float) / len(x)

    def report(i: int, d: int, _total: int) -> None:
        with lock:
            done[i] = d
            ctx.report(float(done @ weight))

    def run(i: int):
        sub = Context(ctx.dev, ctx.leaf_q, ctx.leaf_p, ctx.chunk, ctx.max_iter,
                      None if ctx.progress is None else functools.partial(report, i),
                      ctx.cancel)
        return _mean_shift(x[parts[i]], g[parts[i]], b, min_bin_freq, sub)

    with ThreadPoolExecutor(len(parts), thread_name_prefix="nse-meanshift") as pool:
        results = list(pool.map(run, range(len(parts))))
    lab = np.empty(len(x), np.int64)
    offset = 0
    for rows, (sub_lab, n_modes) in zip(parts, results):
        lab[rows] = sub_lab + offset
        offset += n_modes
    return lab, offset


def _by_size(lab: np.ndarray, n_modes: int) -> np.ndarray:
    """Mode numbers as cluster labels by decreasing size; ties keep the mode order."""
    sizes = np.bincount(lab, minlength=n_modes)
    rank = np.empty(n_modes, np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(n_modes)
    return rank[lab]


_NUMERICS = {"lock": threading.Lock(), "users": 0, "saved": None}


@contextlib.contextmanager
def _numerics(dev: torch.device):
    """Global torch settings for the duration of a mean-shift (the first of overlapping calls
    saves them, the last one restores them).

    On CPU, one thread per torch op: the blocks are small, and synchronising OpenMP threads
    costs more than it saves (many times more on a machine busy with other work); the caller's
    thread count (yielded) is used instead for groups in parallel threads. Elsewhere, full float32
    matrix products: squared distances come from ``|q|^2 + |p|^2 - 2 q.p``, which TF32 (often
    enabled for networks) would spoil.
    """
    with _NUMERICS["lock"]:
        if _NUMERICS["users"] == 0:
            _NUMERICS["saved"] = (torch.get_num_threads(), torch.get_float32_matmul_precision())
            if dev.type == "cpu":
                torch.set_num_threads(1)
            torch.set_float32_matmul_precision("highest")
        _NUMERICS["users"] += 1
    try:
        yield _NUMERICS["saved"][0]
    finally:
        with _NUMERICS["lock"]:
            _NUMERICS["users"] -= 1
            if _NUMERICS["users"] == 0:
                threads, precision = _NUMERICS["saved"]
                torch.set_num_threads(threads)
                torch.set_float32_matmul_precision(precision)


def check_bandwidth(bandwidth: float) -> float:
    try:
        b = float(bandwidth)
    except (TypeError, ValueError):
        raise NSEError(f"bandwidth must be a number, got {bandwidth!r}") from None
    if not math.isfinite(b) or b <= 0:
        raise NSEError(f"bandwidth must be positive and finite, got {bandwidth}")
    return b


def _check_points(points: np.ndarray) -> np.ndarray:
    x = np.asarray(points)
    if x.ndim != 2:
        raise NSEError(f"points must be an (N, D) array, got shape {x.shape}")
    if x.dtype.kind not in "fiub":
        raise NSEError(f"points must be numbers, got dtype {x.dtype}")
    if x.shape[1] == 0 and len(x):
        raise NSEError("points must have at least one dimension (D >= 1)")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise NSEError("points contain NaN or infinite values")
    return x


def _shift(ctx: Context, pt: Tiles, pos: torch.Tensor, grp: np.ndarray, order: np.ndarray,
           span: tuple[int, int]):
    """Move the seeds ``order`` (rows of ``pos``, by group) to the mean of the points within
    distance 1 until they stop moving; seeds that meet become one.

    Returns the distinct final positions, their groups and the weight within the kernel at
    the last step (scikit-learn's "intensity"). Progress runs over ``span``.
    """
    n = len(pos)
    cnt = torch.zeros(n, dtype=pos.dtype, device=pos.device)
    done = np.zeros(n, bool)
    alive = np.zeros(n, bool)
    alive[order] = True
    for _ in range(ctx.max_iter):
        act = order[alive[order] & ~done[order]]
        if len(act) == 0:
            break
        at = torch.from_numpy(act).to(pos.device)
        new, c = kernel_means(ctx, Tiles(pos, grp, act, ctx.leaf_q, pad=-1), pt)
        empty = (c <= 0).cpu().numpy()
        if empty.any():  # a seed with no point near it is dropped, as in scikit-learn
            alive[act[empty]] = False
            keep = torch.from_numpy(~empty).to(pos.device)
            at, new, c, act = at[keep], new[keep], c[keep], act[~empty]
        moved = torch.linalg.vector_norm(new - pos[at], dim=1).cpu().numpy()
        pos[at], cnt[at] = new, c
        done[act[moved <= _STOP]] = True
        live = order[alive[order]]
        cell = torch.floor(pos[torch.from_numpy(live).to(pos.device)] / _QUANTUM)
        first = _first_of_each(np.c_[grp[live], cell.to(torch.int64).cpu().numpy()])
        alive[live] = False
        alive[live[first]] = True
        ctx.report(span[0] + (span[1] - span[0]) * (done[alive].mean() if alive.any() else 1))
    keep = order[alive[order]]
    kt = torch.from_numpy(keep).to(pos.device)
    return pos[kt], grp[keep], cnt[kt]


def _merge(ctx: Context, pos: torch.Tensor, grp: np.ndarray, cnt: torch.Tensor):
    """scikit-learn's mode merging: by decreasing count, drop modes within 1 of a kept one.

    Returns the kept modes and their groups, sorted by group then decreasing count.
    """
    if len(pos) == 0:
        return pos, grp
    pn = pos.cpu().numpy().astype(np.float64)
    order = np.lexsort(tuple(-pn[:, ::-1].T) + (-cnt.cpu().numpy(), grp))
    pos, grp, pn = pos[torch.from_numpy(order).to(pos.device)], grp[order], pn[order]
    rows = kd_order(pos, grp, ctx.leaf_p)
    qt = Tiles(pos, grp, rows, ctx.leaf_q, pad=-1)
    pt = Tiles(pos, grp, rows, ctx.leaf_p, pad=-2)
    pairs = [np.zeros((0, 2), np.int64)]
    for tiles, cols, d2 in blocks(ctx, qt, pt, 1.0):
        p, c, a = (d2 <= 1.0).nonzero(as_tuple=True)
        pi = pt.idx[cols].reshape(len(tiles), -1)[p, c]
        qi = qt.idx[tiles[p], a]
        real = qi >= 0  # query padding; point padding is beyond the radius
        pairs.append(torch.stack([qi[real], pi[real]], 1).cpu().numpy())
    i, j = np.concatenate(pairs).T
    i, j = i[j > i], j[j > i]
    o = np.argsort(i, kind="stable")
    i, j = i[o], j[o]
    bounds = np.searchsorted(i, np.arange(len(pn) + 1))
    keep = np.ones(len(pn), bool)
    for k in np.unique(i).tolist():
        if keep[k]:
            keep[j[bounds[k]:bounds[k + 1]]] = False
    kept = np.flatnonzero(keep)
    return pos[torch.from_numpy(kept).to(pos.device)], grp[kept]


def _assign(ctx: Context, qt: Tiles, modes: torch.Tensor, mgrp: np.ndarray):
    """For every query row of ``qt`` (its order), the nearest mode of the same group and the
    squared distance to it (inf where the group has no mode).

    Modes within ``_FAR`` are looked up tile by tile; only the rows left without one are
    compared with all modes of their group.
    """
    best = torch.zeros(qt.n, dtype=torch.int64, device=ctx.dev)
    near = torch.full((qt.n,), math.inf, device=ctx.dev)
    if len(modes) == 0:
        return best, near
    # the same path for every call, so that a group's labels do not depend on the others
    best, near = _assign_blocks(ctx, qt, modes, mgrp, _FAR)
    rest = torch.isinf(near).nonzero().squeeze(1)
    if len(rest) == 0:
        return best, near
    y = qt.rows(qt.y)[rest]
    g = qt.rows(qt.g).cpu().numpy()[rest.cpu().numpy()]
    sub = Tiles(y, g, np.arange(len(y)), ctx.leaf_p)
    best[rest], near[rest] = _assign_blocks(ctx, sub, modes, mgrp, None)
    return best, near


def _assign_blocks(ctx: Context, qt: Tiles, modes: torch.Tensor, mgrp: np.ndarray,
                   radius: float | None):
    """:func:`_assign` on tiles, among the modes within ``radius`` (None: all)."""
    # modes are few and far apart: tiles of one mode keep the boxes tight (and the same
    # whatever other groups share the call)
    mt = Tiles(modes, mgrp, kd_order(modes, mgrp, 1), 1)
    best = torch.zeros(qt.idx.shape, dtype=torch.int64, device=ctx.dev)
    near = torch.full(qt.idx.shape, math.inf, dtype=modes.dtype, device=ctx.dev)
    for tiles, cols, d2 in blocks(ctx, qt, mt, radius):
        v, k = d2.min(1)
        v.masked_fill_(v >= FAR_AWAY, math.inf)  # only padding in reach: no mode
        best[tiles] = mt.idx[cols].reshape(len(tiles), -1).gather(1, k)
        near[tiles] = v
    return qt.rows(best), qt.rows(near)


def _mean_shift(x: np.ndarray, g: np.ndarray, b: float, min_bin_freq: int, ctx: Context):
    ctx.check()
    dev = ctx.dev
    q = x / b
    np.rint(q, out=q)  # scikit-learn's bins: round(x / bandwidth)
    keys = np.c_[g, q.astype(np.int64)]
    del q
    order, starts, first = _bins(keys)
    cnt = np.diff(np.r_[starts, len(x)])
    bg = g[first]
    # per group: its points, its bins, and its mean (each group is centred on its own mean for
    # float32 precision, so that its result does not depend on the other groups)
    gid, g_inv = np.unique(g, return_inverse=True)
    g_inv = g_inv.reshape(-1)
    g_points = np.bincount(g_inv, minlength=len(gid))
    g_bins = np.bincount(g_inv[first], minlength=len(gid))
    center = np.stack([np.bincount(g_inv, x[:, d], len(gid)) for d in range(x.shape[1])], 1)
    center /= np.maximum(g_points, 1)[:, None]
    y = ((x - center[g_inv]) / b).astype(np.float32)  # bandwidth units, centred per group
    bin_group = g_inv[first]
    # coarse points: the bin means, weighted by the bin counts
    means = np.add.reduceat(y[order], starts, dtype=np.float64) / cnt[:, None]
    seed_ok = cnt >= min_bin_freq
    fullest = np.lexsort((-cnt, bg))
    seed_ok[fullest[np.r_[True, bg[fullest][1:] != bg[fullest][:-1]]]] = True
    # a group whose points are each alone in a bin is seeded by its points (scikit-learn)
    alone = (g_bins == g_points)[bin_group]
    seeds = np.where(alone[:, None], means, (keys[first, 1:] * b - center[bin_group]) / b)
    if _REACH_DIMS <= x.shape[1] < 62 and not alone.all():
        # most bin centres are out of their points' reach: find the seeds with no point in
        # reach (dropped at their first step anyway) and skip them now
        reached = _reached(x / b, keys[:, 1:], g, keys[first])
        if reached is not None:
            seed_ok &= reached | alone
    means_t = torch.from_numpy(means.astype(np.float32)).to(dev)
    border = kd_order(means_t, bg, ctx.leaf_p)
    ctx.report(1)
    # the raw points, bin after bin in the bins' k-d order
    raw = Tiles(torch.from_numpy(y).to(dev), g, order[_ranges(starts[border], cnt[border])],
                ctx.leaf_p)
    pos = torch.from_numpy(seeds.astype(np.float32)).to(dev)
    grp, seeds_in = bg, border[seed_ok[border]]
    coarse_group = (g_points >= _COARSE_MIN) & (g_bins <= _COARSE * g_points)
    if coarse_group.any():
        # groups with many points per bin climb on the weighted bin means first, then refine
        # on the raw points from the (far fewer) distinct coarse modes
        coarse = Tiles(means_t, bg, border, ctx.leaf_p,
                       w=torch.from_numpy(cnt.astype(np.float32)).to(dev))
        on = coarse_group[bin_group[seeds_in]]
        fine = torch.from_numpy(seeds_in[~on]).to(dev)
        cpos, cgrp, _ = _shift(ctx, coarse, pos, grp, seeds_in[on], (1, 60))
        pos, grp = torch.cat([cpos, pos[fine]]), np.r_[cgrp, grp[seeds_in[~on]]]
        seeds_in = kd_order(pos, grp, ctx.leaf_q)
    pos, grp, kcnt = _shift(ctx, raw, pos, grp, seeds_in, (ctx.done, 90))
    modes, mgrp = _merge(ctx, pos, grp, kcnt)
    lab, near = _assign(ctx, raw, modes, mgrp)
    # Bin centres can lie further than the bandwidth from all their points (from 5 dims on),
    # and seeds with no point in reach are dropped (as in scikit-learn), so whole clusters can
    # go unseeded. Bins with points far from every mode seed once more, from a point.
    far = (near > _FAR**2).cpu().numpy()
    if x.shape[1] > 4 and far.any():  # up to 4 dims, every bin centre reaches its points
        bin_of = np.empty(len(x), np.int64)
        bin_of[order] = np.repeat(np.arange(len(first)), cnt)
        redo = np.unique(bin_of[raw.rows(raw.idx).cpu().numpy()[far]])
        extra = torch.from_numpy(y[first[redo]]).to(dev)
        rpos, rgrp, rcnt = _shift(ctx, raw, extra, bg[redo],
                                  kd_order(extra, bg[redo], ctx.leaf_q), (ctx.done, 95))
        # a new mode must stand for a cluster, not an outlier (unless its group has none)
        ok = (rcnt >= _RESEED_MIN).cpu().numpy() | ~np.isin(rgrp, grp)
        okt = torch.from_numpy(ok).to(dev)
        pos, grp, kcnt = torch.cat([pos, rpos[okt]]), np.r_[grp, rgrp[ok]], torch.cat(
            [kcnt, rcnt[okt]])
        modes, mgrp = _merge(ctx, pos, grp, kcnt)
        lab, _ = _assign(ctx, raw, modes, mgrp)
    # mode numbers (in merge order: by group, then decreasing count) in the points' order
    out = np.empty(len(x), np.int64)
    out[raw.rows(raw.idx).cpu().numpy()] = lab.cpu().numpy()
    ctx.report(99)
    return out, len(modes)

