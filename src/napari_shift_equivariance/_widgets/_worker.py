"""Run package calls in a napari thread worker; progress and results come back on the UI thread.

The work function never raises into napari (that would open a traceback notification): it
returns ``("ok", value)``, ``("cancelled", exc)`` or ``("error", exc)``, and the widget
decides what to show. Progress reports from the worker are throttled before they cross
threads, so a fast loop cannot flood the event loop.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Qt, QTimer, Signal, Slot

from ..errors import Cancelled
from ._common import report_error


class _Relay(QObject):
    """Lives in the UI thread; ``emit`` from any thread calls ``callback`` in the UI thread."""

    sig = Signal(object)

    def __init__(self, callback: Callable[[Any], None]) -> None:
        super().__init__()
        self._callback = callback
        self.active = True
        self.sig.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _deliver(self, payload: Any) -> None:
        if self.active:
            self._callback(payload)


def detach_on_close(widget: Any) -> None:
    """When the Qt side of magicgui ``widget`` is destroyed (dock or viewer closed), stop its
    running ``widget.job`` and drop whatever it still reports."""

    def _detach(*_: Any) -> None:
        job = getattr(widget, "job", None)
        if job is not None and job.running:
            job.detach()

    widget.native.destroyed.connect(_detach)


class Job:
    """``func(report, cancel)`` in a worker thread.

    ``report(payload, force=False)`` forwards ``payload`` to ``on_progress`` at most every
    ``interval`` seconds (``force`` always). ``on_done(status, value)`` runs in the UI thread
    with status ``ok``, ``cancelled`` or ``error``; it may return a generator, whose steps then
    run one per event-loop turn.
    """

    def __init__(self, func: Callable[[Callable, threading.Event], Any],
                 on_done: Callable[[str, Any], None],
                 on_progress: Callable[[Any], None] | None = None,
                 interval: float = 0.1) -> None:
        self.cancel = threading.Event()
        self.interval = interval
        self._last = 0.0
        self._func = func
        self._on_done = on_done
        self._relay = _Relay(on_progress) if on_progress is not None else None
        self.running = False
        self._detached = False
        self.worker = create_worker(self._run, _start_thread=False,
                                    _connect={"returned": self._returned})

    def detach(self) -> None:
        """Stop the work and drop its late reports and result (the widget is gone)."""
        self.cancel.set()
        self._detached = True
        if self._relay is not None:
            self._relay.active = False

    def report(self, payload: Any, force: bool = False) -> None:
        if self._relay is None or self._detached:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            self._relay.sig.emit(payload)

    def _run(self) -> tuple[str, Any]:  # in the worker thread
        try:
            return "ok", self._func(self.report, self.cancel)
        except Cancelled as exc:
            return "cancelled", exc
        except Exception as exc:  # noqa: BLE001 - shown to the user as a notification
            return "error", exc

    def _returned(self, result: tuple[str, Any]) -> None:
        status, value = result
        if self._detached:
            self.running = False
            return
        try:
            steps = self._on_done(status, value)
        except Exception as exc:  # noqa: BLE001 - a notification, not a traceback dialog
            self.running = False
            report_error(exc, "showing the results")
            return
        if inspect.isgenerator(steps):
            self._step(steps)
        else:
            self.running = False

    def _step(self, steps: Iterator[Any]) -> None:
        """One step of ``on_done``'s generator per event-loop turn, so that putting several
        large layers into the viewer never blocks the UI for all of them at once; the job
        counts as running until the last step."""
        if self._detached:
            self.running = False
            return
        try:
            next(steps)
        except StopIteration:
            self.running = False
            return
        except Exception as exc:  # noqa: BLE001 - a notification, not a traceback dialog
            self.running = False
            report_error(exc, "showing the results")
            return
        QTimer.singleShot(0, lambda: self._step(steps))

    def start(self) -> None:
        self.running = True
        self.worker.start()
