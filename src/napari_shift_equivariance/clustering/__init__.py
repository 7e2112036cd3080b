"""Clustering pixel embeddings into instances.

- :mod:`.meanshift`: :func:`mean_shift`, the flat-kernel bin-seeded mean-shift engine (torch,
  tiled, deterministic), and the bandwidth that the loss margins imply;
- :mod:`.components`: :func:`cluster_embeddings`, an embedding image and a foreground mask to
  instance labels, per connected component (default) or over the whole foreground;
- :mod:`.blocks`: ``scope="block"``, component clustering block by block with merging across
  block faces (approximate; the exact blockwise engine is :mod:`..blockwise`);
- :mod:`.reference`: scikit-learn's ``MeanShift`` as a reference backend for comparisons.
"""

from __future__ import annotations

from .components import (
    NO_POSITIONS,
    Positions,
    cluster_embeddings,
    clustering_points,
    components,
    drop_small,
    foreground_points,
    spatial_scale,
    with_positions,
)
from .meanshift import estimate_bandwidth_from_margins, mean_shift

__all__ = [
    "NO_POSITIONS", "Positions", "cluster_embeddings", "clustering_points", "components",
    "drop_small",
    "estimate_bandwidth_from_margins", "foreground_points", "mean_shift", "spatial_scale",
    "with_positions",
]
