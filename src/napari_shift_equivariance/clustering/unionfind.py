"""Union-find (disjoint sets) over integer ids ``0..n-1``, fed with arrays of pairs."""

from __future__ import annotations

import numpy as np


class UnionFind:
    """Disjoint sets with path halving and union by size; ``O(n)`` memory whatever the number
    of pairs, so pairs can be fed face by face."""

    def __init__(self, n: int):
        self.parent = np.arange(int(n), dtype=np.int64)
        self.size = np.ones(int(n), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.parent)

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = int(p[i])
        return int(i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def union_pairs(self, pairs: np.ndarray) -> None:
        """Join every row ``(a, b)`` of an ``(K, 2)`` integer array."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        for a, b in np.unique(pairs, axis=0):
            if a != b:
                self.union(int(a), int(b))

    def labels(self) -> np.ndarray:
        """Set index per element, ``0..K-1`` numbered by each set's smallest element."""
        roots = np.array([self.find(i) for i in range(len(self))], dtype=np.int64)
        _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))
        return order[inverse].astype(np.int64)
