"""``scope="block"``: component clustering block by block, merged across block faces.

For images too large to cluster at once in memory: inside each block every connected
component is clustered on its own; then labels touching across a block face are merged when
their mean embeddings are within the bandwidth (transitively). This is an approximation of
the component scope; :mod:`..blockwise` gives labels equal to the in-memory result.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .components import NO_POSITIONS, Engine, Positions, clustering_points, components
from .meanshift import ProgressFn


def cluster_blocks(embeddings, fg: np.ndarray, b: float, block_shape: Sequence[int],
                   engine: Engine, progress: ProgressFn | None = None,
                   positions: Positions = NO_POSITIONS) -> np.ndarray:
    """Component-scope clustering block by block, then merging across block faces (in the
    clustering space: with ``positions``, positions are part of the means compared)."""
    labels = np.zeros(fg.shape, np.uint32)
    origins = list(itertools.product(*(range(0, s, k) for s, k in zip(fg.shape, block_shape))))
    width = embeddings.shape[0] + (fg.ndim if positions.append else 0)
    sums, counts, nlab = [np.zeros((1, width))], [np.ones(1)], 1
    for i, origin in enumerate(origins):
        box = tuple(slice(o, o + k) for o, k in zip(origin, block_shape))
        f = fg[box]
        if f.any():
            pts = clustering_points(embeddings[(slice(None), *box)], f, positions, origin)
            lab = engine(pts, b, groups=components(f)[f] - 1)
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
