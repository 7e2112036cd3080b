"""The Segment dock: model and geometry, tile-grid preview, segmentation, naive/correct compare.

Thin by design: plans come from :func:`tiling.plan_tiles`, results from :func:`segment.segment`
and :func:`compare.compare`, run in a thread worker; this module only turns them into layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    PushButton,
    SpinBox,
)

from ..errors import NSEError
from ..geometry import MAX_DEPTH, MAX_FACTOR, UNetGeometry
from ..model import UNet, available_devices
from ..options import PADS, SCOPES, STITCH_MODES, ClusterOptions
from ..tiling import TilePlan, default_tile, plan_tiles
from ._common import (
    ImageInput,
    WrapLabel,
    activity_progress,
    collapsible,
    image_choices,
    image_input,
    insert_after,
    notify,
    report_error,
    tile_label,
)
from ._layers import ResultLayers
from ._long_runs import start_blockwise, start_folder, wants_blockwise
from ._registry import (
    REGISTRY,
    ModelSource,
    bundled_sources,
    connect_while_alive,
    registry_sources,
)
from ._results import ResultViews, _display_arrays
from ._settings import (
    Auto,
    DockSettings,
    SettingsOwner,
    activity_bar_setting,
    build,
    model_file_setting,
    path_or_none,
    setting,
)
from ._worker import Job, detach_on_close

RANDOM = ModelSource.random()
FILE = ModelSource.file()
STITCH = (*STITCH_MODES, "both")
BLOCKWISE = ("auto", "always", "never")
VIEWS = ("naive", "correct", "side by side")
ON_GRID = "#3ddc84"
OFF_GRID = "#ff9f1a"
CONTEXT = "#9aa0a6"


def _lcm(values: Any) -> int:
    return math.lcm(*(int(v) for v in values))


def model_choices(_widget: Any = None) -> list[tuple[str, ModelSource]]:
    """(label, source) pairs: bundled defaults, models trained this session, a file, random."""
    sources = [*bundled_sources(), *registry_sources(), FILE, RANDOM]
    return [(src.label, src) for src in sources]


def _first_model(_dock: Any) -> ModelSource:
    bundled = bundled_sources()
    return bundled[0] if bundled else RANDOM


def _default_tile(dock: SegmentWidget) -> int:
    geo = dock.geometry_or_none() or dock._form_geometry()
    return int(max(default_tile(geo, str(dock.device.value))))



_AUTO = "auto (model)"

#: The Segment dock's form, in the order its values are applied (causes before effects);
#: the only place its defaults are written.
SETTINGS = (
    setting("ndim", ComboBox, 2, label="Dimensions", choices=[2, 3]),
    setting("depth", SpinBox, 3, label="Depth l", min=1, max=MAX_DEPTH),
    setting("factor", SpinBox, 2, label="Pooling factor f", min=2, max=MAX_FACTOR),
    setting("init_seed", SpinBox, 0, label="Init seed", min=0, max=2**31 - 1,
            tooltip="seed of the untrained model's random weights"),
    model_file_setting(),
    setting("model", ComboBox, _first_model, label="Model", choices=model_choices,
            encode=str, decode=ModelSource.parse),
    setting("stitch", ComboBox, "correct", label="Stitching", choices=list(STITCH)),
    setting("device", ComboBox, "auto", label="Device", choices=available_devices()),
    setting("tile", SpinBox, _default_tile, label="Output tile", min=1, max=8192),
    # clustering and display options
    setting("bandwidth", Auto, None, label="Bandwidth", auto_text=_AUTO, min=0.01, max=100.0,
            step=0.05, tooltip="mean-shift bandwidth in embedding units; auto: the model's "
            "calibrated value, else the one its loss margins imply"),
    setting("relative_bandwidth", Auto, None, label="Bandwidth (× object)", auto_text=_AUTO,
            min=0.0, max=5.0, step=0.01, tooltip="a bandwidth that follows the objects' "
            "size: this fraction of the embedding span of an object of the image's median "
            "diameter, found at the bandwidth above in a central sample; 0: off; auto: the "
            "model's calibrated value, else 0 (off when a bandwidth is set)"),
    setting("fg_threshold", Auto, None, label="Foreground >", auto_text=_AUTO, min=0.01,
            max=0.99, step=0.05, tooltip="pixels with a higher foreground probability are "
            "clustered; auto: the model's calibrated threshold, else 0.5"),
    setting("min_size", Auto, None, label="Min size (px)", spin=SpinBox, auto_text=_AUTO,
            min=0, max=100_000, tooltip="smaller objects become background; auto: the "
            "model's calibrated size, else 10 px (2D) / 30 voxels (3D)"),
    setting("relative_min_size", Auto, None, label="Min size (× median)", auto_text=_AUTO,
            min=0.0, max=1.0, step=0.05, tooltip="also remove objects smaller than this "
            "fraction of the image's median object size (fragments of over-split objects); "
            "0: off; auto: the model's calibrated fraction, else 0"),
    setting("spatial_radius", Auto, None, label="Spatial radius (px)", auto_text=_AUTO,
            min=0.0, max=1000.0, step=0.5, tooltip="cluster embeddings and pixel positions "
            "together, this many pixels weighing one bandwidth (about the objects' radius to "
            "diameter; separates touching objects); 0: embeddings only; auto: the model's "
            "calibrated value, else 0"),
    setting("scope", ComboBox, "component", label="Mean-shift scope", choices=list(SCOPES),
            tooltip="cluster each connected foreground component, the whole plane, or "
            "spatial blocks"),
    setting("pad", ComboBox, "reflect", label="Padding", choices=list(PADS),
            tooltip="how the image is extended past its border for the network's context"),
    setting("batch_size", Auto, None, label="Batch (tiles)", spin=SpinBox, min=1, max=256,
            shown=4, tooltip="tiles per forward pass; auto: as many as fit the device"),
    setting("raw_channels", CheckBox, False, text="also add raw embedding channels"),
    setting("context_boxes", CheckBox, False, text="preview: also show context (input) boxes"),
    activity_bar_setting(),
    # large images: blockwise into a zarr store
    setting("blockwise", ComboBox, "auto", label="Blockwise", choices=list(BLOCKWISE),
            tooltip="auto: blockwise for a dask/zarr-backed or multiscale layer, or when the "
            "prediction would not fit in memory (correct stitching only)"),
    setting("block", Auto, None, label="Block (px)", spin=SpinBox, min=1, max=1_000_000,
            shown=2048, tooltip="output block per axis, rounded down to a multiple of the "
            "tile; auto: 2048 (2D) / 256 (3D)"),
    setting("store", FileEdit, "", label="Labels store", mode="w", filter="*.zarr",
            encode=path_or_none, valid=lambda p: Path(p).parent.is_dir(),
            tooltip="a .zarr (or .ome.zarr) the labels are written to, block by block; an "
            "interrupted run resumes into it"),
    setting("overwrite_store", CheckBox, False, persist=False,
            text="overwrite the store if it exists"),
    # a folder of images
    setting("folder_in", FileEdit, "", label="Image folder", mode="d", encode=path_or_none,
            valid=lambda p: Path(p).is_dir()),
    setting("folder_out", FileEdit, "", label="Output folder", mode="d",
            encode=path_or_none, valid=lambda p: Path(p).parent.is_dir(),
            tooltip="one labels file per image and summary.csv"),
    setting("folder_suffix", ComboBox, ".tif", label="Output format",
            choices=[".tif", ".zarr", ".npy"]),
    setting("overwrite_outputs", CheckBox, False, persist=False,
            text="redo images whose output exists"),
)


def tile_rectangles(plan: TilePlan, context: bool = False) -> tuple[list[np.ndarray], list[bool]]:
    """Rectangles (napari corner form, pixel edges) of the tiles' output boxes (or input boxes
    with ``context``) in the last two spatial axes; tiles of a 3D plan that share a footprint
    give one rectangle. Also whether each tile's origin lies on the global ``f^l`` grid."""
    rects: dict[tuple, tuple[np.ndarray, bool]] = {}
    for t in plan.tiles:
        roi = t.input_roi if context else t.output_roi
        b, e = roi.begin[-2:], roi.end[-2:]
        key = (*b, *e)
        on = plan.on_grid(t)
        if key not in rects:
            rects[key] = (np.array([[b[0] - 0.5, b[1] - 0.5], [e[0] - 0.5, e[1] - 0.5]]), on)
        elif not on:
            rects[key] = (rects[key][0], False)
    values = list(rects.values())
    return [r for r, _ in values], [on for _, on in values]


