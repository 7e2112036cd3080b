"""The docks' remembered settings, Restore defaults, the model source, "auto" values.

Settings go to ``$NSE_CONFIG_DIR``, which ``conftest.py`` points at a temporary folder for
every test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_shift_equivariance._widgets import SegmentWidget, TrainWidget
from napari_shift_equivariance._widgets._registry import REGISTRY, ModelSource
from napari_shift_equivariance._widgets._settings import (
    ENV_DIR,
    SettingsWarning,
    config_dir,
)
from napari_shift_equivariance._widgets.segment_widget import FILE, RANDOM
from napari_shift_equivariance.data import periodic_disks
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.options import PADS, SCOPES, STITCH_MODES
from napari_shift_equivariance.segment import segment

pytestmark = pytest.mark.usefixtures("clean_registry")


def tiny_model(depth: int = 2, seed: int = 0, **extra):
    cfg = ModelConfig(ndim=2, depth=depth, factor=2, base_channels=4, embedding_dim=4,
                      extra=dict(extra))
    return build_model(cfg, seed=seed)


def dock(make_napari_viewer, cls=SegmentWidget):
    viewer = make_napari_viewer()
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    return viewer, widget


def saved(name: str) -> dict:
    return json.loads((config_dir() / f"{name}.json").read_text())["values"]


# -- the model source (no viewer) ------------------------------------------------------------


@pytest.mark.parametrize("source", [
    ModelSource.default(2), ModelSource.registry("my model: v2"), ModelSource.file("/a/b.pt"),
    ModelSource.file(), ModelSource.random(), ModelSource.random(3, 2, 2, 7),
])
def test_model_source_round_trips_through_its_string(source):
    assert ModelSource.parse(str(source)) == source


def test_model_source_parse_errors_and_labels():
    for bad in ("", "default:x", "registry:", "random:1,2", "torchhub:foo"):
        with pytest.raises(NSEError):
            ModelSource.parse(bad)
    assert ModelSource.default(3).label == "default 3D (bundled)"
    assert ModelSource.registry("m").label == "m (trained here)"
    assert ModelSource.file("/x/m.pt").label == "m.pt"
    assert ModelSource.file().label == "model file…"
    assert not ModelSource.random().locked and ModelSource.default(2).locked


def test_model_source_loads_once_and_says_what_is_missing(tmp_path):
    path = save_model(tiny_model(depth=3), tmp_path / "m.pt")
    src = ModelSource.file(path)
    assert src.load() is src.load()  # shared by both docks
    assert src.geometry().depth == 3
    with pytest.raises(NSEError, match="does not exist"):
        ModelSource.file(tmp_path / "gone.pt").load()
    with pytest.raises(NSEError, match="choose a model file"):
        FILE.load()
    with pytest.raises(NSEError, match="no longer available"):
        ModelSource.registry("not trained").load()
    name = REGISTRY.add(tiny_model(), "here")
    assert ModelSource.registry(name).load() is REGISTRY.get(name)
    random = RANDOM.complete(ndim=2, depth=2, factor=3, seed=1)
    assert random.geometry().grid == (9, 9)  # no weights built for that
    assert random.load() is random.load()
    assert random.load() is not RANDOM.complete(ndim=2, depth=2, factor=3, seed=2).load()


def test_settings_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "cfg"))
    assert config_dir() == tmp_path / "cfg"
    monkeypatch.delenv(ENV_DIR)
    assert config_dir().name == "napari-shift-equivariance"
    assert os.environ.get(ENV_DIR) is None


# -- Segment dock ----------------------------------------------------------------------------



@pytest.mark.napari
def test_segment_settings_survive_a_restart_and_restore_defaults(make_napari_viewer,
                                                                   tmp_path):
    model_path = save_model(tiny_model(depth=3), tmp_path / "m.pt")
    _, w = dock(make_napari_viewer)
    assert list(w.stitch.choices) == [*STITCH_MODES, "both"]
    assert list(w.scope.choices) == list(SCOPES) and list(w.pad.choices) == list(PADS)
    defaults = w.settings.values()
    w.model.value = FILE
    w.model_file.value = model_path
    w.stitch.value = "naive"
    w.tile.value = 52
    w.bandwidth.value = 1.25
    w.min_size.value = 0
    w.batch_size.value = 3
    w.scope.value, w.pad.value = "global", "edge"
    w.raw_channels.value = True
    changed = w.settings.values()
    assert saved("segment") == changed  # written as they change

    # the next napari launch: a new viewer, a new dock
    _, again = dock(make_napari_viewer)
    assert again.model.value == FILE and Path(again.model_file.value) == model_path
    assert again.depth.value == 3 and not again.depth.enabled  # the file's geometry
    assert (again.stitch.value, again.tile.value) == ("naive", 52)
    assert again.bandwidth.value == pytest.approx(1.25)
    assert again.fg_threshold.value is None  # still auto
    assert again.min_size.value == 0 and again.batch_size.value == 3
    assert (again.scope.value, again.pad.value, again.raw_channels.value) == ("global",
                                                                              "edge", True)
    again.defaults_btn.clicked.emit()
    assert again.settings.values() == defaults == saved("segment")
    assert again.bandwidth.value is None and again.batch_size.value is None
    assert again.stitch.value == "correct"
    assert again.tile.value % again._grid_step() == 0


@pytest.mark.napari
def test_corrupt_or_stale_settings_give_defaults_never_a_crash(make_napari_viewer, tmp_path,
                                                               errors):
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "segment.json").write_text("{not json")
    with pytest.warns(SettingsWarning, match="segment.json"):
        _, w = dock(make_napari_viewer)
    assert w.stitch.value == "correct" and w.bandwidth.value is None

    # values that no longer fit: a model trained in an earlier session, a deleted file,
    # a device this machine lacks, a tile of the wrong type: each falls back on its own
    stale = {"model": "registry:gone", "stitch": "naive", "device": "cuda:7",
             "tile": "big", "model_file": str(tmp_path / "deleted.pt"), "bandwidth": 2.0,
             "unknown": 1}
    (folder / "segment.json").write_text(json.dumps({"version": 1, "values": stale}))
    _, w2 = dock(make_napari_viewer)
    assert w2.model.value == w.model.value  # the default choice
    assert w2.stitch.value == "naive" and w2.bandwidth.value == pytest.approx(2.0)
    assert w2.device.value == "auto" and isinstance(w2.tile.value, int)
    assert errors == []  # no notification at start-up

    (folder / "train.json").write_text(json.dumps(["a", "list"]))
    with pytest.warns(SettingsWarning, match="train.json"):
        _, t = dock(make_napari_viewer, TrainWidget)
    assert t.init.value == "scratch"


@pytest.mark.napari
def test_auto_uses_the_models_calibration(make_napari_viewer, qtbot):
    viewer, w = dock(make_napari_viewer)
    image, _ = periodic_disks((64, 64), radius=5, spacing=15, noise=0.01, seed=1)
    viewer.add_image(image, name="disks")
    model = tiny_model(bandwidth=0.35, fg_threshold=0.3, min_size=4)
    name = REGISTRY.add(model, "calibrated")
    w.model.value = ModelSource.registry(name)
    assert "bandwidth 0.35" in w.cluster_info.value and "calibrated" in w.cluster_info.value
    assert w.bandwidth.spin.value == pytest.approx(0.35) and not w.bandwidth.spin.enabled
    assert w.min_size.spin.value == 4
    options = w._options()
    assert options["batch_size"] is None  # auto, as in the API
    assert options["cluster"].bandwidth is None  # resolved from the model by segment()
    w.stitch.value, w.tile.value, w.device.value = "correct", 16, "cpu"
    job = w.run()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    info = w.last_result.info
    assert info["bandwidth"] == pytest.approx(0.35)
    api = segment(model, image, "correct", 16, device="cpu")
    np.testing.assert_array_equal(viewer.layers["disks labels [correct 16]"].data, api.labels)
    # an uncalibrated model: auto is the loss margins' bandwidth
    w.model.value = RANDOM
    assert "not calibrated" in w.cluster_info.value


@pytest.mark.napari
@pytest.mark.parametrize("field, calibrated, shown, mine", [
    # the user switches positions off
    ("spatial_radius", {"min_size": 4, "spatial_radius": 7.5}, "spatial radius 7.5 px", 0.0),
    ("relative_min_size", {"min_size": 0, "relative_min_size": 0.25}, "0.25 × median", 0.9),
    ("relative_bandwidth", {"min_size": 0, "relative_bandwidth": 0.3}, "(0.3 × object)", 0.5),
])
def test_clustering_field_auto_and_set(make_napari_viewer, qtbot, field, calibrated, shown,
                                       mine):
    viewer, w = dock(make_napari_viewer)
    image, _ = periodic_disks((64, 64), radius=5, spacing=15, noise=0.01, seed=1)
    viewer.add_image(image, name="disks")
    model = tiny_model(bandwidth=0.35, fg_threshold=0.3, **calibrated)
    if field == "relative_bandwidth":  # needs a model with coordinates
        model.config.loss = {**model.config.loss, "coord_scale": 0.35}
    w.model.value = ModelSource.registry(REGISTRY.add(model, field))
    widget = getattr(w, field)
    assert shown in w.cluster_info.value
    assert widget.spin.value == pytest.approx(calibrated[field])
    assert getattr(w.cluster_options(), field) is None  # auto: resolved from the model
    widget.value = mine
    assert getattr(w.cluster_options(), field) == pytest.approx(mine)
    w.stitch.value, w.tile.value, w.device.value = "correct", 16, "cpu"
    job = w.run()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert w.last_result.info[field] == pytest.approx(mine)
    if field == "relative_bandwidth":  # the status line says what it gave
        assert f"bandwidth {w.last_result.info['bandwidth']:.3g}" in w.status.value
    api = segment(model, image, "correct", 16, device="cpu", **{field: mine})
    np.testing.assert_array_equal(viewer.layers["disks labels [correct 16]"].data, api.labels)


@pytest.mark.napari
def test_whole_image_mode(make_napari_viewer, qtbot):
    viewer, w = dock(make_napari_viewer)
    image, _ = periodic_disks((40, 40), radius=5, spacing=15, noise=0.01, seed=1)
    viewer.add_image(image, name="disks")
    model = tiny_model()
    REGISTRY.add(model, "m")
    w.model.value = ModelSource.registry("m")
    w.stitch.value = "whole"
    assert not w.tile.enabled and "whole image" in w.tile_info.value
    w.min_size.value = 0
    job = w.run()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    api = segment(model, image, "whole", device=str(w.device.value), min_size=0)
    np.testing.assert_array_equal(viewer.layers["disks labels [whole 40]"].data, api.labels)


# -- Train dock ------------------------------------------------------------------------------


@pytest.mark.napari
def test_train_settings_survive_a_restart(make_napari_viewer, tmp_path, errors):
    from napari_shift_equivariance.train import TrainConfig

    _, t = dock(make_napari_viewer, TrainWidget)
    api = TrainConfig()
    assert (t.iterations.value, t.batch_size.value, t.lr.value) == (api.iterations,
                                                                   api.batch_size, api.lr)
    defaults = t.settings.values()
    t.depth.value = 2
    t.window.value = 20
    t.iterations.value, t.lr.value, t.seed.value = 77, 0.0005, 3
    t.use_segment.value = False
    _, again = dock(make_napari_viewer, TrainWidget)
    assert (again.depth.value, again.window.value) == (2, 20)  # not reset by the geometry
    assert (again.iterations.value, again.seed.value) == (77, 3)
    assert again.lr.value == pytest.approx(0.0005) and not again.use_segment.value
    assert again.start_btn.enabled

    # fine-tune a model file, remembered as well
    path = save_model(tiny_model(depth=3), tmp_path / "start.pt")
    again.init.value = FILE
    again.model_file.value = path
    assert not again.depth.enabled and again.depth.value == 3
    assert again.window.value > 8
    _, third = dock(make_napari_viewer, TrainWidget)
    assert third.init.value == FILE and third._init_model().config.depth == 3
    third.restore_defaults()
    assert third.settings.values() == defaults
    assert third.init.value == "scratch" and third.depth.enabled
    assert errors == []


@pytest.mark.napari
def test_a_model_trained_in_the_dock_is_calibrated_and_segment_uses_it(make_napari_viewer,
                                                                         qtbot):
    viewer = make_napari_viewer()
    seg, t = SegmentWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(seg, area="right")
    viewer.window.add_dock_widget(t, area="right", tabify=True)
    t.napari_progress.value = False
    image, labels = periodic_disks((96, 96), radius=5, spacing=15, noise=0.01, seed=0)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    t.depth.value, t.base_channels.value, t.embedding_dim.value = 2, 4, 4
    t.window.value, t.iterations.value, t.batch_size.value = 12, 8, 1
    t.device.value = "cpu"
    job = t.start()
    qtbot.waitUntil(lambda: not job.running, timeout=120_000)
    extra = t.model.config.extra
    assert "calibrated" in t.val_info.value, t.val_info.value
    assert seg.model.value == ModelSource.registry(t.model_name)
    assert f"bandwidth {extra['bandwidth']:.3g}" in seg.cluster_info.value
    assert f"calibrated on {extra['calibration']['data']}" in seg.cluster_info.value
    assert "whole training image" in seg.cluster_info.value
    assert seg.bandwidth.value is None  # auto: the calibration is what segment() uses
