"""The Segment dock's result layers: one mode's labels, foreground and embeddings, the objects
split only by naive stitching, and the naive / correct / side-by-side views."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap

from ..display import embedding_rgb
from ._common import ImageInput, tile_label

SPLIT = "#ff2bd6"  # outlines of the objects split only by naive stitching


class ResultViews:
    """Mixed into :class:`SegmentWidget` (uses its ``viewer``, ``results``, ``status``,
    ``splits`` and ``view``)."""

    def _show(self, layer: Any, inp: ImageInput, stitch: str, result: Any,
              runs: dict[str, Any], shown: dict[str, dict]) -> Iterator[None]:
        """Put the results on layers, one layer per event-loop turn (see ``Job``)."""
        self._leave_side_by_side()
        self.status.value = "adding result layers…"
        made: dict[str, dict[str, Any]] = {}
        for mode, r in runs.items():
            made[mode] = {}
            yield from self._result_layers(layer, inp, mode, r, shown[mode], made[mode])
        notes = [f"{m}: {r.info.get('n_instances', '?')} objects, {r.info.get('n_tiles')} "
                 f"tiles, {_seconds(r.info)}" for m, r in runs.items()]
        self.status.tooltip = "\n".join(notes)
        if stitch == "both":
            summary = result.summary
            self.splits.value = (f"Seam splits: naive {summary['naive']['seam_splits']} · "
                                 f"correct {summary['correct']['seam_splits']} "
                                 f"({summary.get('split_objects', 0)} objects split only by "
                                 f"naive stitching)")
            split = np.asarray(result.split_map)
            split = split.astype(np.uint32) if split.dtype == bool else split
            key = (layer.name, "split", "both")
            yield
            made["split"] = {"split": self.results.put(
                key, "labels", split,
                f"{layer.name} split only by naive [{tile_label(runs['naive'].plan.tile_shape)}]",
                info={"summary": _jsonable(summary)}, scale=inp.scale, translate=inp.translate,
                colormap=DirectLabelColormap(color_dict={None: SPLIT, 0: "transparent"}),
                opacity=1.0,
            )}
            made["split"]["split"].contour = 2
            self._compare_layers = made
            self.view.visible = True
            self.view.value = "correct"
            self._apply_view()
        else:
            self.view.visible = False
        self.status.value = "\n".join(
            f"{m}: {r.info.get('n_instances', '?')} objects · {r.info.get('n_tiles')} tiles · "
            f"{(r.info.get('times') or {}).get('total', 0):.1f} s{_scale(r.info)}"
            for m, r in runs.items())
        self.made = made
        self.last_result = result

    def _result_layers(self, layer: Any, inp: ImageInput, mode: str, r: Any,
                       shown: dict, out: dict[str, Any]) -> Iterator[None]:
        """Add or replace one mode's result layers in ``out``, yielding between layers."""
        tag = f"[{mode} {tile_label(r.plan.tile_shape)}]"
        common = {"scale": inp.scale, "translate": inp.translate}
        info = {"mode": mode, "tile": list(r.plan.tile_shape), "source": layer.name,
                "n_instances": r.info.get("n_instances")}
        if "raw" in shown:
            out["raw"] = self.results.put(
                (layer.name, "raw", mode), "image", shown["raw"],
                f"{layer.name} embedding channels {tag}", info=info, visible=False,
                scale=(1.0, *inp.scale), translate=(0.0, *inp.translate))
            yield
        else:
            self.results.remove((layer.name, "raw", mode))
        # bottom to top: embeddings (hidden, they would cover the image), foreground, labels
        out["embeddings"] = self.results.put(
            (layer.name, "embeddings", mode), "image", shown["rgb"],
            f"{layer.name} embeddings {tag}", info=info, rgb=True, visible=False, **common)
        yield
        out["foreground"] = self.results.put(
            (layer.name, "foreground", mode), "image", r.prediction[-1],
            f"{layer.name} foreground {tag}", info=info, colormap="magma",
            contrast_limits=(0.0, 1.0), blending="additive", visible=False, **common)
        yield
        out["labels"] = self.results.put(
            (layer.name, "labels", mode), "labels", r.labels, f"{layer.name} labels {tag}",
            info=info, **common)
        yield

    # -- naive / correct views ---------------------------------------------------------
    def _apply_view(self, *_: Any) -> None:
        made = getattr(self, "_compare_layers", None)
        if not made:
            return
        view = self.view.value
        if view == "side by side":
            self._enter_side_by_side(made)
            return
        self._leave_side_by_side()
        for mode in ("naive", "correct"):
            made[mode]["labels"].visible = mode == view
        split = made.get("split", {}).get("split")
        if split is not None:
            split.visible = view == "naive"

    def _enter_side_by_side(self, made: dict) -> None:
        keep = {id(made[m]["labels"]) for m in ("naive", "correct")}
        if "split" in made:
            keep.add(id(made["split"]["split"]))
        if not self._hidden_for_grid:
            self._hidden_for_grid = {id(lyr): (lyr, lyr.visible) for lyr in self.viewer.layers}
        for lyr in self.viewer.layers:
            lyr.visible = id(lyr) in keep
        _grid(self.viewer).enabled = True

    def _leave_side_by_side(self) -> None:
        if not self._hidden_for_grid:
            return
        for lyr, visible in self._hidden_for_grid.values():
            if any(lyr is other for other in self.viewer.layers):
                lyr.visible = visible
        self._hidden_for_grid = {}
        _grid(self.viewer).enabled = False


def _grid(viewer: Any) -> Any:
    """napari's grid-mode settings (``viewer.canvas.grid`` since 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _display_arrays(r: Any, raw: bool, ndim: int) -> dict[str, np.ndarray]:
    pred = r.prediction
    emb = pred[:-1]
    fg = pred[-1] > float(r.info.get("fg_threshold", 0.5))
    out = {"rgb": embedding_rgb(emb, fg)}
    if raw:
        out["raw"] = emb
    return out


def _seconds(info: dict) -> str:
    times = info.get("times") or {}
    if not times:
        return ""
    return f"{times.get('predict', 0):.1f} s predict + {times.get('cluster', 0):.1f} s mean-shift"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _scale(info: dict) -> str:
    """The bandwidth a relative bandwidth gave, for the status line ('' without one)."""
    if not info.get("diameter"):
        return ""
    return f" · bandwidth {info['bandwidth']:.3g} ({info['diameter']:.0f} px objects)"
