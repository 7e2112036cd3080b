"""The napari plugin with a real viewer (pytest-xvfb gives it an X display with OpenGL).

Screenshots of the widgets at work go to a temporary folder; with ``NSE_WRITE_DOCS_IMAGES=1``
the chosen ones are also written to ``docs/images/widget_*.png``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels, Shapes

from napari_shift_equivariance import _sample_data as samples
from napari_shift_equivariance._widgets import ScrollDock, SegmentWidget, TrainWidget
from napari_shift_equivariance._widgets._registry import REGISTRY, ModelSource
from napari_shift_equivariance._widgets._results import _grid
from napari_shift_equivariance._widgets.segment_widget import FILE, OFF_GRID, ON_GRID, RANDOM
from napari_shift_equivariance.data import periodic_disks
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.segment import segment
from napari_shift_equivariance.tiling import plan_tiles

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("clean_registry")]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "images"
PLUGIN = "napari-shift-equivariance"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def shots(tmp_path):
    """``shot(viewer, name)`` saves a screenshot of the whole window (docs on request)."""
    folder = tmp_path / "shots"
    folder.mkdir()

    def shot(viewer, name: str) -> Path:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()  # let the docks settle before fitting the view
        viewer.reset_view()
        QApplication.processEvents()
        path = folder / f"widget_{name}.png"
        viewer.window._qt_window.grab().save(str(path))
        assert path.stat().st_size > 10_000  # a rendered window, not an empty image
        if os.environ.get("NSE_WRITE_DOCS_IMAGES"):
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, DOCS / path.name)
        return path

    return shot


def tiny_model(ndim: int = 2, depth: int = 2, seed: int = 0):
    """A random-weights model small enough for a fast test (grid f^l = 4 for depth 2)."""
    cfg = ModelConfig(ndim=ndim, depth=depth, factor=2, base_channels=4, embedding_dim=4)
    return build_model(cfg, seed=seed)


def open_viewer(make_napari_viewer, widget_cls=SegmentWidget, size=(1400, 900)):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*size)
    widget = widget_cls(viewer)
    # napari's busy animation repaints the canvas with software OpenGL (Xvfb) and slows the
    # runs several-fold; one test below checks the activity progress bar itself
    widget.napari_progress.value = False
    viewer.window.add_dock_widget(ScrollDock(widget), name=widget_cls.__name__[:-6],
                                  area="right")
    return viewer, widget


def add_sample(viewer, fn):
    layers = []
    for data, kwargs, kind in fn():
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers


def use_model(widget: SegmentWidget, model, name: str = "tiny") -> str:
    name = REGISTRY.add(model, name)
    widget.model.value = ModelSource.registry(name)
    return name


def wait(qtbot, job, timeout: int = 60_000) -> None:
    assert job is not None, "the widget did not start a job"
    qtbot.waitUntil(lambda: not job.running, timeout=timeout)


# -- manifest and samples ------------------------------------------------------------------


def test_manifest_is_valid_and_names_the_widgets():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution(PLUGIN)
    widgets = {w.display_name for w in mf.contributions.widgets}
    assert {"Segment", "Train"} <= widgets
    assert len(mf.contributions.sample_data) == 4
    menu = mf.contributions.menus["napari/layers/segment"]
    assert {m.command for m in menu} == {w.command for w in mf.contributions.widgets}
    mf.validate_imports()  # every python_name resolves


@pytest.mark.parametrize("fn", [samples.disks_on_grid, samples.disks_coprime,
                                samples.nuclei_2d, samples.nuclei_3d])
def test_samples_give_image_and_matching_labels(fn):
    (img, img_kw, img_kind), (lab, lab_kw, lab_kind) = fn()
    assert (img_kind, lab_kind) == ("image", "labels")
    assert img.shape == lab.shape and img.dtype == np.float32 and lab.dtype == np.uint32
    assert lab.max() > 10
    assert img[lab > 0].mean() > img[lab == 0].mean()  # objects are brighter than background
    assert img_kw["name"] != lab_kw["name"]


def test_disk_samples_spacing(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "disks_grid")
    viewer.open_sample(PLUGIN, "disks_coprime")
    assert [type(layer) for layer in viewer.layers] == [Image, Labels, Image, Labels]
    # disk centres lie on a lattice of 16 px (n·f^l) and 15 px (co-prime)
    from scipy import ndimage

    for layer, spacing in ((viewer.layers[1], 16), (viewer.layers[3], 15)):
        lab = layer.data
        centres = np.array(ndimage.center_of_mass(lab > 0, lab, range(1, lab.max() + 1)))
        xs = np.unique(np.round(centres[:, 1]))
        assert np.median(np.diff(xs)) == pytest.approx(spacing, abs=0.5)


def test_widgets_open_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, seg_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _, tr_dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    assert isinstance(seg_dock, ScrollDock) and isinstance(tr_dock, ScrollDock)
    seg, tr = seg_dock.inner, tr_dock.inner
    assert isinstance(seg, SegmentWidget) and isinstance(tr, TrainWidget)
    layer = viewer.add_image(np.zeros((32, 32), np.float32), name="new")
    assert seg.image.value is layer  # napari hands the widgets its viewer (behind a proxy)
    assert tr.pairs[0].image_w.value is layer  # and napari's layer events reach the form


def test_a_dock_taller_than_the_window_scrolls_instead_of_squeezing(make_napari_viewer,
                                                                    qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1200, 600)
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    w = dock.inner
    for box in (w.options_box, w.blockwise_box, w.folder_box):
        box.expand(animate=False)
    qtbot.waitUntil(lambda: w.native.height() >= w.native.minimumSizeHint().height(),
                    timeout=5_000)
    assert w.native.minimumSizeHint().height() > dock.viewport().height()
    assert dock.verticalScrollBar().maximum() > 0
    options = w.options_w.native
    assert options.height() >= options.minimumSizeHint().height()  # rows do not overlap


# -- Segment: geometry, tile size, preview -------------------------------------------------


def test_geometry_is_shown_chosen_and_locked(make_napari_viewer):
    viewer, w = open_viewer(make_napari_viewer)
    w.model.value = RANDOM
    assert w.depth.enabled and w.factor.enabled
    w.depth.value, w.factor.value = 4, 2
    assert "grid f^l=16" in w.geometry_info.value
    assert "capacity f^(d·l)=256" in w.geometry_info.value
    w.stitch.value = "correct"
    w.tile.value = 250
    assert w.tile.value == 240 and w.tile.step == 16  # snapped to n·f^l
    w.stitch.value = "naive"
    w.tile.value = 250
    assert w.tile.value == 250 and w.tile.step == 1
    assert "off the f^l = 16 grid" in w.tile_info.value

    use_model(w, tiny_model(ndim=3, depth=1))
    assert not w.depth.enabled and not w.factor.enabled and not w.ndim.enabled
    assert (w.ndim.value, w.depth.value, w.factor.value) == (3, 1, 2)
    assert "3D · l=1 · f=2 · grid f^l=2 · capacity f^(d·l)=8" in w.geometry_info.value


def _rect_boxes(layer: Shapes) -> set[tuple]:
    out = set()
    for rect in layer.data:
        lo, hi = rect.min(axis=0), rect.max(axis=0)
        out.add((lo[0] + 0.5, lo[1] + 0.5, hi[0] + 0.5, hi[1] + 0.5))
    return out


def test_preview_grid_matches_the_plan(make_napari_viewer, shots):
    viewer, w = open_viewer(make_napari_viewer)
    image, _ = add_sample(viewer, samples.disks_coprime)
    w.model.value = RANDOM
    w.depth.value, w.factor.value = 3, 2
    w.stitch.value = "naive"
    w.tile.value = 60
    (grid,) = w.preview()
    plan = plan_tiles(image.data.shape, w.geometry_or_none(), 60, "naive")
    assert isinstance(grid, Shapes) and len(grid.data) == len(plan) == 25
    expected = {(*t.output_roi.begin, *t.output_roi.end) for t in plan.tiles}
    assert _rect_boxes(grid) == expected
    off = [not plan.on_grid(t) for t in plan.tiles]
    colors = [tuple(np.round(c[:3], 2)) for c in grid.edge_color]
    hexrgb = {ON_GRID: _rgb(ON_GRID), OFF_GRID: _rgb(OFF_GRID)}
    assert sum(c == hexrgb[OFF_GRID] for c in colors) == sum(off) > 0
    shots(viewer, "grid_naive")

    # the same button again updates the layer instead of adding one
    n_layers = len(viewer.layers)
    w.tile.value = 100
    (grid2,) = w.preview()
    assert len(viewer.layers) == n_layers
    assert len(grid2.data) == len(plan_tiles(image.data.shape, w.geometry_or_none(), 100,
                                             "naive"))

    w.stitch.value = "correct"
    w.tile.value = 64
    w.context_boxes.value = True
    (grid3,) = w.preview()
    plan = plan_tiles(image.data.shape, w.geometry_or_none(), 64, "correct")
    assert _rect_boxes(grid3) == {(*t.output_roi.begin, *t.output_roi.end) for t in plan.tiles}
    assert all(plan.on_grid(t) for t in plan.tiles)
    context = [ly for ly in viewer.layers if "tile context" in ly.name]
    assert len(context) == 1 and len(context[0].data) == len(plan)
    shots(viewer, "grid_correct")


def _rgb(hex_color: str) -> tuple:
    return tuple(round(int(hex_color[i:i + 2], 16) / 255, 2) for i in (1, 3, 5))


def test_preview_grid_is_visible_on_every_plane_of_a_stack(make_napari_viewer):
    viewer, w = open_viewer(make_napari_viewer, size=(1000, 700))
    stack = np.zeros((5, 96, 96), np.float32)
    viewer.add_image(stack, name="stack")
    w.model.value = RANDOM
    w.ndim.value, w.depth.value = 2, 2
    w.stitch.value = "correct"
    w.tile.value = 32
    (grid,) = w.preview()
    assert grid.ndim == 2 and len(grid.data) == 9  # 2D shapes: drawn on every z plane
    target = np.array(_rgb(ON_GRID)) * 255
    counts = []
    for z in (0, 4):
        viewer.dims.set_current_step(0, z)
        shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
        counts.append(int((np.abs(shot - target).sum(axis=-1) < 60).sum()))
    assert min(counts) > 100, counts


def test_preview_grid_of_a_3d_model_shows_each_footprint_once(make_napari_viewer):
    viewer, w = open_viewer(make_napari_viewer, size=(1000, 700))
    viewer.add_image(np.zeros((20, 40, 40), np.float32), name="volume", scale=(2, 1, 1))
    model = tiny_model(ndim=3, depth=1)
    use_model(w, model)
    w.stitch.value, w.tile.value = "correct", 8
    (grid,) = w.preview()
    plan = plan_tiles((20, 40, 40), model.config.geometry, 8, "correct")
    assert len(plan) == 3 * 5 * 5
    assert len(grid.data) == 25  # one rectangle per (y, x) footprint, on every z plane
    assert _rect_boxes(grid) == {(*t.output_roi.begin[1:], *t.output_roi.end[1:])
                                 for t in plan.tiles}
    assert tuple(grid.scale) == (1, 1)


def test_geometry_chosen_in_segment_feeds_training(make_napari_viewer):
    viewer, w = open_viewer(make_napari_viewer)
    t = TrainWidget(viewer)
    viewer.window.add_dock_widget(t, name="Train", tabify=True)
    w.model.value = RANDOM
    w.depth.value, w.factor.value = 4, 3
    assert (t.depth.value, t.factor.value) == (4, 3)
    assert t.window.value > 3**4 and t.start_btn.enabled


# -- Segment: running ------------------------------------------------------------------------


def test_segment_correct_equals_the_api(make_napari_viewer, qtbot, shots):
    viewer, w = open_viewer(make_napari_viewer)
    image, _ = periodic_disks((96, 96), radius=5, spacing=15, noise=0.01, seed=1)
    viewer.add_image(image, name="disks")
    model = tiny_model()
    use_model(w, model)
    w.stitch.value, w.tile.value, w.device.value = "correct", 32, "cpu"
    w.raw_channels.value = True
    wait(qtbot, w.run())
    names = [layer.name for layer in viewer.layers]
    assert "disks labels [correct 32]" in names, names
    labels = viewer.layers["disks labels [correct 32]"]
    emb = viewer.layers["disks embeddings [correct 32]"]
    fg = viewer.layers["disks foreground [correct 32]"]
    raw = viewer.layers["disks embedding channels [correct 32]"]
    assert isinstance(labels, Labels) and labels.data.shape == image.shape
    assert emb.rgb and emb.data.shape == (*image.shape, 3)
    assert raw.data.shape == (4, *image.shape)

    api = segment(model, image, "correct", 32, device="cpu")  # the dock: auto = the API default
    np.testing.assert_array_equal(labels.data, api.labels)
    np.testing.assert_allclose(fg.data, api.prediction[-1], atol=1e-6)
    assert labels.data.max() == api.n_instances > 0
    assert f"{api.n_instances} objects" in w.status.value
    shots(viewer, "segment")


def test_rerun_replaces_own_layers_never_a_users(make_napari_viewer, qtbot):
    viewer, w = open_viewer(make_napari_viewer)
    image, _ = periodic_disks((64, 64), radius=5, spacing=15, seed=1)
    viewer.add_image(image, name="img")
    user = np.full((64, 64), 7, np.uint32)
    viewer.add_labels(user.copy(), name="img labels [naive 20]")
    use_model(w, tiny_model())
    w.stitch.value, w.tile.value, w.device.value = "naive", 20, "cpu"
    wait(qtbot, w.run())
    mine = [ly for ly in viewer.layers if w.results.is_ours(ly)]
    assert len(mine) == 3
    assert viewer.layers["img labels [naive 20]"].data is not None
    np.testing.assert_array_equal(viewer.layers["img labels [naive 20]"].data, user)
    ours = [ly for ly in mine if isinstance(ly, Labels)][0]
    assert ours.name == "img labels [naive 20] (2)"
    n = len(viewer.layers)

    w.tile.value = 24
    wait(qtbot, w.run())
    assert len(viewer.layers) == n  # replaced, not added
    np.testing.assert_array_equal(viewer.layers["img labels [naive 20]"].data, user)
    assert "img labels [naive 24]" in [ly.name for ly in viewer.layers]
    assert ours.metadata["napari_shift_equivariance"]["tile"] == [24, 24]


def test_time_series_is_segmented_plane_by_plane(make_napari_viewer, qtbot):
    viewer, w = open_viewer(make_napari_viewer)
    planes = [periodic_disks((48, 48), radius=5, spacing=15, offset=t, seed=t)[0]
              for t in range(3)]
    viewer.add_image(np.stack(planes), name="movie", scale=(1, 0.5, 0.5))
    model = tiny_model()
    use_model(w, model)
    w.stitch.value, w.tile.value, w.device.value = "correct", 16, "cpu"
    wait(qtbot, w.run())
    labels = viewer.layers["movie labels [correct 16]"]
    assert labels.data.shape == (3, 48, 48)
    assert tuple(labels.scale) == (1, 0.5, 0.5)
    api = segment(model, planes[1], "correct", 16, device="cpu", min_size=0)
    assert len(np.unique(labels.data[1])) - 1 == api.n_instances


def test_rgb_layer_is_averaged_for_a_one_channel_model(make_napari_viewer, qtbot):
    viewer, w = open_viewer(make_napari_viewer)
    gray, _ = periodic_disks((48, 48), radius=5, spacing=15, noise=0.01, seed=4)
    rgb = np.stack([gray, 0.5 * gray, 0.25 * gray + 0.1], axis=-1).astype(np.float32)
    viewer.add_image(rgb, name="rgb", rgb=True)
    model = tiny_model()
    use_model(w, model)
    w.stitch.value, w.tile.value, w.device.value = "correct", 16, "cpu"
    wait(qtbot, w.run())
    labels = viewer.layers["rgb labels [correct 16]"]
    api = segment(model, rgb.mean(axis=-1), "correct", 16, device="cpu", min_size=0)
    np.testing.assert_array_equal(labels.data, api.labels)


def test_cancel_stops_a_run_between_batches(make_napari_viewer, qtbot):
    from napari.utils import progress

    viewer, w = open_viewer(make_napari_viewer)
    w.napari_progress.value = True
    before = set(progress._all_instances)
    viewer.add_image(np.random.default_rng(0).random((512, 512), np.float32), name="big")
    use_model(w, tiny_model())
    w.stitch.value, w.tile.value, w.batch_size.value = "correct", 8, 1  # 4096 tiles
    job = w.run()
    assert w.cancel_btn.enabled and not w.segment_btn.enabled
    qtbot.waitUntil(lambda: w.status.value.startswith("predict"), timeout=30_000)
    (bar,) = set(progress._all_instances) - before  # napari's activity progress bar
    qtbot.waitUntil(lambda: bar.n > 0, timeout=30_000)
    assert bar.total == 4096 and bar.n < 4096
    w.cancel_btn.clicked.emit()
    wait(qtbot, job, timeout=20_000)
    assert w.status.value == "cancelled"
    assert [ly.name for ly in viewer.layers] == ["big"]  # nothing half-made
    assert bar not in progress._all_instances
    assert w.segment_btn.enabled and not w.cancel_btn.enabled


def test_both_modes_show_seam_splits(make_napari_viewer, qtbot, shots):
    viewer, w = open_viewer(make_napari_viewer, size=(1500, 950))
    image, _ = periodic_disks((128, 128), radius=5, spacing=15, noise=0.01, seed=2)
    viewer.add_image(image, name="disks")
    use_model(w, tiny_model(depth=3, seed=3))
    w.stitch.value, w.tile.value, w.device.value = "both", 30, "cpu"
    w.bandwidth.value = 0.1  # random weights: a small bandwidth gives several objects
    wait(qtbot, w.run())
    result = w.last_result
    s = result.summary
    assert s["naive"]["seam_splits"] > 0 and result.split_map.any()
    assert w.splits.value.startswith(f"Seam splits: naive {s['naive']['seam_splits']} · "
                                     f"correct {s['correct']['seam_splits']} "
                                     f"({s['split_objects']} objects")
    names = [ly.name for ly in viewer.layers]
    for mode, tile in (("naive", 30), ("correct", 24)):
        assert f"disks labels [{mode} {tile}]" in names, names
    split = viewer.layers["disks split only by naive [30]"]
    np.testing.assert_array_equal(split.data, result.split_map)
    naive = viewer.layers["disks labels [naive 30]"]
    correct = viewer.layers["disks labels [correct 24]"]
    np.testing.assert_array_equal(correct.data, result.correct.labels)

    assert w.view.visible and w.view.value == "correct"
    assert correct.visible and not naive.visible
    w.view.value = "naive"
    assert naive.visible and not correct.visible and split.visible
    shots(viewer, "compare_naive")
    w.view.value = "side by side"
    assert _grid(viewer).enabled
    assert {ly.name for ly in viewer.layers if ly.visible} == {naive.name, correct.name,
                                                               split.name}
    shots(viewer, "compare_side_by_side")
    w.view.value = "correct"
    assert not _grid(viewer).enabled and viewer.layers["disks"].visible


# -- Segment: bad input ----------------------------------------------------------------------


def test_bad_input_is_one_line_and_loses_nothing(make_napari_viewer, errors, tmp_path):
    viewer, w = open_viewer(make_napari_viewer)
    assert w.run() is None
    assert len(errors) == 1 and "image layer" in errors[0]

    viewer.add_image(np.zeros((40, 40), np.float32), name="flat")
    use_model(w, tiny_model(ndim=3))
    assert w.run() is None
    assert "3 spatial axes" in errors[-1] and "\n" not in errors[-1]

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a model")
    w.model.value = FILE
    w.model_file.value = bad
    assert "not a readable model file" in errors[-1]
    assert w.run() is None
    assert [ly.name for ly in viewer.layers] == ["flat"]
    assert bad.read_bytes() == b"not a model"


def test_model_from_file(make_napari_viewer, tmp_path):
    viewer, w = open_viewer(make_napari_viewer)
    path = save_model(tiny_model(depth=3), tmp_path / "m.pt")
    w.model.value = FILE
    w.model_file.value = path
    assert not w.depth.enabled and w.depth.value == 3
    assert "grid f^l=8" in w.geometry_info.value
    assert w.current_model().config.depth == 3


# -- Train ---------------------------------------------------------------------------------


def test_train_window_rule_is_explained(make_napari_viewer):
    viewer, t = open_viewer(make_napari_viewer, TrainWidget)
    t.depth.value, t.factor.value = 3, 2
    t.window.value = 8
    assert not t.start_btn.enabled and "f^l = 8" in t.window_info.value
    t.window.value = 4
    assert "never trained" in t.window_info.value and not t.start_btn.enabled
    t.window.value = 16
    assert t.start_btn.enabled and "✓" in t.window_info.value


def test_fine_tuning_locks_the_architecture_to_the_start_model(make_napari_viewer):
    viewer, t = open_viewer(make_napari_viewer, TrainWidget)
    start = tiny_model(depth=3)
    REGISTRY.add(start, "start")
    t.init.value = ModelSource.registry("start")
    assert not t.depth.enabled and not t.base_channels.enabled
    assert (t.depth.value, t.base_channels.value, t.embedding_dim.value) == (3, 4, 4)
    t.init.value = "scratch"  # SCRATCH
    assert t.depth.enabled and t.base_channels.enabled


def test_train_a_few_iterations_then_segment_and_save(make_napari_viewer, qtbot, tmp_path,
                                                       errors, shots):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 950)
    seg = SegmentWidget(viewer)
    t = TrainWidget(viewer)
    t.napari_progress.value = False
    viewer.window.add_dock_widget(ScrollDock(seg), name="Segment", area="right")
    viewer.window.add_dock_widget(ScrollDock(t), name="Train", area="right", tabify=True)
    image, labels = periodic_disks((64, 64), radius=5, spacing=15, noise=0.01, seed=0)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    t.depth.value, t.base_channels.value, t.embedding_dim.value = 2, 4, 4
    t.window.value, t.iterations.value, t.batch_size.value = 12, 6, 1
    t.device.value, t.name_edit.value = "cpu", "disks model"
    wait(qtbot, t.start())
    assert t.status.value.startswith("done, 6 iterations"), t.status.value
    assert t.start_btn.enabled and not t.stop_btn.enabled
    assert t.plot.iterations == list(range(1, 7)) and t.plot.draws >= 1
    assert t.bar.value == 6
    assert REGISTRY.names() == ["disks model"]
    assert seg.model.value == ModelSource.registry("disks model")  # Segment switched to it
    assert seg.depth.value == 2 and not seg.depth.enabled
    shots(viewer, "train")

    path = tmp_path / "trained.pt"
    t.save_path.value = path
    assert t.save() == path and path.exists()
    before = path.read_bytes()
    assert t.save() is None and "exists" in errors[-1]
    assert path.read_bytes() == before


def test_train_stop_keeps_the_partial_model(make_napari_viewer, qtbot):
    viewer, t = open_viewer(make_napari_viewer, TrainWidget)
    image, labels = periodic_disks((64, 64), radius=5, spacing=15, seed=0)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    t.depth.value, t.base_channels.value, t.embedding_dim.value = 2, 4, 4
    t.window.value, t.iterations.value, t.batch_size.value = 12, 100_000, 1
    t.device.value = "cpu"
    job = t.start()
    qtbot.waitUntil(lambda: len(t.history) >= 2, timeout=30_000)
    t.stop_btn.clicked.emit()
    wait(qtbot, job, timeout=20_000)
    assert t.status.value.startswith("stopped after"), t.status.value
    assert 2 <= len(t.history) < 100_000
    assert len(REGISTRY) == 1 and t.model is not None
    assert t.model.config.extra["cancelled"] is True
    # calibrated at Stop too: the model carries its clustering values, the dock shows them
    assert "bandwidth" in t.model.config.extra and "calibrated" in t.val_info.value


def test_train_with_mismatched_layers_is_refused(make_napari_viewer, errors):
    viewer, t = open_viewer(make_napari_viewer, TrainWidget)
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    viewer.add_labels(np.ones((30, 30), np.uint32), name="gt")
    t.window.value = 16
    t.depth.value = 2
    assert t.start() is None
    assert "differ in shape" in errors[-1]
    assert len(REGISTRY) == 0


# -- docs screenshots with the bundled model ------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NSE_WRITE_DOCS_IMAGES"),
                    reason="writes docs/images; set NSE_WRITE_DOCS_IMAGES=1")
def test_docs_screenshots_with_the_default_model(make_napari_viewer, qtbot, shots):
    from napari_shift_equivariance.model import default_model_path

    if not default_model_path(2).exists():
        pytest.skip("no bundled default 2D model in this installation")
    viewer, w = open_viewer(make_napari_viewer, size=(1500, 950))
    add_sample(viewer, samples.nuclei_2d)
    viewer.layers["nuclei 2D labels"].visible = False
    w.image.value = viewer.layers["nuclei 2D"]
    w.model.value = ModelSource.default(2)
    step = w._grid_step()
    w.stitch.value, w.tile.value = "naive", 100
    w.preview()
    shots(viewer, "grid_naive")
    w.stitch.value, w.tile.value = "correct", 16 * step
    w.preview()
    shots(viewer, "grid_correct")
    wait(qtbot, w.run(), timeout=600_000)
    show = {"nuclei 2D", f"nuclei 2D labels [correct {16 * step}]"}
    for layer in viewer.layers:
        layer.visible = layer.name in show
    assert w.last_result.n_instances > 50
    shots(viewer, "segment")
    for box in (w.options_box, w.blockwise_box):  # the options, "auto (model)", blockwise
        box.expand(animate=False)
    opts = w.options_w.native
    qtbot.waitUntil(lambda: opts.height() >= opts.minimumSizeHint().height(), timeout=5_000)
    shots(viewer, "segment_options")
    for box in (w.options_box, w.blockwise_box):
        box.collapse(animate=False)
    w.stitch.value, w.tile.value = "both", 100
    wait(qtbot, w.run(), timeout=600_000)
    w.view.value = "naive"
    for layer in viewer.layers:
        layer.visible = layer.name in {"nuclei 2D", "nuclei 2D labels [naive 100]",
                                       "nuclei 2D split only by naive [100]",
                                       "nuclei 2D tile grid [naive 100]"}
    shots(viewer, "compare_naive")
    w.view.value = "side by side"
    shots(viewer, "compare_side_by_side")
