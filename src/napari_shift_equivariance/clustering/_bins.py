"""Bin seeding: scikit-learn's grid of size ``bandwidth``, found by hashing integer rows."""

from __future__ import annotations

import numpy as np


def hash_rows(k: np.ndarray, which: int = 0) -> np.ndarray:
    """A 64-bit hash of each integer row: a dot product with random odd 64-bit multipliers."""
    mult = np.random.default_rng([0x5EED, which]).integers(
        -(2**63), 2**63 - 1, k.shape[1], dtype=np.int64, endpoint=True) | 1
    with np.errstate(over="ignore"):  # wrapping arithmetic is the point
        return k @ mult


def first_of_each(k: np.ndarray) -> np.ndarray:
    """Index of the first occurrence of each distinct row of an integer array."""
    h = hash_rows(k)
    o = np.argsort(h, kind="stable")
    hs = h[o]
    return o[np.r_[True, hs[1:] != hs[:-1]]] if len(o) else o


def bins(k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal integer rows: ``(order, starts, first)``.

    ``order`` lists the rows bin after bin, bin ``i`` at ``order[starts[i]:starts[i + 1]]``,
    the bins in the order of their lowest row number ``first`` and each bin's rows in
    increasing order (so that neither depends on the hash, whose values change with the
    group numbers: a group's bins come in the same order alone or with others). Rows are
    matched by a 64-bit hash, checked with a second, independent hash (the exact, slow way
    only on a collision).
    """
    h = hash_rows(k)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    new = np.r_[True, hs[1:] != hs[:-1]]
    h2 = hash_rows(k, 1)[order]
    if (h2[1:] != h2[:-1])[~new[1:]].any():  # a collision of the first hash
        _, inv = np.unique(k, axis=0, return_inverse=True)
        order = np.argsort(inv.reshape(-1), kind="stable")
        hs = inv.reshape(-1)[order]
        new = np.r_[True, hs[1:] != hs[:-1]]
    starts = np.flatnonzero(new)
    first = np.minimum.reduceat(order, starts)
    by_first = np.argsort(first)
    size = np.diff(np.r_[starts, len(order)])[by_first]
    order = order[ranges(starts[by_first], size)]
    return order, np.r_[0, np.cumsum(size)[:-1]], first[by_first]


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(starts, lengths)])``, vectorised."""
    return np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


def reached(q: np.ndarray, keys: np.ndarray, g: np.ndarray, bins: np.ndarray) -> np.ndarray:
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
    return np.isin(hash_rows(bins), hash_rows(np.c_[g[at[pt]], reach]))

