"""Tiles of nearby rows, and the batched distance blocks between them (mean-shift's engine).

Queries and points are cut into tiles of nearby rows (a k-d ordering); tile pairs whose
bounding boxes are further apart than a radius are skipped, and each query tile meets all its
candidate point tiles in one batched product. Distance blocks are bounded by ``chunk_size``
elements.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import Cancelled

ProgressFn = Callable[[int, int], None]
#: The squared-norm entry of padding rows: their squared distance to anything is at least this.
FAR_AWAY = 1e30
CancelFn = Callable[[], bool]


class Context:
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


def kd_order(x: torch.Tensor, g: np.ndarray, leaf: int) -> np.ndarray:
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


class Tiles:
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
        n, dev, dim = len(rows), y.device, y.shape[1]
        size = max(1, min(leaf, n))
        gr = g[rows]
        # Every group starts a new tile (rows come sorted by group): a tile holds one group,
        # so tiles only ever meet tiles of their own group, no group mask is needed, and a
        # group's tiles, sums and results are the same whatever other groups share the call.
        start = np.flatnonzero(np.r_[True, gr[1:] != gr[:-1]]) if n else np.zeros(0, int)
        length = np.diff(np.r_[start, n])
        ntiles = -(-length // size)
        first = np.r_[0, np.cumsum(ntiles)[:-1]]
        run = np.repeat(np.arange(len(start)), length)
        slot = first[run] * size + np.arange(n) - start[run]
        nt = int(ntiles.sum())
        total = (nt + 1) * size  # the last tile is the null tile: padding only
        rt = torch.from_numpy(rows).to(dev)
        st = torch.from_numpy(slot).to(dev)
        self.slot = st
        yt = y.new_zeros(total, dim)
        yt[st] = y[rt]
        self.y = yt.view(nt + 1, size, dim)
        self.w = None
        if w is not None:
            wt = w.new_zeros(total)
            wt[st] = w[rt]
            self.w = wt.view(nt + 1, size)
        idx = rt.new_full((total,), -1)
        idx[st] = rt
        self.idx = idx.view(nt + 1, size)
        gt = np.full(total, pad, dtype=np.int64)
        gt[slot] = gr
        self.g = torch.from_numpy(gt).to(dev).view(nt + 1, size)
        real = (self.idx[:nt] >= 0).unsqueeze(2)
        inf = torch.tensor(math.inf, dtype=y.dtype, device=dev)
        self.lo = torch.where(real, self.y[:nt], inf).amin(1)
        self.hi = torch.where(real, self.y[:nt], -inf).amax(1)
        self.glo = self.ghi = np.repeat(gr[start], ntiles)
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
            self._b[self.idx < 0, -1] = FAR_AWAY  # padding: beyond every radius
        return self._b

    @property
    def wy(self) -> torch.Tensor:
        if self._wy is None:
            w = (self.idx >= 0).to(self.y.dtype) if self.w is None else self.w
            self._wy = torch.cat([self.y * w.unsqueeze(2), w.unsqueeze(2)], 2)
        return self._wy

    def rows(self, padded: torch.Tensor) -> torch.Tensor:
        """Per-slot values ``(tiles, T, ...)`` as per-row values, in the order ``rows``."""
        return padded.reshape(-1, *padded.shape[2:])[self.slot]


def pairs(ctx: Context, qt: Tiles, pt: Tiles, radius: float | None):
    """Yield ``(qi, pi)``, sorted by ``qi``: tile pairs of the same group whose boxes are
    within ``radius``; all pairs of a query tile come in one piece.

    A tile holds one group and tiles are sorted by group, so the candidates of a query tile
    are one range of point tiles; only those pairs are tested (as many query tiles at once as
    the chunk size allows): as one broadcast when the query tiles are of one group, else
    pair by pair.
    """
    first = np.searchsorted(pt.ghi, qt.glo, "left")
    count = np.maximum(np.searchsorted(pt.glo, qt.ghi, "right"), first) - first
    ends = np.cumsum(count)
    budget = max(1, ctx.chunk // (pt.y.shape[2] + 1))
    a, nq = 0, len(first)
    while a < nq:
        base = int(ends[a - 1]) if a else 0
        c = max(a + 1, int(np.searchsorted(ends, base + budget, "right")))
        n = int(ends[c - 1]) - base
        if n and qt.glo[a] == qt.ghi[c - 1]:
            # one group: every query tile has the same range of candidates, tested as one
            # broadcast (cheaper than gathering each pair)
            p0 = int(first[a])
            ps = slice(p0, p0 + int(count[a]))
            if radius is None:
                ok = torch.ones(c - a, ps.stop - p0, dtype=torch.bool, device=ctx.dev)
            else:
                gap = torch.maximum(qt.lo[a:c].unsqueeze(1) - pt.hi[ps].unsqueeze(0),
                                    pt.lo[ps].unsqueeze(0) - qt.hi[a:c].unsqueeze(1))
                ok = gap.clamp_min_(0).square_().sum(2) <= (radius + 1e-3) ** 2
            qi, pi = ok.nonzero(as_tuple=True)
            if len(qi):
                yield qi + a, pi + p0
        elif n:
            cnt = count[a:c]
            qi = np.repeat(np.arange(a, c), cnt)
            pi = np.arange(n) + np.repeat(first[a:c] - (ends[a:c] - cnt - base), cnt)
            qi, pi = torch.from_numpy(qi).to(ctx.dev), torch.from_numpy(pi).to(ctx.dev)
            if radius is not None:
                gap = torch.maximum(qt.lo[qi] - pt.hi[pi], pt.lo[pi] - qt.hi[qi])
                # slack for float32 rounding
                ok = gap.clamp_min_(0).square_().sum(1) <= (radius + 1e-3) ** 2
                qi, pi = qi[ok], pi[ok]
            if len(qi):
                yield qi, pi
        a = c


def blocks(ctx: Context, qt: Tiles, pt: Tiles, radius: float | None):
    """Yield ``(tiles, cols, d2)``: query tiles against all their candidate point tiles.

    ``tiles`` ``(B,)`` are query tiles (each appears in one block only), ``cols`` ``(B, M)``
    their candidate point tiles of the same group (padded with the null tile), and ``d2``
    ``(B, M * Tp, Tq)`` the squared distances from the points of ``cols``, laid end to end, to
    the queries (this layout multiplies fastest); from padding rows they are
    ``>= FAR_AWAY``.
    """
    tq, tp = qt.y.shape[1], pt.y.shape[1]
    for qi, pi in pairs(ctx, qt, pt, radius):
        tiles, count = torch.unique_consecutive(qi, return_counts=True)
        start = torch.cumsum(count, 0) - count
        # blocks of query tiles with the same number of candidates: no padding, so the sums
        # of a tile do not depend on the tiles it shares a block with
        order = torch.argsort(count, descending=True, stable=True)
        cn = count[order].cpu().numpy()
        run_end = np.r_[np.flatnonzero(cn[1:] != cn[:-1]) + 1, len(cn)]
        s = 0
        while s < len(cn):
            ctx.check()
            m = int(cn[s])
            e = min(s + max(1, ctx.chunk // (tq * tp * m)),
                    int(run_end[np.searchsorted(run_end, s, "right")]))
            sel = order[s:e]
            ar = torch.arange(m, device=ctx.dev)
            inside = ar < count[sel].unsqueeze(1)
            at = (start[sel].unsqueeze(1) + ar).clamp_max_(len(pi) - 1)
            cols = torch.where(inside, pi[at], pt.null)
            tl = tiles[sel]
            d2 = torch.bmm(pt.b[cols].reshape(len(sel), m * tp, -1), qt.a[tl].transpose(1, 2))
            yield tl, cols, d2
            s = e


def kernel_means(ctx: Context, qt: Tiles, pt: Tiles):
    """Weighted mean of the points within distance 1 of each query, and their total weight."""
    acc = torch.zeros(*qt.y.shape[:2], pt.wy.shape[2], dtype=qt.y.dtype, device=qt.y.device)
    for tiles, cols, d2 in blocks(ctx, qt, pt, 1.0):
        k = d2.le_(1.0)  # in place: 1.0 within the kernel, 0.0 outside
        wy = pt.wy[cols].reshape(len(tiles), k.shape[1], -1)
        acc[tiles] = torch.bmm(wy.transpose(1, 2), k).transpose(1, 2)
    acc = qt.rows(acc)
    cnt = acc[:, -1]
    return acc[:, :-1] / cnt.clamp_min(1e-30).unsqueeze(1), cnt

