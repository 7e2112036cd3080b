"""The Train dock: image + labels layers in, a model out (registered for the Segment dock).

Training is :func:`train.train` in a thread worker; its progress callbacks are batched and
relayed to the UI thread, where a throttled loss curve draws them.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..errors import NSEError
from ..geometry import MAX_DEPTH, MAX_FACTOR, UNetGeometry
from ..model import UNet, available_devices, save_model
from ..train.refit import HISTORY_KEY as REFIT_KEY
from ._common import (
    WrapLabel,
    activity_progress,
    collapsible,
    image_choices,
    insert_after,
    labels_choices,
    notify,
    report_error,
    tile_label,
)
from ._loss_plot import LossPlot
from ._registry import (
    REGISTRY,
    ModelSource,
    bundled_sources,
    connect_while_alive,
    registry_sources,
)
from ._settings import (
    DockSettings,
    SettingsOwner,
    activity_bar_setting,
    build,
    model_file_setting,
    path_or_none,
    setting,
)
from ._worker import Job, detach_on_close

SCRATCH = "scratch"
FILE = ModelSource.file()
#: how often (seconds) a batch of loss values crosses to the UI thread
RELAY_INTERVAL = 0.1


def init_choices(_widget: Any = None) -> list[tuple[str, Any]]:
    """(label, value): from scratch, or fine-tune a bundled / trained-here / file model."""
    sources = [*bundled_sources(), *registry_sources()]
    return ([("from scratch", SCRATCH)] + [(f"fine-tune {src.label}", src) for src in sources]
            + [("fine-tune a model file…", FILE)])


def _parse_init(text: str) -> Any:
    return SCRATCH if text == SCRATCH else ModelSource.parse(text)



def _default_window(dock: TrainWidget) -> int:
    from ..train import default_window

    return int(max(default_window(dock.geometry())))


def _api_defaults() -> Any:
    """The API's training defaults: the dock's defaults are the same numbers."""
    from ..train import TrainConfig

    return TrainConfig()


_API = _api_defaults()
NO_VAL = "validation AP@0.5: –"

#: The Train dock's form, in the order its values are applied (causes before effects); the
#: only place its defaults are written (most are :class:`TrainConfig`'s).
SETTINGS = (
    model_file_setting(),
    setting("init", ComboBox, SCRATCH, label="Start", choices=init_choices, encode=str,
            decode=_parse_init),
    setting("ndim", ComboBox, _API.ndim, label="Dimensions", choices=[2, 3]),
    setting("depth", SpinBox, _API.depth, label="Depth l", min=1, max=MAX_DEPTH),
    setting("factor", SpinBox, _API.factor, label="Pooling factor f", min=2, max=MAX_FACTOR),
    setting("base_channels", SpinBox, _API.base_channels, label="Base channels", min=1,
            max=256),
    setting("embedding_dim", SpinBox, _API.embedding_dim, label="Embedding size", min=1,
            max=64),
    setting("upsampling", ComboBox, _API.upsampling, label="Upsampling",
            choices=["learnt", "nearest"]),
    setting("window", SpinBox, _default_window, label="Output window", min=1, max=1024,
            tooltip="training output window per axis; must exceed f^l"),
    setting("iterations", SpinBox, _API.iterations, label="Iterations", min=1,
            max=1_000_000),
    setting("batch_size", SpinBox, _API.batch_size, label="Batch size", min=1, max=256),
    setting("lr", FloatSpinBox, _API.lr, label="Learning rate", min=1e-7, max=1.0, step=1e-4),
    setting("seed", SpinBox, _API.seed, label="Seed", min=0, max=2**31 - 1),
    setting("device", ComboBox, "auto", label="Device", choices=available_devices()),
    setting("use_segment", CheckBox, True, text="use in Segment when done"),
    activity_bar_setting(),
)


def window_problem(window: int, geo: UNetGeometry) -> str:
    """Why a training output window is unusable (empty string when it is fine)."""
    grid = max(geo.grid)
    if window <= grid:
        return (f"window {window} ≤ f^l = {grid}: "
                + ("some output functions are never trained" if window < grid else
                   "neighbours across the f^l grid are never trained together")
                + f" → seams; use > {grid} (Rumberger et al. §3.2)")
    return ""


def validation_line(entry: dict) -> str | None:
    """The dock's validation line after one training iteration (None: unchanged)."""
    if REFIT_KEY in entry:
        return (f"held-out AP@0.5: {entry[REFIT_KEY]:.3f}, then the crop joined training "
                f"(iteration {entry['iteration']})")
    if "val_ap" in entry:
        return f"validation AP@0.5: {entry['val_ap']:.3f} (iteration {entry['iteration']})"
    return None


