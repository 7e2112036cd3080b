"""The docks as napari gets them: each form inside a scroll area.

napari puts a plugin widget straight into its dock, with no scrolling; a form taller than the
window (the Segment dock with its option sections open, on a laptop screen) is then squeezed
until its rows overlap. Wrapped in a :class:`ScrollDock` it keeps its natural height and
scrolls instead.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea


class ScrollDock(QScrollArea):
    """A magicgui container (``inner``) in a vertical scroll area."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(inner.native)
        bar = self.verticalScrollBar().sizeHint().width()
        self.setMinimumWidth(inner.native.minimumSizeHint().width() + bar)
        self.setWindowTitle(type(inner).__name__)

    def reset_choices(self, *args: Any) -> None:
        """napari calls this when layers change (the layer lists of the form)."""
        self.inner.reset_choices(*args)


class SegmentDock(ScrollDock):
    """The Segment dock (``.inner`` is the :class:`SegmentWidget`)."""

    def __init__(self, napari_viewer: Any) -> None:
        from .segment_widget import SegmentWidget

        super().__init__(SegmentWidget(napari_viewer))


class TrainDock(ScrollDock):
    """The Train dock (``.inner`` is the :class:`TrainWidget`)."""

    def __init__(self, napari_viewer: Any) -> None:
        from .train_widget import TrainWidget

        super().__init__(TrainWidget(napari_viewer))