class SegmentWidget(SettingsOwner, Container, ResultViews):
    """Segment an image layer with tile-and-stitch; preview tiles; compare naive vs correct."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.results = ResultLayers(napari_viewer)
        self.job: Job | None = None
        self.last_result: Any = None
        self._hidden_for_grid: dict[int, tuple[Any, bool]] = {}

        self.image = ComboBox(label="Image", choices=lambda _w: image_choices(self.viewer),
                              nullable=False)
        build(SETTINGS, self)
        self.settings = DockSettings("segment", SETTINGS, self)
        self.geometry_info = WrapLabel(label="Geometry")
        self.tile_info = WrapLabel(label="")
        self.cluster_info = WrapLabel(lines=2)
        self.block_info = WrapLabel(lines=2)
        self.defaults_btn = PushButton(text="Restore defaults",
                                       tooltip="every setting of this dock back to its default")
        self.preview_btn = PushButton(text="Preview tile grid")
        self.segment_btn = PushButton(text="Segment")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.status = WrapLabel(value="ready", lines=3)
        self.splits = WrapLabel(value="Seam splits: run with stitching 'both'", lines=2)
        self.view = ComboBox(label="Compare view", choices=list(VIEWS), value="correct",
                             visible=False)
        self.extend([
            self.image, self.model, self.model_file, self.ndim, self.depth, self.factor,
            self.init_seed, self.geometry_info, self.stitch, self.tile, self.tile_info,
            self.device,
        ])
        self.options_w = Container(widgets=[
            self.bandwidth, self.relative_bandwidth, self.fg_threshold, self.min_size,
            self.relative_min_size, self.spatial_radius, self.cluster_info, self.scope,
            self.pad, self.batch_size, self.raw_channels, self.context_boxes,
            self.napari_progress, self.defaults_btn,
        ])
        buttons = Container(widgets=[self.preview_btn, self.segment_btn, self.cancel_btn],
                            layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        # full-width rows below the form (no label column)
        self.footer = Container(widgets=[buttons, self.status, self.splits,
                                         Container(widgets=[self.view])], labels=False)
        self.footer.margins = (0, 0, 0, 0)
        self.blockwise_w = Container(widgets=[
            self.blockwise, self.block, self.store, self.overwrite_store, self.block_info])
        self.folder_btn = PushButton(text="Segment folder")
        self.folder_w = Container(widgets=[
            self.folder_in, self.folder_out, self.folder_suffix, self.overwrite_outputs,
            self.folder_btn])
        # raw Qt pieces go in last: magicgui counts only its own widgets when inserting
        self.options_box = collapsible("Clustering and display options", self.options_w)
        self.blockwise_box = collapsible("Large images: blockwise into zarr", self.blockwise_w)
        self.folder_box = collapsible("Folder of images", self.folder_w)
        insert_after(self, self.device, self.folder_box)
        insert_after(self, self.device, self.blockwise_box)
        insert_after(self, self.device, self.options_box)
        self.native.layout().addWidget(self.footer.native)
        self.native.layout().addStretch(1)  # spare height goes below the form

        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._on_model_changed)
        for w in (self.ndim, self.depth, self.factor, self.init_seed):
            w.changed.connect(self._on_geometry_changed)
        self.stitch.changed.connect(self._on_stitch_changed)
        self.tile.changed.connect(self._on_tile_changed)
        self.preview_btn.changed.connect(self.preview)
        self.segment_btn.changed.connect(self.run)
        self.folder_btn.changed.connect(self.run_folder)
        self.cancel_btn.changed.connect(self.cancel)
        self.defaults_btn.changed.connect(self.restore_defaults)
        self.view.changed.connect(self._apply_view)
        connect_while_alive(self, REGISTRY.changed, self._on_registry_changed)
        detach_on_close(self)
        self._load_settings("start")  # the values of the last session, else the defaults

    def _settings_applied(self) -> None:
        self._on_model_changed()

    # -- model and geometry ------------------------------------------------------------
    def _form_geometry(self) -> UNetGeometry:
        return UNetGeometry.create(int(self.ndim.value), int(self.depth.value),
                                   int(self.factor.value))

    def source(self) -> ModelSource:
        """The chosen model source, completed from the form (file path, l, f, seed)."""
        choice = self.model.value
        if choice is None:
            raise NSEError("choose a model")
        return choice.complete(path=path_or_none(self.model_file.value),
                               ndim=int(self.ndim.value), depth=int(self.depth.value),
                               factor=int(self.factor.value), seed=int(self.init_seed.value))

    def geometry_or_none(self) -> UNetGeometry | None:
        try:
            return self.source().geometry()
        except NSEError:
            return None

    def current_model(self, build: bool = True) -> UNet | None:
        """The chosen model (loaded once per process, then shared). For 'random' with
        ``build=False``: ``None`` (its geometry is the form's)."""
        source = self.source()
        if source.kind == "random" and not build:
            return None
        return source.load()

    def _on_model_changed(self, *_: Any) -> None:
        choice = self.model.value
        self.model_file.visible = choice == FILE
        free = choice == RANDOM
        for w in (self.ndim, self.depth, self.factor, self.init_seed):
            w.enabled = free
        self.init_seed.visible = free
        try:
            model = self.current_model(build=False)
        except NSEError as exc:
            self.geometry_info.value = str(exc)
            self.cluster_info.value = ""
            if choice == FILE and path_or_none(self.model_file.value) and not self._restoring:
                report_error(exc, "loading the model")
            return
        if model is not None:
            cfg = model.config
            with _blocked(self.ndim, self.depth, self.factor):
                self.ndim.value = cfg.ndim
                self.depth.value = cfg.depth
                self.factor.value = max(cfg.factor)
        self._on_geometry_changed()

    def _on_geometry_changed(self, *_: Any) -> None:
        geo = self.geometry_or_none()
        if geo is None:
            return
        if self.model.value == RANDOM and not self._restoring:
            REGISTRY.geometry_chosen.emit(geo.ndim, geo.depth, max(geo.factor))
        self.geometry_info.value = describe_geometry(geo)
        self._show_model_clustering()
        self._on_stitch_changed()

    def _show_model_clustering(self) -> None:
        """What 'auto (model)' stands for with the chosen model."""
        try:
            config = self.source().config()
        except NSEError:
            return
        auto = ClusterOptions().resolve(config)
        for w, value in ((self.bandwidth, auto.bandwidth),
                         (self.relative_bandwidth, auto.relative_bandwidth),
                         (self.fg_threshold, auto.fg_threshold), (self.min_size, auto.min_size),
                         (self.relative_min_size, auto.relative_min_size),
                         (self.spatial_radius, auto.spatial_radius)):
            w.show_auto(value)
        extra = config.extra or {}
        calibrated = [k for k in ("bandwidth", "fg_threshold", "min_size") if k in extra]
        data = (extra.get("calibration") or {}).get("data") or "held-out images"
        how = (f"calibrated on {data}" if calibrated else
               "not calibrated: bandwidth from the loss margins")
        scale = (f" ({auto.relative_bandwidth:.3g} × object)" if auto.relative_bandwidth
                 else "")
        self.cluster_info.value = (f"auto (model): bandwidth {auto.bandwidth:.3g}{scale} · "
                                   f"foreground > {auto.fg_threshold:.2f} · min size "
                                   f"{auto.min_size} px, {auto.relative_min_size:.2g} × "
                                   f"median · spatial radius "
                                   f"{auto.spatial_radius:.3g} px — {how}")

    def _on_registry_changed(self, name: str) -> None:
        self.model.reset_choices()
        if name and ModelSource.registry(name) in [v for _, v in model_choices()]:
            self.model.value = ModelSource.registry(name)

    # -- tile size ---------------------------------------------------------------------
    def _grid_step(self) -> int:
        geo = self.geometry_or_none()
        return _lcm(geo.grid) if geo is not None else 1

    def _on_stitch_changed(self, *_: Any) -> None:
        step = self._grid_step()
        correct = self.stitch.value == "correct"
        self.tile.step = step if correct else 1
        self.tile.min = step if correct else 1
        self.tile.enabled = self.stitch.value != "whole"
        self._on_tile_changed()

    def _on_tile_changed(self, *_: Any) -> None:
        step = self._grid_step()
        value = int(self.tile.value)
        if self.stitch.value == "correct" and value % step:
            self.tile.value = max(step, value // step * step)  # re-enters with a valid value
            return
        snapped = max(step, value // step * step)
        if self.stitch.value == "whole":
            self.tile_info.value = ("one pass over the whole image, no tiles (the memory "
                                    "of the whole prediction at once)")
        elif self.stitch.value == "correct":
            self.tile_info.value = f"{value} = {value // step}·{step} (n·f^l): exact stitching"
        elif value % step:
            self.tile_info.value = (f"{value} is off the f^l = {step} grid: naive tiles make "
                                    f"seams" + (f"; correct uses {snapped}"
                                                if self.stitch.value == "both" else ""))
        else:
            self.tile_info.value = (f"{value} is a multiple of f^l = {step}: naive tiles stay "
                                    f"on the grid (no seams); pick another size to see them")

    # -- inputs ------------------------------------------------------------------------
    def _input(self, model: UNet | None) -> tuple[Any, ImageInput]:
        layer = self.image.value
        if layer is None:
            raise NSEError("add an image layer first (File ▸ Open Sample ▸ "
                           "Shift-Equivariant Segmentation has some)")
        cfg = model.config if model is not None else None
        ndim = cfg.ndim if cfg else int(self.ndim.value)
        return layer, image_input(layer, ndim, cfg.in_channels if cfg else 1)

    def _modes(self) -> list[str]:
        return ["naive", "correct"] if self.stitch.value == "both" else [self.stitch.value]

    def _tile(self) -> int | None:
        return None if self.stitch.value == "whole" else int(self.tile.value)

    # -- preview -----------------------------------------------------------------------
    def preview(self, *_: Any) -> list[Any]:
        """Add or update the tile-grid Shapes layer(s) for the current settings."""
        try:
            geo = self.geometry_or_none()
            model = self.current_model(build=False)
            if geo is None:
                raise NSEError("choose a model first")
            layer, inp = self._input(model)
            spatial = inp.result_shape[-geo.ndim:]
            out, notes = [], []
            for key, lyr in self.results.items():  # one grid at a time, unless comparing
                if key[0] == layer.name and key[1] in ("grid", "context"):
                    lyr.visible = key[2] in self._modes()
            for mode in self._modes():
                plan = plan_tiles(spatial, geo, self._tile(), mode)
                out.append(self._grid_layer(layer, inp, plan))
                if self.context_boxes.value:
                    self._grid_layer(layer, inp, plan, context=True)
                else:
                    self.results.remove((layer.name, "context", mode))
                off = sum(not plan.on_grid(t) for t in plan.tiles)
                notes.append(f"{mode}: {len(plan)} tiles of {tile_label(plan.tile_shape)}"
                             + (f", {off} off the f^l grid" if off else ""))
        except NSEError as exc:
            report_error(exc, "preview")
            return []
        self.status.value = "\n".join(notes)
        return out

    def _grid_layer(self, layer: Any, inp: ImageInput, plan: TilePlan,
                    context: bool = False) -> Any:
        rects, on_grid = tile_rectangles(plan, context)
        role = "context" if context else "grid"
        colors = [CONTEXT if context else (ON_GRID if on else OFF_GRID) for on in on_grid]
        width = max(1.0, max(plan.image_shape[-2:]) / 256)
        name = (f"{layer.name} tile {'context' if context else 'grid'} "
                f"[{plan.mode} {tile_label(plan.tile_shape)}]")
        return self.results.put(
            (layer.name, role, plan.mode), "shapes", rects, name,
            info={"mode": plan.mode, "tile": list(plan.tile_shape), "n_tiles": len(plan)},
            shape_type="rectangle", edge_color=colors, face_color="transparent",
            edge_width=width * (0.5 if context else 1.0), opacity=0.6 if context else 1.0,
            features={"on_grid": on_grid}, scale=inp.scale[-2:], translate=inp.translate[-2:],
        )

    # -- segmentation ------------------------------------------------------------------
    def run(self, *_: Any) -> Job | None:
        """Start segmenting in a worker thread; returns the job (None if nothing started)."""
        if self.job is not None and self.job.running:
            notify("a segmentation is already running")
            return None
        try:
            model = self.current_model()
            layer, inp = self._input(model)
            options = self._options()
            # plan now so that a bad tile size fails here with a message, not in the thread
            for mode in self._modes():
                plan_tiles(inp.result_shape[-model.config.ndim:], model.config.geometry,
                           self._tile(), mode)
            if wants_blockwise(self, layer, inp, model):
                return self._start(start_blockwise(self, model, layer, inp))
        except NSEError as exc:
            report_error(exc, "segmentation")
            return None
        stitch, tile, raw = self.stitch.value, self._tile(), bool(self.raw_channels.value)
        pbar = activity_progress(bool(self.napari_progress.value), 0, "segment: starting")

        def work(report, cancel):
            def progress(stage: str, done: int, total: int) -> None:
                report((stage, done, total), force=done in (0, total))
            kw = dict(options, channel_axis=inp.channel_axis, progress=progress,
                      cancel=cancel.is_set)
            if stitch == "both":
                from ..compare import compare

                result = compare(model, inp.data, tile, **kw)
                runs = {"naive": result.naive, "correct": result.correct}
            else:
                from ..segment import segment

                result = segment(model, inp.data, stitch, tile, **kw)
                runs = {stitch: result}
            report(("display", 0, 1), force=True)
            shown = {m: _display_arrays(r, raw, model.config.ndim) for m, r in runs.items()}
            return result, runs, shown

        def done(status: str, value: Any) -> Iterator[None] | None:
            current["finished"] = True
            pbar.close()
            self._set_running(False)
            if status == "ok":
                return self._show(layer, inp, stitch, *value)
            elif status == "cancelled":
                self.status.value = "cancelled"
                notify("segmentation cancelled")
            else:
                self.status.value = f"failed: {value}"
                report_error(value, "segmentation")

        current: dict[str, Any] = {"stage": None, "finished": False}

        def on_progress(payload: tuple[str, int, int]) -> None:
            # napari's progress bar processes events when updated: this can be re-entered,
            # and a late report must not overwrite the final state (pbar is updated last)
            if current["finished"]:
                return
            stage, n, total = payload
            if stage.split()[-1] == "predict":
                self.status.value = f"{stage} {n}/{total} tiles"
            else:  # clustering reports 100 steps per plane
                self.status.value = f"{stage} {100 * n // max(total, 1)}%"
            if pbar.total != total or current["stage"] != stage:
                current["stage"] = stage
                pbar.reset(total=total)
                pbar.set_description(f"segment: {stage}")
            pbar.update(n - pbar.n)

        self.job = Job(work, done, on_progress)
        pbar.cancel_callback = self.job.cancel.set
        self._set_running(True)
        self.status.value = "starting…"
        self.job.start()
        return self.job

    def run_folder(self, *_: Any) -> Job | None:
        """Segment every image of the chosen folder (one labels file each, summary.csv)."""
        if self.job is not None and self.job.running:
            notify("a segmentation is already running")
            return None
        try:
            return self._start(start_folder(self, self.current_model()))
        except NSEError as exc:
            report_error(exc, "segmenting the folder")
            return None

    def _start(self, job: Job) -> Job:
        self.job = job
        self._set_running(True)
        self.status.value = "starting…"
        job.start()
        return job

    def cancel(self, *_: Any) -> None:
        """Ask the running job to stop (between batches of tiles)."""
        if self.job is not None and self.job.running:
            self.job.cancel.set()
            self.status.value = "cancelling…"

    def cluster_options(self) -> ClusterOptions:
        """The clustering options of the form (``None``: the model's calibrated value)."""
        min_size = self.min_size.value
        return ClusterOptions(bandwidth=self.bandwidth.value,
                              fg_threshold=self.fg_threshold.value,
                              min_size=None if min_size is None else int(min_size),
                              scope=str(self.scope.value),
                              spatial_radius=self.spatial_radius.value,
                              relative_min_size=self.relative_min_size.value,
                              relative_bandwidth=self.relative_bandwidth.value)

    def _options(self) -> dict[str, Any]:
        batch = self.batch_size.value
        return {
            "cluster": self.cluster_options(),
            "device": str(self.device.value),
            "batch_size": None if batch is None else int(batch),
            "pad": str(self.pad.value),
        }

    def _set_running(self, running: bool) -> None:
        self.segment_btn.enabled = not running
        self.preview_btn.enabled = not running
        self.folder_btn.enabled = not running
        self.cancel_btn.enabled = running

def describe_geometry(geo: UNetGeometry) -> str:
    """One line: dimensions, l, f, grid f^l, capacity f^(d·l) and context."""
    f = tile_label(geo.factor)
    return (f"{geo.ndim}D · l={geo.depth} · f={f} · grid f^l={tile_label(geo.grid)} · "
            f"capacity f^(d·l)={geo.capacity} · context {tile_label(geo.context)} px")


class _blocked:
    """Block the ``changed`` signals of some magicgui widgets for a moment."""

    def __init__(self, *widgets: Any) -> None:
        self.widgets = widgets

    def __enter__(self) -> None:
        for w in self.widgets:
            w.changed.block()

    def __exit__(self, *exc: Any) -> None:
        for w in self.widgets:
            w.changed.unblock()
