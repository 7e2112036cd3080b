"""Display transforms for result layers: the core's projection (run in the worker thread)."""

from __future__ import annotations

from ..display import embedding_rgb

__all__ = ["embedding_rgb"]
