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
50,000 points or more, when bins hold 4 or more points on average); seeds that meet are
merged; seeds with no point within the bandwidth are found from the points' side and skipped
up front (scikit-learn drops them after a first step); and, because from 5
dimensions on a bin centre can be further than the bandwidth from every point (its seed is
then dropped, and a tight cluster can be missed altogether), bins with points further than
twice the bandwidth from every mode seed once more, from one of their points; modes found so
are kept if at least 3 points lie within the bandwidth (outliers are not clusters).

Only nearby points are ever compared: queries and points are cut into tiles of nearby rows
(a k-d ordering), tile pairs whose bounding boxes are further apart than the bandwidth are
skipped, and each query tile meets all its candidate point tiles in one batched product.
Seeds that land on the same position are merged as they go, so the work shrinks with every
iteration. Distance blocks are bounded by ``chunk_size`` elements.

:func:`cluster_embeddings` applies this to an embedding image with a foreground mask, per
connected component, over the whole foreground, or block by block for very large images.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .errors import Cancelled, NSEError
from .model import resolve_device

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

_STOP = 1e-3  # convergence threshold in bandwidth units, as in scikit-learn
_QUANTUM = 1e-4  # seeds closer than this (bandwidth units) are one seed from then on
_FAR = 2.0  # points further than this from every mode seed again (bandwidth units)...
_RESEED_MIN = 3  # ...and keep the modes found with at least this many points in reach
_COARSE = 0.25  # a coarse pass on the bins when there are at most this many bins per point...
_COARSE_MIN = 50_000  # ...and at least this many points (it can change the result in
# delicate cases, such as overlapping blobs, and pays off only for large inputs)
_LEAF = {"cpu": (16, 64), "other": (64, 256)}  # rows per tile: (queries, points)
_CHUNK = {"cpu": 2**21, "other": 2**26}  # elements per distance block


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
    seed: int = 0,
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
        connected components in one call.
    seed
        Accepted for API stability; the algorithm has no randomness (results depend only on
        the input, the device and ``chunk_size``).
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
        mode order of scikit-learn (more points within the bandwidth first).
    """
    del seed
    dev = resolve_device(device)
    b = _check_bandwidth(bandwidth)
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
    ctx = _Context(dev, *_LEAF[kind], chunk, int(max_iter), progress, cancel)
    g = np.zeros(len(x), np.int64) if groups is None else groups.astype(np.int64)
    with _numerics(dev):
        return _mean_shift(x, g, b, int(min_bin_freq), ctx)


_NUMERICS = {"lock": threading.Lock(), "users": 0, "saved": None}


@contextlib.contextmanager
def _numerics(dev: torch.device):
    """Global torch settings for the duration of a mean-shift (the first of overlapping calls
    saves them, the last one restores them).

    On CPU, one thread: the blocks are small, and synchronising OpenMP threads costs more than
    it saves (many times more on a machine busy with other work). Elsewhere, full float32
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
        yield
    finally:
        with _NUMERICS["lock"]:
            _NUMERICS["users"] -= 1
            if _NUMERICS["users"] == 0:
                threads, precision = _NUMERICS["saved"]
                torch.set_num_threads(threads)
                torch.set_float32_matmul_precision(precision)


def _check_bandwidth(bandwidth: float) -> float:
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


