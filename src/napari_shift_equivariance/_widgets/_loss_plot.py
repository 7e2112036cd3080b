"""A small live loss curve for the Train dock, painted with QPainter (cheap on the UI thread).

``add`` only stores a point; a timer repaints at most every ``REDRAW_MS``, so a fast training
loop cannot flood the UI thread. Drawing is a polyline of at most two points per pixel column,
a few milliseconds even for 10^5 iterations (a matplotlib redraw takes 50–300 ms).
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

REDRAW_MS = 250
EMA = 0.1  # weight of the newest loss in the running mean


class LossPlot(QWidget):
    """Raw loss per iteration (thin) and its running mean (thick) on a log-scaled y axis."""

    def __init__(self, parent: QWidget | None = None, background: str = "#262930",
                 foreground: str = "#d1d2d4", accent: str = "#50a0f0") -> None:
        super().__init__(parent)
        self.setMinimumHeight(160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.colors = {"bg": QColor(background), "fg": QColor(foreground),
                       "accent": QColor(accent)}
        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.means: list[float] = []
        self.draws = 0
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()

    # -- data --------------------------------------------------------------------------
    def clear(self) -> None:
        self.iterations.clear()
        self.losses.clear()
        self.means.clear()
        self.flush()

    def add(self, iteration: int, loss: float) -> None:
        if not math.isfinite(loss) or loss <= 0:
            return
        self.iterations.append(int(iteration))
        self.losses.append(float(loss))
        prev = self.means[-1] if self.means else loss
        self.means.append((1 - EMA) * prev + EMA * loss)
        self._dirty = True

    def flush(self) -> None:
        """Repaint now (end of a run)."""
        self._dirty = True
        self._tick()

    def _tick(self) -> None:
        if self._dirty:
            self._dirty = False
            self.update()

    # -- painting ----------------------------------------------------------------------
    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        self.draws += 1
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.colors["bg"])
        font = p.font()
        font.setPointSizeF(max(6.5, font.pointSizeF() * 0.8))
        p.setFont(font)
        left, bottom = 44, 18
        box = QRectF(left, 6, max(self.width() - left - 8, 10), max(self.height() - bottom - 12,
                                                                     10))
        p.setPen(QPen(self.colors["fg"], 1))
        p.drawRect(box)
        if not self.losses:
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, "loss appears here during training")
            p.end()
            return
        lo, hi = math.log10(min(self.losses)), math.log10(max(self.losses))
        if hi - lo < 0.2:
            mid = (hi + lo) / 2
            lo, hi = mid - 0.1, mid + 0.1
        x_max = max(self.iterations[-1], 1)

        def to_point(it: float, loss: float) -> QPointF:
            x = box.left() + box.width() * it / x_max
            y = box.bottom() - box.height() * (math.log10(loss) - lo) / (hi - lo)
            return QPointF(x, y)

        # y ticks: decades, or a few values inside a narrow range
        ticks = [10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1)
                 if lo <= k <= hi] or [10 ** lo, 10 ** ((lo + hi) / 2), 10 ** hi]
        for t in ticks:
            pt = to_point(0, t)
            p.drawLine(QPointF(box.left() - 3, pt.y()), QPointF(box.left(), pt.y()))
            p.drawText(QRectF(0, pt.y() - 7, left - 5, 14),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{t:.3g}")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), bottom),
                   Qt.AlignmentFlag.AlignLeft, "0")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), bottom),
                   Qt.AlignmentFlag.AlignRight, f"{x_max} iterations")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), bottom),
                   Qt.AlignmentFlag.AlignHCenter,
                   f"loss {self.losses[-1]:.3g} (mean {self.means[-1]:.3g})")
        columns = int(box.width()) * 2
        p.setClipRect(box)
        faint = QColor(self.colors["fg"])
        faint.setAlpha(110)
        for values, color, width in ((self.losses, faint, 1.0),
                                     (self.means, self.colors["accent"], 2.0)):
            idx = _thin(len(values), columns)
            poly = QPolygonF([to_point(self.iterations[i], values[i]) for i in idx])
            p.setPen(QPen(color, width))
            p.drawPolyline(poly)
        p.end()


def _thin(n: int, at_most: int) -> np.ndarray:
    """Indices of at most ``at_most`` points spread over ``n`` (always the last one)."""
    if n <= at_most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, at_most).round().astype(int))
