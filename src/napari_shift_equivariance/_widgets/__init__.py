"""napari widgets (the only part of the package that imports Qt and napari)."""

from ._dock import ScrollDock, SegmentDock, TrainDock
from .segment_widget import SegmentWidget
from .train_widget import TrainWidget

__all__ = ["ScrollDock", "SegmentDock", "SegmentWidget", "TrainDock", "TrainWidget"]