class _Context:
    """Device, block sizes, and progress/cancel bookkeeping of one mean-shift call."""

    def __init__(self, dev, leaf_q, leaf_p, chunk, max_iter, progress, cancel):
        self.dev, self.leaf_q, self.leaf_p = dev, leaf_q, leaf_p
        self.chunk, self.max_iter = chunk, max_iter
        self.progress, self.cancel = progress, cancel
        self.done = 0

    def check(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("mean-shift cancelled")

    def report(self, done: int) -> None:
        """Report progress in per cent (monotonic)."""
        done = min(max(int(done), self.done), 100)
        if self.progress is not None and done > self.done:
            self.progress(done, 100)
        self.done = done


def _kd_order(x: torch.Tensor, g: np.ndarray, leaf: int) -> np.ndarray:
    """An order of the rows of ``x``, sorted by group, in which runs of ``leaf`` rows are compact.

    Each group is split at the median of its widest axis, recursively (a k-d tree, all nodes of
    a level at once, on the device), with splits at multiples of ``leaf`` rows from the group's
    start.
    """
    n, dev = len(x), x.device
    gt = torch.from_numpy(g).to(dev)
    order = torch.argsort(gt, stable=True)
    gs = gt[order]
    new = torch.ones(n, dtype=torch.bool, device=dev)
    new[1:] = gs[1:] != gs[:-1]
    starts = new.nonzero().squeeze(1)
    end = torch.tensor([n], device=dev)
    while True:
        sizes = torch.diff(starts, append=end)
        split = sizes > leaf
        if not bool(split.any()):
            return order.cpu().numpy()
        xs = x[order]
        node = torch.repeat_interleave(torch.arange(len(starts), device=dev), sizes,
                                       output_size=n)
        at = node.unsqueeze(1).expand_as(xs)
        lo = torch.full((len(starts), x.shape[1]), math.inf, dtype=x.dtype, device=dev)
        extent = -lo.scatter_reduce(0, at, xs, "amin") + lo.neg().scatter_reduce(0, at, xs, "amax")
        axis = torch.argmax(extent, 1)[node]
        pos = torch.where(split[node], xs.gather(1, axis.unsqueeze(1)).squeeze(1), 0)
        by_pos = torch.argsort(pos, stable=True)
        order = order[by_pos[torch.argsort(node[by_pos], stable=True)]]
        half = ((sizes[split] + leaf - 1) // leaf + 1) // 2 * leaf
        starts = torch.sort(torch.cat([starts, starts[split] + half])).values


class _Tiles:
    """Rows of ``y`` (in the order ``rows``, sorted by group) cut into padded tiles of ``leaf``.

    ``idx`` ``(n, T)``: row numbers, -1 on padding; ``g``: groups, ``pad`` on padding;
    ``lo``/``hi``: bounding boxes; ``glo``/``ghi`` (numpy): each tile's group range,
    non-decreasing from tile to tile. Squared distances between query tiles and point tiles are
    one product, ``a @ b^T``, with ``a = [y, |y|^2, 1]`` and ``b = [-2y, 1, |y|^2]``, and
    ``wy = [w y, w]`` gives weighted sums and total weights in one product too. ``b``, ``wy``,
    ``g`` and ``idx`` end with one extra, empty tile (``null``): far from everything.
    """

    def __init__(self, y: torch.Tensor, g: np.ndarray, rows: np.ndarray, leaf: int,
                 w: torch.Tensor | None = None, pad: int = -2):
        n, dev = len(rows), y.device
        size = max(1, min(leaf, n))
        nt = -(-n // size)
        npad = (nt + 1) * size - n  # padding sits in the last tile and the null tile only
        rt = torch.from_numpy(rows).to(dev)
        yr = y[rt]
        self.y = torch.cat([yr, yr.new_zeros(npad, y.shape[1])]).view(nt + 1, size, -1)
        self.w = None
        if w is not None:
            self.w = torch.cat([w[rt], w.new_zeros(npad)]).view(nt + 1, size)
        self.idx = torch.cat([rt, rt.new_full((npad,), -1)]).view(nt + 1, size)
        gr = g[rows]
        self.g = torch.from_numpy(np.r_[gr, np.full(npad, pad)]).to(dev).view(nt + 1, size)
        last = (nt - 1) * size
        self.lo, self.hi = self.y[:nt].amin(1), self.y[:nt].amax(1)
        self.lo[-1], self.hi[-1] = yr[last:].amin(0), yr[last:].amax(0)
        self.glo = gr[::size]
        self.ghi = gr[np.minimum(np.arange(nt) * size + size - 1, n - 1)]
        self.n, self.null = n, nt
        self._a = self._b = self._wy = None

    @property
    def a(self) -> torch.Tensor:
        if self._a is None:
            sq = (self.y * self.y).sum(2, keepdim=True)
            self._a = torch.cat([self.y, sq, torch.ones_like(sq)], 2)
        return self._a

    @property
    def b(self) -> torch.Tensor:
        if self._b is None:
            sq = (self.y * self.y).sum(2, keepdim=True)
            self._b = torch.cat([-2 * self.y, torch.ones_like(sq), sq], 2)
            self._b[self.null, :, -1] = 1e30
        return self._b

    @property
    def wy(self) -> torch.Tensor:
        if self._wy is None:
            w = (self.idx >= 0).to(self.y.dtype) if self.w is None else self.w
            self._wy = torch.cat([self.y * w.unsqueeze(2), w.unsqueeze(2)], 2)
        return self._wy

    def rows(self, padded: torch.Tensor) -> torch.Tensor:
        """The first axis of per-slot values ``(tiles, T, ...)`` without the padding."""
        return padded.reshape(-1, *padded.shape[2:])[: self.n]


def _pairs(ctx: _Context, qt: _Tiles, pt: _Tiles, radius: float | None):
    """Yield ``(qi, pi)``, sorted by ``qi``: tile pairs of overlapping groups whose boxes are
    within ``radius``; all pairs of a query tile come in one piece.

    Tiles are sorted by group, so the candidates of a run of query tiles are one range of
    point tiles; each run is tested against its range as one broadcast.
    """
    first = np.searchsorted(pt.ghi, qt.glo, "left")
    last = np.maximum(np.searchsorted(pt.glo, qt.ghi, "right"), first)
    budget = max(1, ctx.chunk // (pt.y.shape[2] + 1))
    a, nq = 0, len(first)
    while a < nq:
        c = nq
        while c - a > 1 and (c - a) * (last[c - 1] - first[a]) > budget:
            c = a + (c - a) // 2
        p0, p1 = int(first[a]), int(last[c - 1])
        if p1 > p0:
            qs, ps = slice(a, c), slice(p0, p1)
            if qt.glo[a] == qt.ghi[c - 1] == pt.glo[p0] == pt.ghi[p1 - 1]:  # one group
                ok = torch.ones(c - a, p1 - p0, dtype=torch.bool, device=ctx.dev)
            else:
                ok = torch.from_numpy((qt.glo[qs, None] <= pt.ghi[None, ps])
                                      & (pt.glo[None, ps] <= qt.ghi[qs, None])).to(ctx.dev)
            if radius is not None:
                gap = torch.maximum(qt.lo[qs].unsqueeze(1) - pt.hi[ps].unsqueeze(0),
                                    pt.lo[ps].unsqueeze(0) - qt.hi[qs].unsqueeze(1))
                # slack for float32 rounding
                ok &= (gap.clamp_min_(0).square_().sum(2)) <= (radius + 1e-3) ** 2
            qi, pi = ok.nonzero(as_tuple=True)
            if len(qi):
                yield qi + a, pi + p0
        a = c


def _blocks(ctx: _Context, qt: _Tiles, pt: _Tiles, radius: float | None, pads: bool = False):
    """Yield ``(tiles, cols, d2, valid)``: query tiles against all their candidate point tiles.

    ``tiles`` ``(B,)`` are query tiles (each appears in one block only), ``cols`` ``(B, M)``
    their candidate point tiles (padded with the null tile), ``d2`` ``(B, M * Tp, Tq)`` the
    squared distances from the points of ``cols``, laid end to end, to the queries (this
    layout multiplies fastest), and ``valid`` marks pairs of the same group (padding included
    if ``pads``), or is None when that is all of them.
    """
    tq, tp = qt.y.shape[1], pt.y.shape[1]
    mixed = pads or qt.glo[0] != qt.ghi[-1] or pt.glo[0] != pt.ghi[-1] or qt.glo[0] != pt.glo[0]
    for qi, pi in _pairs(ctx, qt, pt, radius):
        tiles, count = torch.unique_consecutive(qi, return_counts=True)
        start = torch.cumsum(count, 0) - count
        # blocks of query tiles with similar candidate counts, to pad little
        order = torch.argsort(count, descending=True, stable=True)
        cn = count[order].cpu().numpy()
        s = 0
        while s < len(cn):
            ctx.check()
            m = int(cn[s])
            e = s + max(1, ctx.chunk // (tq * tp * m))
            sel = order[s:e]
            ar = torch.arange(m, device=ctx.dev)
            inside = ar < count[sel].unsqueeze(1)
            at = (start[sel].unsqueeze(1) + ar).clamp_max_(len(pi) - 1)
            cols = torch.where(inside, pi[at], pt.null)
            tl = tiles[sel]
            d2 = torch.bmm(pt.b[cols].reshape(len(sel), m * tp, -1), qt.a[tl].transpose(1, 2))
            valid = None
            if mixed:
                valid = pt.g[cols].reshape(len(sel), m * tp, 1) == qt.g[tl].unsqueeze(1)
            yield tl, cols, d2, valid
            s = e


def _kernel_means(ctx: _Context, qt: _Tiles, pt: _Tiles):
    """Weighted mean of the points within distance 1 of each query, and their total weight."""
    acc = torch.zeros(*qt.y.shape[:2], pt.wy.shape[2], dtype=qt.y.dtype, device=qt.y.device)
    for tiles, cols, d2, valid in _blocks(ctx, qt, pt, 1.0):
        k = d2.le_(1.0)  # in place: 1.0 within the kernel, 0.0 outside
        if valid is not None:
            k.mul_(valid)
        wy = pt.wy[cols].reshape(len(tiles), k.shape[1], -1)
        acc[tiles] = torch.bmm(wy.transpose(1, 2), k).transpose(1, 2)
    acc = qt.rows(acc)
    cnt = acc[:, -1]
    return acc[:, :-1] / cnt.clamp_min(1e-30).unsqueeze(1), cnt


def _hash_rows(k: np.ndarray, which: int = 0) -> np.ndarray:
    """A 64-bit hash of each integer row: a dot product with random odd 64-bit multipliers."""
    mult = np.random.default_rng([0x5EED, which]).integers(
        -(2**63), 2**63 - 1, k.shape[1], dtype=np.int64, endpoint=True) | 1
    with np.errstate(over="ignore"):  # wrapping arithmetic is the point
        return k @ mult


def _first_of_each(k: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct row of an integer array."""
    h = _hash_rows(k)
    o = np.argsort(h, kind="stable")
    hs = h[o]
    return o[np.r_[True, hs[1:] != hs[:-1]]] if len(o) else o


def _bins(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal integer rows: ``(order, starts, first)``.

    ``order`` lists the rows bin after bin, bin ``i`` at ``order[starts[i]:starts[i + 1]]``;
    ``first`` is each bin's lowest row number. Rows are matched by a 64-bit hash, checked
    with a second, independent hash (the exact, slow way only on a collision).
    """
    h = _hash_rows(k)
    order = np.argsort(h)
    hs = h[order]
    new = np.r_[True, hs[1:] != hs[:-1]]
    h2 = _hash_rows(k, 1)[order]
    if (h2[1:] != h2[:-1])[~new[1:]].any():  # a collision of the first hash
        _, inv = np.unique(k, axis=0, return_inverse=True)
        order = np.argsort(inv.reshape(-1), kind="stable")
        hs = inv.reshape(-1)[order]
        new = np.r_[True, hs[1:] != hs[:-1]]
    starts = np.flatnonzero(new)
    return order, starts, np.minimum.reduceat(order, starts)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    return np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


def _reached(q: np.ndarray, keys: np.ndarray, g: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Which bins (rows of ``bins``: group, key) have a point within distance 1 of their
    centre, for points ``q`` (in bin units) with bin keys ``keys`` and groups ``g``.

    From a point, the reachable bin centres are its own plus those reached by stepping
    towards it in some dims: stepping in dim ``d`` adds ``1 - 2 |f_d|`` to the squared
    distance (``f`` the offset from the own centre), so they can be listed cheaply. Returns
    None when there would be too many to list.
    """
    f = q - keys
    budget = 1 + 1e-6 - (f * f).sum(1)  # slack: the kernel is tested in float32 later
    at = np.flatnonzero(budget >= 0)
    d = q.shape[1]
    cost = 1 - 2 * np.abs(f[at])
    dims = np.argsort(cost, axis=1)
    cost = np.take_along_axis(cost, dims, 1)
    # states: (point, number of sorted dims considered, flipped dims as bits, cost left)
    pt, pos, mask, left = np.arange(len(at)), np.zeros(len(at), np.int64), np.zeros(
        len(at), np.int64), budget[at]
    found = [(pt, mask)]
    while len(pt):
        ok = (np.arange(d) >= pos[:, None]) & (cost[pt] <= left[:, None])
        s, j = np.nonzero(ok)
        if len(s) > 4 * len(q) + 4096:
            return None
        pt, pos, mask, left = pt[s], j + 1, mask[s] | (1 << j), left[s] - cost[pt[s], j]
        found.append((pt, mask))
    pt, mask = np.concatenate([p for p, _ in found]), np.concatenate([m for _, m in found])
    reach = keys[at[pt]].copy()
    step = np.where(f[at[pt]] >= 0, 1, -1)
    for j in range(d):
        on = (mask >> j) & 1 == 1
        dim = dims[pt[on], j]
        reach[on, dim] += step[on, dim]
    return np.isin(_hash_rows(bins), _hash_rows(np.c_[g[at[pt]], reach]))


def _shift(ctx: _Context, pt: _Tiles, pos: torch.Tensor, grp: np.ndarray, order: np.ndarray,
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
        new, c = _kernel_means(ctx, _Tiles(pos, grp, act, ctx.leaf_q, pad=-1), pt)
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


def _merge(ctx: _Context, pos: torch.Tensor, grp: np.ndarray, cnt: torch.Tensor):
    """scikit-learn's mode merging: by decreasing count, drop modes within 1 of a kept one.

    Returns the kept modes and their groups, sorted by group then decreasing count.
    """
    if len(pos) == 0:
        return pos, grp
    pn = pos.cpu().numpy().astype(np.float64)
    order = np.lexsort(tuple(-pn[:, ::-1].T) + (-cnt.cpu().numpy(), grp))
    pos, grp, pn = pos[torch.from_numpy(order).to(pos.device)], grp[order], pn[order]
    rows = _kd_order(pos, grp, ctx.leaf_p)
    qt = _Tiles(pos, grp, rows, ctx.leaf_q, pad=-1)
    pt = _Tiles(pos, grp, rows, ctx.leaf_p, pad=-2)
    pairs = [np.zeros((0, 2), np.int64)]
    for tiles, cols, d2, valid in _blocks(ctx, qt, pt, 1.0, pads=True):
        p, c, a = ((d2 <= 1.0) & valid).nonzero(as_tuple=True)
        pi = pt.idx[cols].reshape(len(tiles), -1)[p, c]
        pairs.append(torch.stack([qt.idx[tiles[p], a], pi], 1).cpu().numpy())
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


def _assign(ctx: _Context, qt: _Tiles, modes: torch.Tensor, mgrp: np.ndarray):
    """For every query row of ``qt`` (its order), the nearest mode of the same group and the
    squared distance to it (inf where the group has no mode).

    Modes within ``_FAR`` are looked up tile by tile; only the rows left without one (and
    every row, when there are few modes) are compared with all modes of their group.
    """
    best = torch.zeros(qt.n, dtype=torch.int64, device=ctx.dev)
    near = torch.full((qt.n,), math.inf, device=ctx.dev)
    if len(modes) == 0:
        return best, near
    one_group = mgrp[0] == mgrp[-1] == qt.glo[0] == qt.ghi[-1]
    rest = torch.arange(qt.n, device=ctx.dev)
    if not one_group or len(modes) > 4 * ctx.leaf_p:
        best, near = _assign_blocks(ctx, qt, modes, mgrp, _FAR)
        rest = torch.isinf(near).nonzero().squeeze(1)
    if len(rest) == 0:
        return best, near
    y = qt.rows(qt.y)[rest]
    if one_group:  # a plain argmin
        step = max(1, ctx.chunk // len(modes))
        sq = (modes * modes).sum(1)
        for s in range(0, len(y), step):
            ctx.check()
            v, k = torch.addmm(sq, y[s:s + step], modes.T, alpha=-2).min(1)
            best[rest[s:s + step]] = k
            near[rest[s:s + step]] = v + (y[s:s + step] ** 2).sum(1)
        return best, near
    g = qt.rows(qt.g).cpu().numpy()[rest.cpu().numpy()]
    sub = _Tiles(y, g, np.arange(len(y)), ctx.leaf_p)
    best[rest], near[rest] = _assign_blocks(ctx, sub, modes, mgrp, None)
    return best, near


def _assign_blocks(ctx: _Context, qt: _Tiles, modes: torch.Tensor, mgrp: np.ndarray,
                   radius: float | None):
    """:func:`_assign` on tiles, among the modes within ``radius`` (None: all)."""
    # modes are few and far apart: tiles of one or a few modes keep the boxes tight
    leaf = -(-len(modes) // 4096)
    mt = _Tiles(modes, mgrp, _kd_order(modes, mgrp, leaf), leaf)
    best = torch.zeros(qt.idx.shape, dtype=torch.int64, device=ctx.dev)
    near = torch.full(qt.idx.shape, math.inf, dtype=modes.dtype, device=ctx.dev)
    for tiles, cols, d2, valid in _blocks(ctx, qt, mt, radius, pads=True):
        v, k = d2.masked_fill_(~valid, math.inf).min(1)
        best[tiles] = mt.idx[cols].reshape(len(tiles), -1).gather(1, k)
        near[tiles] = v
    return qt.rows(best), qt.rows(near)


def _mean_shift(x: np.ndarray, g: np.ndarray, b: float, min_bin_freq: int, ctx: _Context):
    ctx.check()
    dev = ctx.dev
    q = x / b
    np.rint(q, out=q)  # scikit-learn's bins: round(x / bandwidth)
    keys = np.c_[g, q.astype(np.int64)]
    del q
    order, starts, first = _bins(keys)
    cnt = np.diff(np.r_[starts, len(x)])
    center = x.mean(0, dtype=np.float64)
    y = ((x - center) / b).astype(np.float32)  # bandwidth units, centred for float32 precision
    # coarse points: the bin means, weighted by the bin counts
    means = np.add.reduceat(y[order], starts, dtype=np.float64) / cnt[:, None]
    bg = g[first]
    seed_ok = cnt >= min_bin_freq
    fullest = np.lexsort((-cnt, bg))
    seed_ok[fullest[np.r_[True, bg[fullest][1:] != bg[fullest][:-1]]]] = True
    if len(first) == len(x):  # every point alone in its bin: the points seed (scikit-learn)
        seeds = means
    else:
        seeds = (keys[first, 1:] * b - center) / b
        if 4 < x.shape[1] < 62:  # up to 4 dims, every bin centre reaches its points
            # a seed with no point in reach is dropped at its first step: skip it now
            reached = _reached(x / b, keys[:, 1:], g, keys[first])
            if reached is not None:
                seed_ok &= reached
    means_t = torch.from_numpy(means.astype(np.float32)).to(dev)
    border = _kd_order(means_t, bg, ctx.leaf_p)
    ctx.report(1)
    # the raw points, bin after bin in the bins' k-d order
    raw = _Tiles(torch.from_numpy(y).to(dev), g, order[_ranges(starts[border], cnt[border])],
                 ctx.leaf_p)
    pos = torch.from_numpy(seeds.astype(np.float32)).to(dev)
    grp, seeds_in = bg, border[seed_ok[border]]
    if len(x) >= _COARSE_MIN and len(first) <= _COARSE * len(x):
        # many points per bin: climb on the weighted bin means first, then refine on the
        # raw points from the (far fewer) distinct coarse modes
        coarse = _Tiles(means_t, bg, border, ctx.leaf_p,
                        w=torch.from_numpy(cnt.astype(np.float32)).to(dev))
        pos, grp, _ = _shift(ctx, coarse, pos, grp, seeds_in, (1, 60))
        seeds_in = _kd_order(pos, grp, ctx.leaf_q)
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
                                  _kd_order(extra, bg[redo], ctx.leaf_q), (ctx.done, 95))
        # a new mode must stand for a cluster, not an outlier (unless its group has none)
        ok = (rcnt >= _RESEED_MIN).cpu().numpy() | ~np.isin(rgrp, grp)
        okt = torch.from_numpy(ok).to(dev)
        pos, grp, kcnt = torch.cat([pos, rpos[okt]]), np.r_[grp, rgrp[ok]], torch.cat(
            [kcnt, rcnt[okt]])
        modes, mgrp = _merge(ctx, pos, grp, kcnt)
        lab, _ = _assign(ctx, raw, modes, mgrp)
    lab = lab.cpu().numpy()
    # relabel by decreasing cluster size; ties keep the merge order
    sizes = np.bincount(lab, minlength=len(modes))
    rank = np.empty(len(modes), np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(modes))
    out = np.empty(len(x), np.int64)
    out[raw.rows(raw.idx).cpu().numpy()] = rank[lab]
    ctx.report(100)
    return out


# --------------------------------------------------------------------------------------------
# images


def cluster_embeddings(
    embeddings: np.ndarray,
    foreground: np.ndarray,
    bandwidth: float,
    *,
    scope: str = "component",
    block_shape: Sequence[int] | None = None,
    min_size: int = 0,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> np.ndarray:
    """Instance labels from an embedding image and a foreground mask, by mean-shift.

    Parameters
    ----------
    embeddings
        ``(E, *spatial)`` floats, 2D or 3D spatial (any array that slices like numpy, e.g. a
        zarr array, for ``scope="block"``).
    foreground
        Boolean mask of shape ``spatial``; background pixels get label 0.
    bandwidth
        Mean-shift bandwidth in embedding units (see :func:`estimate_bandwidth_from_margins`).
    scope
        ``"component"`` (default): cluster each connected foreground component (26- or
        8-connectivity) on its own, so objects that do not touch never share a label.
        ``"global"``: one mean-shift over all foreground pixels, as in the paper; far-apart
        objects with similar embeddings share a label. ``"block"``: component scope inside
        each block of ``block_shape`` (for images too large to cluster at once), then labels
        touching across a block face are merged when their mean embeddings are within
        ``bandwidth`` (transitively).
    block_shape
        Block size per spatial axis, for ``scope="block"``.
    min_size
        Fragments smaller than this many pixels become background.
    seed, device, progress, cancel
        As for :func:`mean_shift`.

    Returns
    -------
    np.ndarray
        uint32 labels of shape ``spatial``, 0 = background, objects numbered 1..K without gaps.
    """
    fg = np.asarray(foreground)
    if fg.ndim not in (2, 3):
        raise NSEError(f"foreground must be a 2D or 3D mask, got shape {fg.shape}")
    if fg.dtype.kind not in "biu":
        raise NSEError(f"foreground must be a boolean mask, got dtype {fg.dtype}")
    fg = fg.astype(bool, copy=False)
    shape = tuple(getattr(embeddings, "shape", ()))
    if len(shape) != fg.ndim + 1 or shape[1:] != fg.shape:
        raise NSEError(f"embeddings must have shape (E, *{fg.shape}), got {shape}")
    if scope not in ("component", "global", "block"):
        raise NSEError(f"scope must be 'component', 'global' or 'block', got {scope!r}")
    b = _check_bandwidth(bandwidth)
    if not isinstance(min_size, int | np.integer) or min_size < 0:
        raise NSEError(f"min_size must be a non-negative integer, got {min_size!r}")
    if scope == "block":
        if block_shape is None or len(block_shape) != fg.ndim or any(
                int(k) < 1 for k in block_shape):
            raise NSEError(f"scope 'block' needs block_shape: {fg.ndim} positive integers")
        block_shape = tuple(int(k) for k in block_shape)
    dev = resolve_device(device)
    if not fg.any():
        warnings.warn("empty foreground: no pixel to cluster, all labels are 0", stacklevel=2)
        return np.zeros(fg.shape, np.uint32)
    kw = {"seed": seed, "device": dev, "cancel": cancel}
    if scope == "block":
        labels = _cluster_blocks(embeddings, fg, b, block_shape, progress, kw)
    else:
        pts = _foreground_points(embeddings, fg)
        groups = _components(fg)[fg] - 1 if scope == "component" else None
        lab = mean_shift(pts, b, groups=groups, progress=progress, **kw)
        labels = np.zeros(fg.shape, np.uint32)
        labels[fg] = lab + 1
    return _drop_small(labels, min_size)


def _foreground_points(embeddings, fg: np.ndarray) -> np.ndarray:
    """``(N, E)`` embeddings of the foreground pixels; NaN/inf there is an error."""
    e = np.asarray(embeddings)
    if e.dtype.kind not in "fiu":
        raise NSEError(f"embeddings must be numbers, got dtype {e.dtype}")
    pts = e[:, fg].T
    if not np.isfinite(pts).all():
        raise NSEError("embeddings contain NaN or infinite values in the foreground")
    return pts


def _components(fg: np.ndarray) -> np.ndarray:
    """Connected components of a mask, touching diagonally counts (8- / 26-connectivity)."""
    return ndimage.label(fg, structure=np.ones((3,) * fg.ndim, bool))[0]


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set labels smaller than ``min_size`` pixels to 0 and renumber the rest 1..K in order."""
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(len(sizes), np.uint32)
    lut[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint32)
    return lut[labels]


def _cluster_blocks(embeddings, fg, b, block_shape, progress, kw) -> np.ndarray:
    """Component-scope clustering block by block, then merging across block faces."""
    labels = np.zeros(fg.shape, np.uint32)
    origins = list(itertools.product(*(range(0, s, k) for s, k in zip(fg.shape, block_shape))))
    sums, counts, nlab = [np.zeros((1, embeddings.shape[0]))], [np.ones(1)], 1
    for i, origin in enumerate(origins):
        box = tuple(slice(o, o + k) for o, k in zip(origin, block_shape))
        f = fg[box]
        if f.any():
            pts = _foreground_points(embeddings[(slice(None), *box)], f)
            lab = mean_shift(pts, b, groups=_components(f)[f] - 1, **kw)
            k = int(lab.max()) + 1
            part = labels[box]
            part[f] = lab + nlab
            sums.append(np.stack([np.bincount(lab, pts[:, d], k) for d in range(pts.shape[1])], 1))
            counts.append(np.bincount(lab, minlength=k))
            nlab += k
        if progress is not None:
            progress(i + 1, len(origins))
    means = np.concatenate(sums) / np.concatenate(counts)[:, None]
    pairs = [np.zeros((0, 2), np.int64)]
    for axis, step in enumerate(block_shape):
        for p in range(step, fg.shape[axis], step):
            a, c = labels.take(p - 1, axis=axis).ravel(), labels.take(p, axis=axis).ravel()
            touch = (a > 0) & (c > 0)
            pairs.append(np.c_[a[touch], c[touch]].astype(np.int64))
    pairs = np.unique(np.concatenate(pairs), axis=0)
    close = np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1) <= b
    i, j = pairs[close].T
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(nlab, nlab))
    root = connected_components(graph, directed=False)[1].astype(np.uint32) + 1
    root[0] = 0
    return root[labels]
