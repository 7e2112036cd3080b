"""Models trained since napari started: the Train widget adds, the Segment widget lists."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

from ..model import UNet


@dataclass
class Entry:
    name: str
    model: UNet
    info: dict = field(default_factory=dict)


class ModelRegistry:
    """An ordered name → model store for this process; emits ``changed(name)`` on every add."""

    changed = Signal(str)
    #: ``(ndim, depth, factor)`` chosen in the Segment dock before any model exists; the Train
    #: dock follows it when training from scratch
    geometry_chosen = Signal(int, int, int)

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add(self, model: UNet, name: str | None = None, info: dict | None = None) -> str:
        """Store ``model`` under a new unique name (``name``, else ``trained #n``); return it."""
        base = name or f"trained #{len(self._entries) + 1}"
        unique, i = base, 2
        while unique in self._entries:
            unique, i = f"{base} ({i})", i + 1
        self._entries[unique] = Entry(unique, model, dict(info or {}))
        self.changed.emit(unique)
        return unique

    def get(self, name: str) -> UNet:
        return self._entries[name].model

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.changed.emit("")


#: the process-wide registry
REGISTRY = ModelRegistry()


def connect_while_alive(widget: Any, signal: Any, callback: Callable) -> None:
    """Connect ``callback`` to a registry ``signal`` until the Qt side of ``widget`` (a
    magicgui widget) is destroyed, e.g. when its dock or viewer closes."""
    signal.connect(callback)

    def _disconnect(*_: Any) -> None:
        with contextlib.suppress(Exception):
            signal.disconnect(callback)

    widget.native.destroyed.connect(_disconnect)
