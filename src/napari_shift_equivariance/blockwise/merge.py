"""Exact connected components across blocks: face pairs and union-find.

Every block labels its foreground components on its own. A component that touches a face the
block shares with another block is a *placeholder*; its voxels on that face are kept. Two
placeholders of neighbouring blocks belong to one component exactly when a voxel of one and a
voxel of the other are neighbours (8- / 26-connectivity, as :func:`clustering.components`),
i.e. when they sit on the two layers either side of a block boundary at most one voxel apart
along the other axes. Pairs are collected boundary by boundary (including blocks that meet only
at an edge or a corner) and joined with a union-find, so this equals labelling the whole image
at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from ..clustering.unionfind import UnionFind
from ..geometry import Roi
from .plan import BlockPlan


def face_pairs(lower: np.ndarray, lower_roi: Roi, upper: np.ndarray, upper_roi: Roi) -> np.ndarray:
    """``(K, 2)`` pairs ``(lower[x], upper[y])`` of non-zero labels on the two layers of one
    boundary with ``|x - y| <= 1`` on every axis of the layers (``*_roi``: the layers' boxes in
    image coordinates, the boundary axis left out)."""
    out = [np.zeros((0, 2), np.int64)]
    for shift in itertools.product((-1, 0, 1), repeat=lower_roi.dims):
        region = lower_roi.shift(shift).intersect(upper_roi)
        if region.empty():
            continue
        a = lower[region.shift([-s for s in shift]).to_slices(lower_roi.begin)]
        b = upper[region.to_slices(upper_roi.begin)]
        both = (a > 0) & (b > 0)
        if both.any():
            out.append(np.unique(np.c_[a[both], b[both]].astype(np.int64), axis=0))
    return np.concatenate(out)


def _drop(roi: Roi, axis: int) -> Roi:
    keep = [i for i in range(roi.dims) if i != axis]
    return Roi([roi.offset[i] for i in keep], [roi.shape[i] for i in keep])


def merge_placeholders(plan: BlockPlan, faces: Callable[[int], dict[str, np.ndarray]],
                       base: np.ndarray) -> np.ndarray:
    """Component index (``0..C-1``) of every placeholder.

    ``faces(i)`` gives block ``i``'s layers ``"lo{a}"`` / ``"hi{a}"`` (first / last layer along
    spatial axis ``a``, placeholder numbers ``1..m``, 0 elsewhere) for its internal faces;
    ``base[i]`` is the global index of block ``i``'s first placeholder (``base[-1]``: total).
    """
    uf = UnionFind(int(base[-1]))
    nl, nd = len(plan.leading), len(plan.spatial)
    for block in plan:
        if base[block.index + 1] == base[block.index]:
            continue  # no placeholder in this block
        mine = faces(block.index)
        for a in range(nd):
            lower = mine.get(f"hi{a}")
            if lower is None or not lower.any():
                continue
            others = [i for i in range(nd) if i != a]
            for step in itertools.product((-1, 0, 1), repeat=nd - 1):
                g = list(block.grid_index)
                g[nl + a] += 1
                for i, s in zip(others, step):
                    g[nl + i] += s
                j = plan.index_of(g)
                if j is None or base[j + 1] == base[j]:
                    continue
                upper = faces(j).get(f"lo{a}")
                if upper is None:
                    continue
                pairs = face_pairs(lower, _drop(block.write_roi, a), upper,
                                   _drop(plan[j].write_roi, a))
                if len(pairs):
                    uf.union_pairs(np.c_[base[block.index] + pairs[:, 0] - 1,
                                         base[j] + pairs[:, 1] - 1])
    return uf.labels()
