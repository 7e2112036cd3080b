"""The Train dock shows validation AP while training and the calibration at the end / Stop
(a thin call of :func:`train.train`, which calibrates on the held-out crop)."""

from __future__ import annotations

import pytest

from napari_shift_equivariance._widgets import TrainWidget
from napari_shift_equivariance._widgets.train_widget import validation_line
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.options import ClusterOptions
from napari_shift_equivariance.train.refit import HISTORY_KEY as REFIT_KEY

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("clean_registry")]


def _dock(make_napari_viewer, iterations):
    viewer = make_napari_viewer(show=True)
    t = TrainWidget(viewer)
    t.napari_progress.value = False
    viewer.window.add_dock_widget(t, name="Train", area="right")
    image, labels = nuclei((80, 64), radius=(3.0, 6.0), seed=4)
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="gt")
    t.depth.value, t.base_channels.value, t.embedding_dim.value = 1, 4, 4
    t.window.value, t.iterations.value, t.batch_size.value = 12, iterations, 1
    t.device.value = "cpu"
    return t


def test_dock_shows_validation_ap_and_the_calibration(make_napari_viewer, qtbot):
    t = _dock(make_napari_viewer, 8)
    job = t.start()
    qtbot.waitUntil(lambda: not job.running, timeout=90_000)
    assert t.status.value.startswith("done, 8 iterations"), t.status.value
    assert any("val_ap" in e for e in t.history)  # validated while training
    # the default refit: the crop's AP is shown, then the crop joins training (iteration 7)
    switch = [e for e in t.history if REFIT_KEY in e]
    assert [e["iteration"] for e in switch] == [7]
    assert validation_line(switch[0]) == (f"held-out AP@0.5: {switch[0][REFIT_KEY]:.3f}, then "
                                          "the crop joined training (iteration 7)")
    assert validation_line({"iteration": 3, "val_ap": 0.5}) == (
        "validation AP@0.5: 0.500 (iteration 3)")
    assert validation_line({"iteration": 4}) is None
    assert "before it joined training" in t.val_info.value
    cal = t.model.config.extra["calibration"]
    assert t.val_info.value.startswith(f"calibrated: AP@0.5 {cal['ap']:.3f} on the "
                                       "calibration data")
    assert cal["heldout_ap"] is not None  # calibrated on the training image too
    assert f"{cal['heldout_ap']:.3f} on the held-out crop alone" in t.val_info.value
    opts = ClusterOptions().resolve(t.model.config)
    assert opts.bandwidth == cal["bandwidth"] and opts.fg_threshold == cal["fg_threshold"]


def test_stop_calibrates_the_partial_model(make_napari_viewer, qtbot):
    t = _dock(make_napari_viewer, 100_000)
    job = t.start()
    qtbot.waitUntil(lambda: len(t.history) >= 2, timeout=60_000)
    t.stop_btn.clicked.emit()
    qtbot.waitUntil(lambda: not job.running, timeout=60_000)
    assert t.status.value.startswith("stopped after"), t.status.value
    extra = t.model.config.extra
    assert extra["cancelled"] is True and "bandwidth" in extra and "calibration" in extra
    assert "calibrated" in t.val_info.value
