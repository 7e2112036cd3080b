"""The objects' scale in an image, for a bandwidth that follows it.

With coordinates (:func:`~..loss.with_coordinates`) an object's pixels point at its centre,
and the embedding distance between touching neighbours grows with their size: small
touching nuclei want a narrow bandwidth, large ones a wide one, and one fixed bandwidth is a
compromise between them. A *relative* bandwidth is ``r x coord_scale x D``: a fraction ``r``
of the embedding span of an object of the image's median diameter ``D``. ``D`` comes from a
first clustering, at the fixed bandwidth, of a central sample of the image (the middle plane
over leading axes, at most :data:`SAMPLE_EDGE` pixels per axis), so that a blockwise run
finds the same ``D`` from the same pixels as a run in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Roi, central_roi, object_diameter

#: edge of the central sample per spatial dimensionality (2D: 512², 3D: 128³ pixels)
SAMPLE_EDGE = {2: 512, 3: 128}


def sample_roi(spatial_shape: Sequence[int]) -> Roi:
    """The central box of the image whose objects set the scale."""
    return central_roi(spatial_shape, SAMPLE_EDGE.get(len(spatial_shape), 128))


def sample_plane(leading_shape: Sequence[int]) -> tuple[int, ...]:
    """The index over the leading axes (time, planes) of the plane that sets the scale."""
    return tuple(int(n) // 2 for n in leading_shape)


def median_diameter(labels: np.ndarray, roi: Roi, spatial_shape: Sequence[int]) -> float | None:
    """The diameter of a disk / ball of the median size of the objects in ``labels`` (the
    sample ``roi`` of an image of ``spatial_shape``), without those cut by a face of the
    sample that lies inside the image (unless all are); ``None`` without objects."""
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    ids = np.nonzero(sizes)[0]
    ids = ids[ids > 0]
    if not len(ids):
        return None
    cut = np.zeros(len(sizes), bool)
    for a, (b, e, s) in enumerate(zip(roi.begin, roi.end, spatial_shape)):
        if b > 0:
            cut[np.take(labels, 0, axis=a)] = True
        if e < s:
            cut[np.take(labels, -1, axis=a)] = True
    whole = ids[~cut[ids]]
    keep = whole if len(whole) else ids
    return object_diameter(float(np.median(sizes[keep])), labels.ndim)


def scaled_bandwidth(relative: float, coord_scale: float, diameter: float) -> float:
    """``relative x coord_scale x diameter``: the bandwidth in embedding units."""
    return float(relative) * float(coord_scale) * float(diameter)
