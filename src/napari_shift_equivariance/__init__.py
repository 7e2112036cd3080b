"""napari-shift-equivariance: metric-learning instance segmentation with exact tile-and-stitch.

The public API is imported lazily so that ``import napari_shift_equivariance`` stays cheap
(napari imports the package to read its manifest).
"""

from __future__ import annotations

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
