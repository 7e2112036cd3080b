"""Bookkeeping of the layers a widget made, so that re-running replaces only those.

A result layer is "ours" when this object created it and it is still in the viewer (identity,
not name: a user's layer that happens to carry the same name, or a duplicate of one of ours,
is never touched). Every layer made here also carries ``metadata[MARKER]`` describing it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

MARKER = "napari_shift_equivariance"

_ADD = {"image": "add_image", "labels": "add_labels", "shapes": "add_shapes"}
_KEEP = ("visible", "opacity", "blending")


class ResultLayers:
    """The result layers of one widget in one viewer, keyed by e.g. ``(image, role, mode)``."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self._owned: dict[Hashable, Any] = {}

    def get(self, key: Hashable) -> Any | None:
        """Our layer for ``key`` if it is still in the viewer."""
        layer = self._owned.get(key)
        if layer is None or not any(layer is other for other in self.viewer.layers):
            self._owned.pop(key, None)
            return None
        return layer

    def is_ours(self, layer: Any) -> bool:
        return any(layer is mine for mine in self._owned.values())

    def items(self) -> list[tuple[Hashable, Any]]:
        return [(k, layer) for k in list(self._owned) if (layer := self.get(k)) is not None]

    def unique_name(self, name: str, mine: Any | None = None) -> str:
        """``name``, or ``name (2)``, ``name (3)``… if another layer already has it."""
        taken = {layer.name for layer in self.viewer.layers if layer is not mine}
        candidate, i = name, 2
        while candidate in taken:
            candidate, i = f"{name} ({i})", i + 1
        return candidate

    def put(self, key: Hashable, kind: str, data: Any, name: str,
            info: dict | None = None, **kwargs: Any) -> Any:
        """Create the layer for ``key``, or replace our previous one (same place in the list)."""
        old = self.get(key)
        name = self.unique_name(name, mine=old)
        metadata = {MARKER: {"key": [str(k) for k in _as_tuple(key)], **(info or {})}}
        if old is not None and self._can_update(old, kind, data, kwargs):
            old.data = data
            old.name = name
            old.metadata = metadata
            for attr in ("scale", "translate"):
                if attr in kwargs:
                    setattr(old, attr, kwargs[attr])
            if kind == "image" and "contrast_limits" not in kwargs:
                old.reset_contrast_limits()
            old.refresh()
            return old
        index = kept = None
        if old is not None:
            index = self.viewer.layers.index(old)
            kept = {a: getattr(old, a) for a in _KEEP}
            self.viewer.layers.remove(old)
        layer = getattr(self.viewer, _ADD[kind])(data, name=name, metadata=metadata, **kwargs)
        if index is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), index)
            for attr, value in kept.items():
                setattr(layer, attr, value)
        self._owned[key] = layer
        return layer

    def remove(self, key: Hashable) -> None:
        layer = self.get(key)
        if layer is not None:
            self.viewer.layers.remove(layer)
        self._owned.pop(key, None)

    @staticmethod
    def _can_update(old: Any, kind: str, data: Any, kwargs: dict) -> bool:
        if kind == "shapes" or type(old).__name__.lower() != kind:
            return False
        if getattr(data, "ndim", None) != old.data.ndim:
            return False
        return not (kind == "image" and bool(kwargs.get("rgb", False)) != bool(old.rgb))


def _as_tuple(key: Hashable) -> tuple:
    return key if isinstance(key, tuple) else (key,)
