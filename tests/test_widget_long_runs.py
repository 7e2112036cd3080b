"""The Segment dock beyond one in-memory image: a large layer blockwise into a zarr store, and
a folder of images (real viewer under Xvfb)."""

from __future__ import annotations

import csv
import re
import threading

import numpy as np
import pytest

from napari_shift_equivariance._widgets import SegmentWidget, _common
from napari_shift_equivariance._widgets._registry import REGISTRY, ModelSource
from napari_shift_equivariance.data import periodic_disks
from napari_shift_equivariance.io import read_image, write_array
from napari_shift_equivariance.model import ModelConfig, build_model
from napari_shift_equivariance.segment import segment

pytestmark = [pytest.mark.napari, pytest.mark.usefixtures("clean_registry")]


def tiny_model(seed: int = 0):
    cfg = ModelConfig(ndim=2, depth=2, factor=2, base_channels=4, embedding_dim=4)
    return build_model(cfg, seed=seed)


def wait(qtbot, job, timeout: int = 120_000) -> None:
    assert job is not None, "the dock did not start a job"
    qtbot.waitUntil(lambda: not job.running, timeout=timeout)


class Reads:
    """An array-like over ``data`` that records how many pixels each read takes, and in
    which thread: the viewer must never read the whole image."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.size = data.size
        self.log: list[tuple[bool, int]] = []

    def __getitem__(self, key):
        out = np.asarray(self._data[key])
        self.log.append((threading.current_thread() is threading.main_thread(), out.size))
        return out

    def __array__(self, dtype=None, copy=None):
        return self[...] if dtype is None else self[...].astype(dtype)


def open_dock(make_napari_viewer, model):
    viewer = make_napari_viewer(show=True)
    w = SegmentWidget(viewer)
    w.napari_progress.value = False
    viewer.window.add_dock_widget(w, area="right")
    REGISTRY.add(model, "tiny")
    w.model.value = ModelSource.registry("tiny")
    w.device.value = "cpu"
    w.min_size.value = 0
    return viewer, w


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering (0 stays background)."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def stack_image(planes: int = 3, size: int = 64) -> np.ndarray:
    return np.stack([periodic_disks((size, size), radius=5, spacing=15, noise=0.01,
                                    offset=z, seed=z)[0] for z in range(planes)])


class Recorder(_common.NullProgress):
    """Stands in for the progress bar; logs (stage, done, total, labels layer present, and
    showing the per-block labels before the merge)."""

    def __init__(self, viewer) -> None:
        self.viewer, self.desc, self.log = viewer, "", []

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, n: int = 1) -> None:
        super().update(n)
        names = [ly.name for ly in self.viewer.layers]
        there = "stack labels [blockwise]" in names
        provisional = there and self.viewer.layers["stack labels [blockwise]"].metadata[
            "napari_shift_equivariance"]["provisional"]
        self.log.append((self.desc, self.n, self.total, there, provisional))


def test_large_layer_is_segmented_blockwise_into_a_lazy_layer(make_napari_viewer, qtbot,
                                                              tmp_path, monkeypatch):
    from napari_shift_equivariance._widgets import _long_runs

    model = tiny_model()
    viewer, w = open_dock(make_napari_viewer, model)
    image = stack_image()
    lazy = Reads(image)
    viewer.add_image(lazy, name="stack")  # not a numpy array: auto goes blockwise
    w.stitch.value, w.tile.value, w.block.value = "correct", 16, 32
    bar = Recorder(viewer)
    monkeypatch.setattr(_long_runs, "activity_progress", lambda *a: bar)

    out = tmp_path / "labels.zarr"
    assert w.run() is None  # no store named yet: one line, nothing started
    w.store.value = out
    wait(qtbot, w.run())
    layer = viewer.layers["stack labels [blockwise]"]
    assert not isinstance(layer.data, np.ndarray)  # lazy, on the store
    assert out.exists() and not (tmp_path / "labels.zarr.partial").exists()
    labels = np.asarray(read_image(out, lazy=False))
    np.testing.assert_array_equal(np.asarray(layer.data[:]), labels)
    api = segment(model, image, "correct", 16, device="cpu", min_size=0)
    assert labels.max() > 0 and same_partition(labels, api.labels)
    assert w.last_result.n_instances == api.n_instances
    # progress per block: 3 planes × 2×2 blocks of 32 px
    # the lazy layer shows each block's labels as it is predicted, the final ones once written
    assert ("blockwise: predict + label", 12, 12, True, True) in bar.log
    writing = [(there, prov) for desc, _, _, there, prov in bar.log
               if desc == "blockwise: write labels"]
    assert writing and all(there and not prov for there, prov in writing)
    assert w.status.value.startswith(f"blockwise: {api.n_instances} objects")
    # the viewer read one plane at a time, never the whole stack
    ui_reads = [n for ui, n in lazy.log if ui]
    assert ui_reads and max(ui_reads) <= image[0].size


def test_blockwise_relative_bandwidth_reports_its_scale_stage(make_napari_viewer, qtbot,
                                                             tmp_path, monkeypatch):
    # a relative bandwidth: the tiles under the central sample are predicted first, with
    # their own progress, and the run clusters at the bandwidth segment finds
    from napari_shift_equivariance._widgets import _long_runs

    model = tiny_model()
    model.config.loss = {**model.config.loss, "coord_scale": 0.35}
    viewer, w = open_dock(make_napari_viewer, model)
    image = stack_image(planes=1, size=96)[0]
    viewer.add_image(image, name="stack")
    w.blockwise.value = "always"
    w.stitch.value, w.tile.value, w.block.value = "correct", 16, 32
    w.relative_bandwidth.value = 0.5
    bar = Recorder(viewer)
    monkeypatch.setattr(_long_runs, "activity_progress", lambda *a: bar)
    w.store.value = out = tmp_path / "labels.zarr"
    wait(qtbot, w.run())
    stages = [desc for desc, *_ in bar.log]
    n = stages.count("blockwise: find the objects' size")
    assert n >= 1 and stages[:n] == ["blockwise: find the objects' size"] * n
    assert "blockwise: predict + label" in stages[n:]
    api = segment(model, image, "correct", 16, device="cpu", min_size=0,
                  relative_bandwidth=0.5)
    assert w.last_result.info["bandwidth"] == api.info["bandwidth"]
    assert same_partition(np.asarray(read_image(out, lazy=False)), api.labels)


def test_blockwise_cancel_keeps_blocks_and_resumes(make_napari_viewer, qtbot, tmp_path):
    model = tiny_model(seed=2)
    viewer, w = open_dock(make_napari_viewer, model)
    image = stack_image(planes=4, size=96)
    viewer.add_image(image, name="img")
    w.blockwise.value = "always"
    w.stitch.value, w.tile.value, w.block.value = "correct", 16, 16
    w.store.value = out = tmp_path / "big.zarr"
    job = w.run()
    def some_blocks_done() -> bool:
        m = re.match(r"blockwise predict \+ label: (\d+)/", w.status.value)
        return m is not None and int(m.group(1)) >= 2

    qtbot.waitUntil(some_blocks_done, timeout=60_000)
    w.cancel_btn.clicked.emit()
    wait(qtbot, job)
    assert w.status.value.startswith("cancelled; the finished blocks are kept")
    assert [ly.name for ly in viewer.layers] == ["img"]  # nothing that looks complete
    assert (tmp_path / "big.zarr.partial").exists() and not out.exists()

    wait(qtbot, w.run())  # the same settings resume into the same store
    assert w.last_result.info["resumed"] is True
    labels = np.asarray(read_image(out, lazy=False))
    api = segment(model, image, "correct", 16, device="cpu", min_size=0)
    assert same_partition(labels, api.labels)


def test_blockwise_refusals_are_one_line(make_napari_viewer, qtbot, tmp_path, errors):
    viewer, w = open_dock(make_napari_viewer, tiny_model())
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    w.blockwise.value = "always"
    w.store.value = tmp_path / "x.zarr"
    w.stitch.value = "naive"
    assert w.run() is None and "correct stitching" in errors[-1]
    w.stitch.value, w.scope.value = "correct", "global"
    assert w.run() is None and "'component' only" in errors[-1]
    w.scope.value = "component"
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "x.zarr" / "keep.txt").write_text("mine")
    wait(qtbot, w.run())  # the store is checked in the worker: refused there
    assert "overwrite the store" in errors[-1] and "--" not in errors[-1]
    assert (tmp_path / "x.zarr" / "keep.txt").read_text() == "mine"


def test_folder_is_segmented_file_by_file(make_napari_viewer, qtbot, tmp_path):
    model = tiny_model()
    viewer, w = open_dock(make_napari_viewer, model)
    src = tmp_path / "images"
    src.mkdir()
    images = {}
    for i in range(3):
        images[f"img{i}"] = periodic_disks((48, 48), radius=5, spacing=15, noise=0.01,
                                           seed=i)[0]
        write_array(src / f"img{i}.tif", images[f"img{i}"])
    (src / "broken.tif").write_bytes(b"not a tif")
    out = tmp_path / "out"
    w.folder_in.value, w.folder_out.value = src, out
    w.stitch.value, w.tile.value = "correct", 16
    wait(qtbot, w.run_folder())
    items = {it.source.name: it.status for it in w.last_folder["items"]}
    assert items == {"broken.tif": "failed", "img0.tif": "done", "img1.tif": "done",
                     "img2.tif": "done"}
    assert w.status.value.startswith("folder: 3 done, 1 failed")
    assert "broken.tif" in w.status.value and "broken.tif" in w.status.tooltip
    api = segment(model, images["img1"], "correct", 16, device="cpu", min_size=0)
    np.testing.assert_array_equal(np.asarray(read_image(out / "img1.tif", lazy=False)),
                                  api.labels)
    with open(out / "summary.csv", newline="") as fh:
        rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(fh)}
    assert rows["img1.tif"]["instances"] == str(api.n_instances)
    assert [ly.name for ly in viewer.layers] == []  # files, not layers

    before = (out / "img0.tif").stat().st_mtime_ns
    wait(qtbot, w.run_folder())  # existing outputs are skipped unless asked
    assert w.status.value.startswith("folder: 3 skipped, 1 failed")
    assert (out / "img0.tif").stat().st_mtime_ns == before


def test_multiscale_layer_goes_blockwise_on_level_0(make_napari_viewer, qtbot, tmp_path):
    model = tiny_model(seed=1)
    viewer, w = open_dock(make_napari_viewer, model)
    image = periodic_disks((64, 64), radius=5, spacing=15, noise=0.01, seed=3)[0]
    viewer.add_image([image, image[::2, ::2]], name="pyramid", multiscale=True,
                     scale=(0.5, 0.5))
    w.stitch.value, w.tile.value, w.block.value = "correct", 16, 32
    w.store.value = tmp_path / "pyramid.ome.zarr"  # a new OME-Zarr holding the labels
    wait(qtbot, w.run())
    layer = viewer.layers["pyramid labels [blockwise]"]
    assert layer.data.shape == image.shape and tuple(layer.scale) == (0.5, 0.5)
    api = segment(model, image, "correct", 16, device="cpu", min_size=0)
    assert same_partition(np.asarray(layer.data[:]), api.labels)
