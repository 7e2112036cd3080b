"""napari widgets (the only part of the package that imports Qt and napari)."""

from .segment_widget import SegmentWidget
from .train_widget import TrainWidget

__all__ = ["SegmentWidget", "TrainWidget"]
