"""Segment or predict images of any size in bounded memory, on one machine or a dask cluster.

The labels are the same partition as :func:`~napari_shift_equivariance.segment.segment` in
memory (scope ``"component"``): blocks of ``n * tile`` on the global ``f^l`` grid predict the
whole-image plan's own tiles, connected components are merged exactly across block faces, and
each component is clustered once from all its voxels. See ``docs/blockwise.md``.

- :func:`segment_blockwise` / :func:`predict_blockwise`: run to the end, return a
  :class:`BlockwiseResult`;
- :func:`run_blockwise`: the same work as a generator of :class:`BlockEvent` (per-block
  progress, stop between blocks), for widgets and custom loops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import NSEError
from .engine import BlockEvent, BlockwiseResult, ImageRef, run_blockwise
from .memory import needs_blockwise, parse_size
from .plan import Block, BlockPlan, plan_blocks

__all__ = [
    "Block", "BlockEvent", "BlockPlan", "BlockwiseResult", "ImageRef", "needs_blockwise",
    "parse_size", "plan_blocks", "predict_blockwise", "run_blockwise", "segment_blockwise",
]

#: ``progress(stage, done, total)`` as for :func:`segment`
StageProgress = Callable[[str, int, int], None]


def _drain(events, progress: StageProgress | None) -> BlockwiseResult:
    result = None
    for ev in events:
        if progress is not None and ev.stage != "done":
            progress(ev.stage, ev.done, ev.total)
        if ev.result is not None:
            result = ev.result
    if result is None:  # pragma: no cover - the generator always ends with a result
        raise NSEError("blockwise run ended without a result")
    return result


def segment_blockwise(model: Any, image: Any, out: Any, block: Any = None, client: Any = None,
                      *, progress: StageProgress | None = None, **kwargs: Any
                      ) -> BlockwiseResult:
    """Instance labels of ``image`` written block by block to the zarr store ``out``.

    Parameters
    ----------
    model
        A :class:`~napari_shift_equivariance.model.UNet` or a model spec (``"default"``, a path).
    image
        An array (numpy, zarr, dask) or a path to one (workers open paths themselves).
    out
        ``.zarr`` (a zarr array) or ``.ome.zarr`` / an OME-Zarr image (labels in
        ``labels/<omezarr_name>``). Built as ``out.partial`` and renamed when done.
    block
        Output block size per axis (one int or one per spatial axis), rounded down to a
        multiple of the tile; default 2048 (2D) / 256 (3D).
    client
        A ``dask.distributed.Client``; ``None`` runs in this process.
    progress
        ``progress(stage, done, total)``, stages ``predict``, ``merge``, ``cluster``, ``write``.
    **kwargs
        ``tile``, ``cluster`` (:class:`~napari_shift_equivariance.options.ClusterOptions`),
        ``bandwidth``, ``fg_threshold``, ``min_size``, ``spatial_radius``,
        ``relative_min_size``, ``device``,
        ``batch_size``, ``amp``,
        ``pad``, ``channel_axis``, ``resume``, ``overwrite``, ``cancel``, ``omezarr_name``,
        ``threads_per_worker``: see :func:`run_blockwise`.
    """
    return _drain(run_blockwise(model, image, out, kind="segment", block=block, client=client,
                                **kwargs), progress)


def predict_blockwise(model: Any, image: Any, out: Any, block: Any = None, client: Any = None,
                      *, progress: StageProgress | None = None, **kwargs: Any
                      ) -> BlockwiseResult:
    """The network output ``(E + 1, *leading, *spatial)`` written block by block to ``out``
    (a zarr array chunked one block per chunk); arguments as :func:`segment_blockwise`."""
    for key in ("cluster", "bandwidth", "fg_threshold", "min_size", "spatial_radius",
                "relative_min_size"):
        if kwargs.get(key) is not None:
            raise NSEError(f"predict_blockwise takes no {key}")
    return _drain(run_blockwise(model, image, out, kind="predict", block=block, client=client,
                                **kwargs), progress)
