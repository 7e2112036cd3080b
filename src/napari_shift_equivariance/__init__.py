"""napari-shift-equivariance: metric-learning instance segmentation with exact tile-and-stitch.

The public API is imported lazily so that ``import napari_shift_equivariance`` stays cheap
(napari imports the package to read its manifest).
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    # core engine
    "Coordinate": "geometry", "Roi": "geometry", "UNetGeometry": "geometry",
    "ModelConfig": "model", "UNet": "model", "build_model": "model", "load_model": "model",
    "save_model": "model",
    "TilePlan": "tiling", "plan_tiles": "tiling",
    "Predictor": "predict", "predict": "predict",
    "read_image": "io", "write_labels": "io",
    "NSEError": "errors", "Cancelled": "errors",
    "ClusterOptions": "options", "PredictOptions": "options",
    # training, clustering, segmentation
    "TrainConfig": "train", "train": "train", "calibrate": "train",
    "mean_shift": "clustering", "cluster_embeddings": "clustering",
    "segment": "segment", "segment_prediction": "segment", "SegmentResult": "segment",
    "compare": "compare", "save_comparison": "compare", "sweep": "compare",
    "segment_blockwise": "blockwise", "predict_blockwise": "blockwise",
    "run_blockwise": "blockwise",
    "evaluate": "metrics", "Evaluation": "metrics", "watershed_baseline": "baseline",
    "run_demo": "demo",
    # sharing and batch work
    "export_bioimageio": "export",
    "expand_inputs": "batch", "run_batch": "batch", "BatchItem": "batch",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Functions that share their module's name (``segment.segment``, ``train.train``, ...).
_SAME_NAME = frozenset(name for name, module in _API.items() if name == module)


class _Package(types.ModuleType):
    """Importing a submodule stores it as an attribute of the package, which would shadow the
    function of the same name (``from napari_shift_equivariance import segment`` would give
    the module once anything imported ``napari_shift_equivariance.segment``): those names
    always give the function. The modules stay in ``sys.modules`` for ``from ... import``."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name in _SAME_NAME and isinstance(value, types.ModuleType):
            return getattr(value, name)
        return value


sys.modules[__name__].__class__ = _Package