class _Pair(Container):
    def __init__(self, viewer: Any, index: int) -> None:
        image = ComboBox(label=f"Image {index}", choices=lambda _w: image_choices(viewer))
        labels = ComboBox(label=f"Labels {index}", choices=lambda _w: labels_choices(viewer))
        super().__init__(widgets=[image, labels], labels=True)
        self.image_w, self.labels_w = image, labels
        self.margins = (0, 0, 0, 0)


class TrainWidget(SettingsOwner, Container):
    """Train (or fine-tune) an embedding U-Net on Image + Labels layers with a live loss curve."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.job: Job | None = None
        self._running = False
        self.model: UNet | None = None
        self.model_name: str | None = None
        self.history: list[dict] = []

        self.pairs = Container(labels=False)
        self.pairs.margins = (0, 0, 0, 0)
        self.add_pair_btn = PushButton(text="+ image/labels pair")
        self.remove_pair_btn = PushButton(text="− last pair", enabled=False)
        build(SETTINGS, self)
        self.settings = DockSettings("train", SETTINGS, self)
        self.lr.native.setDecimals(7)
        self.window_info = WrapLabel(label="", lines=2)
        self.name_edit = LineEdit(label="Model name", value="")
        self.defaults_btn = PushButton(text="Restore defaults",
                                       tooltip="every setting of this dock back to its default")
        self.start_btn = PushButton(text="Start")
        self.stop_btn = PushButton(text="Stop", enabled=False)
        self.bar = ProgressBar(label="Progress", min=0, max=1, value=0)
        self.status = WrapLabel(value="ready", lines=2)
        self.val_info = WrapLabel(value=NO_VAL, lines=2,
                                  tooltip="AP@0.5 on the crop held out of training; after "
                                  "training (or Stop) the clustering is calibrated on the "
                                  "training images, that crop among them")
        self.save_path = FileEdit(label="Save as", mode="w", filter="*.pt")
        self.save_btn = PushButton(text="Save model", enabled=False)
        self.plot = LossPlot()
        run_row = Container(widgets=[self.start_btn, self.stop_btn], layout="horizontal",
                            labels=False)
        run_row.margins = (0, 0, 0, 0)
        pair_row = Container(widgets=[self.add_pair_btn, self.remove_pair_btn],
                             layout="horizontal", labels=False)
        pair_row.margins = (0, 0, 0, 0)
        self.extend([
            self.pairs, pair_row, self.init, self.model_file, self.ndim, self.depth,
            self.factor, self.window,
            self.window_info, self.iterations, self.name_edit, run_row, self.bar,
            self.val_info,
            self.save_path, self.save_btn,
        ])
        self.advanced = Container(widgets=[
            self.base_channels, self.embedding_dim, self.upsampling, self.batch_size, self.lr,
            self.seed, self.device, self.use_segment, self.napari_progress, self.defaults_btn,
        ])
        # raw Qt widgets go in last (see segment_widget); the status spans the full width
        self.advanced_box = collapsible("Network, optimiser and device", self.advanced)
        insert_after(self, self.name_edit, self.advanced_box)
        insert_after(self, self.bar, self.status.native)
        insert_after(self, self.status, self.plot)
        self.add_pair()

        self.add_pair_btn.changed.connect(self.add_pair)
        self.remove_pair_btn.changed.connect(self.remove_pair)
        self.init.changed.connect(self._on_init_changed)
        self.model_file.changed.connect(self._on_init_changed)
        self.defaults_btn.changed.connect(self.restore_defaults)
        for w in (self.ndim, self.depth, self.factor):
            w.changed.connect(self._on_geometry_changed)
        self.window.changed.connect(self._check_window)
        self.start_btn.changed.connect(self.start)
        self.stop_btn.changed.connect(self.stop)
        self.save_btn.changed.connect(self.save)
        connect_while_alive(self, REGISTRY.changed, self._on_registry_changed)
        detach_on_close(self)
        connect_while_alive(self, REGISTRY.geometry_chosen, self._follow_geometry)
        self._load_settings("start")  # the values of the last session, else the defaults

    def _settings_applied(self) -> None:
        self._on_init_changed(keep_window=True)

    # -- form --------------------------------------------------------------------------
    def add_pair(self, *_: Any) -> None:
        pair = _Pair(self.viewer, len(self.pairs) + 1)
        self.pairs.append(pair)
        pair.reset_choices()
        self.remove_pair_btn.enabled = len(self.pairs) > 1

    def remove_pair(self, *_: Any) -> None:
        if len(self.pairs) > 1:
            self.pairs.pop()
        self.remove_pair_btn.enabled = len(self.pairs) > 1

    def init_source(self) -> ModelSource | None:
        """The start model's source (``None``: from scratch)."""
        choice = self.init.value
        if choice in (None, SCRATCH):
            return None
        return choice.complete(path=path_or_none(self.model_file.value))

    def _init_model(self) -> UNet | None:
        source = self.init_source()
        return None if source is None else source.load()

    def _on_init_changed(self, *_: Any, keep_window: bool = False) -> None:
        self.model_file.visible = self.init.value == FILE
        free = self.init.value in (None, SCRATCH)
        for w in (self.ndim, self.depth, self.factor, self.base_channels, self.embedding_dim,
                  self.upsampling):
            w.enabled = free
        if not free:
            try:
                cfg = self._init_model().config
            except NSEError as exc:
                self.window_info.value = str(exc)
                self.start_btn.enabled = False
                chosen = path_or_none(self.model_file.value) or self.init.value != FILE
                if chosen and not self._restoring:
                    report_error(exc, "loading the start model")
                return
            widgets = (self.ndim, self.depth, self.factor, self.base_channels,
                       self.embedding_dim, self.upsampling)
            for w in widgets:
                w.changed.block()
            self.ndim.value, self.depth.value = cfg.ndim, cfg.depth
            self.factor.value = max(cfg.factor)
            self.base_channels.value = cfg.base_channels
            self.embedding_dim.value = cfg.embedding_dim
            self.upsampling.value = cfg.upsampling
            for w in widgets:
                w.changed.unblock()
        if keep_window:
            self._check_window()
        else:
            self._on_geometry_changed()

    def _on_geometry_changed(self, *_: Any) -> None:
        """A new geometry gets the trainer's default window (4·f^l, at least 64 / 32 px)."""
        if self._restoring:
            return
        self.window.value = _default_window(self)
        self._check_window()

    def _follow_geometry(self, ndim: int, depth: int, factor: int) -> None:
        """The Segment dock's choice of l and f, while this dock trains from scratch."""
        if self.init.value not in (None, SCRATCH) or self._running:
            return
        self.ndim.value, self.depth.value, self.factor.value = ndim, depth, factor

    def _on_registry_changed(self, _name: str) -> None:
        self.init.reset_choices()

    def geometry(self) -> UNetGeometry:
        return UNetGeometry.create(int(self.ndim.value), int(self.depth.value),
                                   int(self.factor.value))

    def _check_window(self, *_: Any) -> bool:
        problem = window_problem(int(self.window.value), self.geometry())
        self.window_info.value = problem or (
            f"window {self.window.value} > f^l = {tile_label(self.geometry().grid)} ✓")
        self.start_btn.enabled = not problem and not self._running
        return not problem

    # -- training ----------------------------------------------------------------------
    def _data(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        images, labels = [], []
        for i, pair in enumerate(self.pairs, start=1):
            img, lab = pair.image_w.value, pair.labels_w.value
            if img is None or lab is None:
                raise NSEError(f"pair {i}: choose an image layer and a labels layer")
            a = np.array(img.data[0] if img.multiscale else img.data)
            b = np.array(lab.data[0] if lab.multiscale else lab.data)
            if img.rgb:
                a = a.mean(axis=-1)
            if a.shape != b.shape:
                raise NSEError(f"pair {i}: image {a.shape} and labels {b.shape} differ in shape")
            if not b.any():
                raise NSEError(f"pair {i}: labels layer {lab.name!r} has no instances")
            images.append(a)
            labels.append(b)
        return images, labels

    def config(self) -> Any:
        from ..train import TrainConfig

        return TrainConfig(
            ndim=int(self.ndim.value), depth=int(self.depth.value), factor=int(self.factor.value),
            base_channels=int(self.base_channels.value),
            embedding_dim=int(self.embedding_dim.value), upsampling=str(self.upsampling.value),
            window=int(self.window.value), iterations=int(self.iterations.value),
            batch_size=int(self.batch_size.value),
            lr=float(self.lr.value), seed=int(self.seed.value), device=str(self.device.value),
        )

    def start(self, *_: Any) -> Job | None:
        if self.job is not None and self.job.running:
            notify("training is already running")
            return None
        try:
            if not self._check_window():
                raise NSEError(self.window_info.value)
            images, labels = self._data()
            config = self.config()
            init = self._init_model()
            init = copy.deepcopy(init) if init is not None else None  # never train in place
        except NSEError as exc:
            report_error(exc, "training")
            return None
        total = int(self.iterations.value)
        pbar = activity_progress(bool(self.napari_progress.value), total, "train")
        self.plot.clear()
        self.history = []
        self.val_info.value = NO_VAL
        self.bar.max, self.bar.value = total, 0

        def work(report, cancel):
            from ..train import train

            buffer: list[dict] = []
            last = [time.monotonic()]

            def progress(entry: dict) -> None:
                buffer.append(dict(entry))
                if time.monotonic() - last[0] >= RELAY_INTERVAL:
                    last[0] = time.monotonic()
                    report(buffer[:], force=True)
                    buffer.clear()

            result = train(images, labels, config, init_model=init, progress=progress,
                           cancel=cancel.is_set)
            report(buffer[:], force=True)
            return result

        finished = [False]

        def on_progress(entries: list[dict]) -> None:
            # napari's progress bar processes events when updated: this can be re-entered,
            # and a late report must not overwrite the final state (pbar is updated last)
            if finished[0]:
                return
            steps = [e for e in entries if "loss" in e]  # training iterations only
            for e in steps:
                self.history.append(e)
                self.plot.add(int(e.get("iteration", len(self.history))),
                              float(e.get("loss", math.nan)))
                line = validation_line(e)
                if line is not None:
                    self.val_info.value = line
            if steps:
                last = steps[-1]
                it = int(last.get("iteration", len(self.history)))
                self.bar.value = min(it, total)
                self.status.value = f"iteration {it}/{total}, loss {last.get('loss', 0):.4g}"
                pbar.update(min(it, total) - pbar.n)
            stage = entries[-1] if entries else {}
            if stage.get("stage") == "calibrate":  # after the last iteration's report
                self.status.value = (f"calibrating "
                                     f"{stage.get('done', 0)}/{stage.get('total', '?')}")

        def done(status: str, value: Any) -> None:
            finished[0] = True
            pbar.close()
            self.plot.flush()
            self._set_running(False)
            if status == "ok":
                stopped = bool(value.model.config.extra.get("cancelled", self.job.cancel.is_set()))
                self._finished(value, stopped=stopped)
            elif status == "cancelled":
                self.status.value = "stopped"
                notify("training stopped")
            else:
                self.status.value = f"failed: {value}"
                report_error(value, "training")

        self.job = Job(work, done, on_progress, interval=0.0)
        pbar.cancel_callback = self.job.cancel.set
        self._set_running(True)
        self.status.value = "starting…"
        self.job.start()
        return self.job

    def stop(self, *_: Any) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel.set()
            self.status.value = "stopping…"

    def _set_running(self, running: bool) -> None:
        self._running = running
        self.stop_btn.enabled = running
        self._check_window()

    def _finished(self, result: Any, stopped: bool) -> None:
        self.model = result.model
        n = len(self.history)
        name = str(self.name_edit.value).strip() or None
        info = {"iterations": n, "stopped": stopped,
                "final_loss": self.history[-1].get("loss") if self.history else None}
        if self.use_segment.value:
            self.model_name = REGISTRY.add(result.model, name, info)
        else:
            self.model_name = name or "trained"
        self.save_btn.enabled = True
        how = f"stopped after {n} iterations" if stopped else f"done, {n} iterations"
        self.status.value = f"{how}; model {self.model_name!r} is ready"
        cal = getattr(result, "calibration", None)
        if cal is not None:  # train() calibrates at the end, also after Stop
            self.val_info.value = f"calibrated: {cal.ap_text()}; {cal.describe()}"
        self.status.tooltip = "\n".join(getattr(result, "notes", []) or [])
        notify(f"training {how}: model {self.model_name!r}")

    def save(self, *_: Any) -> Path | None:
        """Write the trained model to the chosen .pt file; an existing file is never replaced."""
        if self.model is None:
            notify("train a model first")
            return None
        path = Path(str(self.save_path.value))
        try:
            if not str(self.save_path.value) or path.is_dir():
                raise NSEError("choose a file name ending in .pt")
            if path.exists():
                raise NSEError(f"{path} exists; choose another name (files are never replaced)")
            out = save_model(self.model, path, overwrite=False)
        except NSEError as exc:
            report_error(exc, "saving the model")
            return None
        notify(f"saved {out}")
        self.status.value = f"saved {out.name}"
        return out
