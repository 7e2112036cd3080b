"""Blockwise segment/predict: the same partition as in memory, resumable, on dask workers."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from napari_shift_equivariance import data
from napari_shift_equivariance.blockwise import (
    plan_blocks,
    predict_blockwise,
    run_blockwise,
    segment_blockwise,
)
from napari_shift_equivariance.errors import Cancelled, NSEError
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.options import ClusterOptions
from napari_shift_equivariance.predict import predict
from napari_shift_equivariance.segment import segment
from napari_shift_equivariance.tiling import plan_tiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(ndim=2, depth=2, factor=2):
    cfg = ModelConfig(ndim=ndim, depth=depth, factor=factor, base_channels=4, embedding_dim=3)
    return build_model(cfg, seed=0)


def _options(model, image, q=0.6):
    """Random weights: a threshold that makes components of a few blocks, a bandwidth that
    splits them into several clusters."""
    out = predict(model, image, "whole", device="cpu")
    e = out[:-1].reshape(out.shape[0] - 1, -1)
    return {"fg_threshold": float(np.quantile(out[-1], q)), "min_size": 2, "device": "cpu",
            "bandwidth": 0.2 * float(np.median(e.std(axis=1)))}


def same_partition(a, b):
    """Equal up to a renumbering of the instances (0 stays background)."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.c_[a, b], axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _nuclei(shape, seed=1):
    return data.nuclei(shape, seed=seed, radius=(3, 6))[0]


@pytest.fixture(scope="module")
def case2d():
    model = _model()
    image = _nuclei((64, 72))
    kw = _options(model, image)
    ref = segment(model, image, "correct", 8, **kw)
    assert ref.n_instances > 20
    return model, image, kw, ref


def test_plan_blocks_partition_the_image_with_the_whole_image_tiles():
    geo = _model().config.geometry
    tiles = plan_tiles((50, 70), geo, 8)
    plan = plan_blocks((3,), tiles, (20, 30))  # rounded down to multiples of the tile
    assert tuple(plan.block_shape) == (16, 24)
    assert plan.grid_shape == (3, 4, 3) and len(plan) == 36
    cover = np.zeros((3, 50, 70), int)
    for block in plan:
        cover[block.slices] += 1
        ts = plan.tiles_of(block)
        assert sum(t.output_roi.size for t in ts) == block.write_roi.size
        assert all(block.write_roi.contains(t.output_roi) for t in ts)
        assert all(block.read_roi.contains(t.input_roi) for t in ts)
    assert (cover == 1).all()


@pytest.mark.parametrize("block", [16, (16, 32), 200])
def test_2d_blockwise_equals_in_memory(tmp_path, case2d, block):
    model, image, kw, ref = case2d
    res = segment_blockwise(model, image, tmp_path / "l.zarr", block=block, tile=8, **kw)
    labels = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert labels.attrs["complete"] is True
    assert not (tmp_path / "l.zarr.partial").exists()
    assert same_partition(labels[:], ref.labels)
    assert res.n_instances == ref.n_instances == int(labels[:].max())
    if block != 200:
        assert res.info["n_crossing"] > 0  # components do cross block faces


@pytest.mark.parametrize("block", [16, (16, 32)])
def test_spatial_range_clustering_blockwise_equals_in_memory(tmp_path, case2d, block):
    # positions join the embeddings: blockwise must build the same points from the same
    # global positions (in the block, and for components read back from several blocks)
    model, image, kw, _ = case2d
    kw = {**kw, "spatial_radius": 6.0}
    ref = segment(model, image, "correct", 8, **kw)
    plain = segment(model, image, "correct", 8, **{**kw, "spatial_radius": 0})
    assert ref.n_instances != plain.n_instances  # positions change the clusters here
    res = segment_blockwise(model, image, tmp_path / "l.zarr", block=block, tile=8, **kw)
    assert res.info["n_crossing"] > 0 and res.info["spatial_radius"] == 6.0
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)


@pytest.mark.parametrize("block", [16, (16, 32)])
def test_coordinate_embeddings_blockwise_equal_in_memory(tmp_path, case2d, block):
    # a model trained with coordinates: clustering adds coord_scale * global position to the
    # first embedding channels, the same in every block as in memory
    import copy

    model, image, kw, _ = case2d
    model = copy.deepcopy(model)
    model.config.loss = {**model.config.loss, "coord_scale": 0.05}
    ref = segment(model, image, "correct", 8, **kw)
    assert ref.info["coord_scale"] == 0.05
    plain = segment(model, image, "correct", 8, cluster=ClusterOptions(coord_scale=0.0), **kw)
    assert not same_partition(ref.labels, plain.labels)  # the coordinates do matter here
    res = segment_blockwise(model, image, tmp_path / "l.zarr", block=block, tile=8, **kw)
    assert res.info["n_crossing"] > 0
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)


def test_a_component_larger_than_a_block(tmp_path, case2d):
    from scipy import ndimage

    from napari_shift_equivariance.clustering import components

    model, image, kw, ref = case2d
    fg = ref.prediction[-1] > kw["fg_threshold"]
    spans = [max(s.stop - s.start for s in o) for o in ndimage.find_objects(components(fg))]
    assert max(spans) > 2 * 8  # spans more than two blocks of 8
    segment_blockwise(model, image, tmp_path / "l.zarr", block=8, tile=8, **kw)
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)


@pytest.mark.parametrize("block", [16, (16, 32)])
def test_relative_min_size_blockwise_equals_in_memory(tmp_path, case2d, block):
    # the threshold is a fraction of the median over the whole image: blockwise gathers every
    # block's and every owner's sizes before it numbers the instances
    model, image, kw, ref = case2d
    kw = {**kw, "relative_min_size": 1.0}
    rel = segment(model, image, "correct", 8, **kw)
    assert rel.info["relative_threshold"] > kw["min_size"]
    assert 0 < rel.n_instances < ref.n_instances  # the filter does drop instances here
    res = segment_blockwise(model, image, tmp_path / "l.zarr", block=block, tile=8, **kw)
    assert res.info["n_crossing"] > 0
    assert res.info["relative_threshold"] == rel.info["relative_threshold"]
    labels = zarr.open_array(str(tmp_path / "l.zarr"))[:]
    assert same_partition(labels, rel.labels)
    assert res.n_instances == rel.n_instances == int(labels.max())
    assert np.array_equal(np.unique(labels), np.arange(rel.n_instances + 1))  # 1..K


def test_relative_bandwidth_blockwise_equals_in_memory(tmp_path, monkeypatch):
    # the scale comes from the image's central sample: blockwise predicts just the tiles
    # under it first, so both cluster at the same bandwidth; here the sample is smaller
    # than the image and off the tile grid
    from napari_shift_equivariance.clustering import scale

    monkeypatch.setitem(scale.SAMPLE_EDGE, 2, 36)
    model = _model()
    model.config.loss = {**model.config.loss, "coord_scale": 0.35}
    image = _nuclei((64, 72))
    # random weights: the positions dominate, patches of a few pixels at bandwidth 1
    kw = {**_options(model, image), "bandwidth": 1.0, "relative_bandwidth": 0.5}
    # the sample's tiles come first, as their own cancellable stage, before any store
    seen = []
    with pytest.raises(Cancelled):
        for ev in run_blockwise(model, image, tmp_path / "c.zarr", block=16, tile=8,
                                batch_size=2, cancel=lambda: len(seen) >= 2, **kw):
            seen.append(ev)
    assert [(ev.stage, ev.done) for ev in seen] == [("scale", 0), ("scale", 2)]
    assert seen[0].total > 2  # cancelled between its tile batches
    assert not list(tmp_path.iterdir())  # nothing written
    ref = segment(model, image, "correct", 8, **kw)
    assert ref.info["diameter"] > 0 and ref.info["bandwidth"] != kw["bandwidth"]
    assert ref.n_instances > 100
    res = segment_blockwise(model, image, tmp_path / "l.zarr", block=16, tile=8, **kw)
    assert res.info["bandwidth"] == ref.info["bandwidth"]
    assert res.info["diameter"] == ref.info["diameter"]
    assert res.info["relative_bandwidth"] == 0.5
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)
    stages = [ev.stage for ev in run_blockwise(model, image, tmp_path / "m.zarr", block=16,
                                               tile=8, **kw)]
    n = stages.count("scale")
    assert n >= 2 and stages[:n] == ["scale"] * n  # before every other stage
    # resumed, it finds the same bandwidth again and sees the run complete
    again = segment_blockwise(model, image, tmp_path / "l.zarr", block=16, tile=8,
                              resume=True, **kw)
    assert again.info.get("already_complete")


def test_relative_min_size_over_a_stack_is_one_median(tmp_path):
    model = _model()
    stack = np.stack([_nuclei((40, 44), seed=s) for s in range(3)])
    kw = {**_options(model, stack), "relative_min_size": 1.0}
    ref = segment(model, stack, "correct", 8, **kw)
    assert ref.info["relative_threshold"] > kw["min_size"]
    segment_blockwise(model, stack, tmp_path / "s.zarr", block=16, tile=8, **kw)
    assert same_partition(zarr.open_array(str(tmp_path / "s.zarr"))[:], ref.labels)


def test_2d_model_on_a_stack_plane_by_plane(tmp_path):
    model = _model()
    stack = np.stack([_nuclei((40, 44), seed=s) for s in range(3)])
    kw = _options(model, stack)
    ref = segment(model, stack, "correct", 8, **kw)
    segment_blockwise(model, stack, tmp_path / "s.zarr", block=16, tile=8, **kw)
    z = zarr.open_array(str(tmp_path / "s.zarr"))
    assert z.chunks == (1, 16, 16)
    assert same_partition(z[:], ref.labels)


@pytest.mark.parametrize("factor, tile, block", [(2, 4, (8, 8, 12)), ((1, 2, 2), (3, 4, 4),
                                                                      (6, 8, 8))])
def test_3d_blockwise_equals_in_memory(tmp_path, factor, tile, block):
    model = _model(3, 1, factor)
    image = data.nuclei((12, 22, 26), seed=2, radius=(3, 5))[0]
    kw = _options(model, image)
    ref = segment(model, image, "correct", tile, **kw)
    assert ref.n_instances > 5
    res = segment_blockwise(model, image, tmp_path / "v.zarr", block=block, tile=tile, **kw)
    assert res.info["n_crossing"] > 0
    assert same_partition(zarr.open_array(str(tmp_path / "v.zarr"))[:], ref.labels)


def test_predict_blockwise_equals_predict(tmp_path, case2d):
    model, image, _, _ = case2d
    whole = predict(model, image, "whole", device="cpu")
    predict_blockwise(model, image, tmp_path / "p.zarr", block=16, tile=8, device="cpu")
    z = zarr.open_array(str(tmp_path / "p.zarr"))
    assert z.shape == whole.shape and z.chunks == (4, 16, 16)
    np.testing.assert_allclose(z[:], whole, atol=1e-5)


def test_events_cancel_and_resume(tmp_path, case2d):
    model, image, kw, ref = case2d
    out = tmp_path / "l.zarr"
    seen = []

    def stop():
        return len(seen) >= 5

    with pytest.raises(Cancelled):
        for ev in run_blockwise(model, image, out, block=16, tile=8, cancel=stop, **kw):
            seen.append(ev)
    assert all(ev.stage == "predict" for ev in seen)
    assert seen[-1].block is not None and seen[-1].done == 4 and seen[-1].total == 20
    partial = tmp_path / "l.zarr.partial"
    assert partial.exists() and not out.exists()
    assert zarr.open_array(str(partial)).attrs["complete"] is False
    with pytest.raises(NSEError, match="--resume"):
        segment_blockwise(model, image, out, block=16, tile=8, **kw)
    with pytest.raises(NSEError, match="other"):
        segment_blockwise(model, image, out, block=32, tile=8, resume=True, **kw)
    events = list(run_blockwise(model, image, out, block=16, tile=8, resume=True, **kw))
    first = events[0]
    assert first.stage == "predict" and first.done == 4  # finished blocks are not redone
    assert events[-1].result.info["resumed"] is True
    assert same_partition(zarr.open_array(str(out))[:], ref.labels)
    with pytest.raises(NSEError, match="exists"):
        segment_blockwise(model, image, out, block=16, tile=8, **kw)
    again = segment_blockwise(model, image, out, block=16, tile=8, resume=True, **kw)
    assert again.info["resumed"] is True  # complete: nothing to do
    segment_blockwise(model, image, out, block=32, tile=8, overwrite=True, **kw)
    assert same_partition(zarr.open_array(str(out))[:], ref.labels)


def test_bad_requests_get_one_line(tmp_path, case2d):
    model, image, kw, _ = case2d
    with pytest.raises(NSEError, match="component"):
        segment_blockwise(model, image, tmp_path / "a.zarr", block=16, tile=8,
                          cluster=ClusterOptions(scope="global"), **kw)
    with pytest.raises(NSEError, match="does not exist"):
        segment_blockwise(model, image, tmp_path / "no" / "a.zarr", block=16, tile=8, **kw)


@pytest.mark.parametrize("kind", ["numpy", "zarr", "file"])
def test_channels_last_images_equal_in_memory(tmp_path, kind):
    # an RGB-like (Y, X, C) image: the channel axis is moved in front lazily, as in memory
    model = _model_rgb()
    image = np.stack([_nuclei((48, 56), seed=s) for s in (1, 2, 3)], axis=-1)
    kw = _options(model, np.moveaxis(image, -1, 0))
    ref = segment(model, image, "correct", 8, **kw)
    assert ref.n_instances > 3
    src = image
    if kind == "zarr":
        src = zarr.open_array(str(tmp_path / "rgb.zarr"), mode="w", shape=image.shape,
                              chunks=(16, 16, 3), dtype=image.dtype)
        src[...] = image
    elif kind == "file":  # an ImageRef: each worker opens the file and moves the axis
        src = tmp_path / "rgb.npy"
        np.save(src, image)
    segment_blockwise(model, src, tmp_path / "l.zarr", block=16, tile=8, **kw)
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)


def _model_rgb():
    cfg = ModelConfig(ndim=2, depth=2, factor=2, base_channels=4, embedding_dim=3,
                      in_channels=3)
    return build_model(cfg, seed=0)


def _cli(*args):
    return [sys.executable, "-m", "napari_shift_equivariance", *map(str, args)]


def test_kill_minus_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    model = _model()
    image = _nuclei((64, 72), seed=3)
    kw = _options(model, image)
    zarr.save_array(str(tmp_path / "img.zarr"), image)
    save_model(model, tmp_path / "m.pt")
    flags = ["--model", tmp_path / "m.pt", "--block", 16, "--tile", 8, "--device", "cpu",
             "--fg-threshold", kw["fg_threshold"], "--bandwidth", kw["bandwidth"],
             "--min-size", 2, "--quiet"]
    out = tmp_path / "l.zarr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli("segment", tmp_path / "img.zarr", "--out", out, *flags),
                            env=env, stderr=subprocess.PIPE)
    markers = tmp_path / "l.zarr.partial" / ".nse-work" / "predict"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if markers.exists() and len(list(markers.glob("*.npz"))) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in markers.glob("*.npz")}
    assert 4 <= len(done_before) < 20 and not out.exists()
    r = subprocess.run(_cli("segment", tmp_path / "img.zarr", "--out", out, *flags),
                       env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "--resume" in r.stderr  # refused without --resume
    r = subprocess.run(_cli("segment", tmp_path / "img.zarr", "--out", out, *flags, "--resume",
                            "--json"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = segment(model, image, "correct", 8, **kw)
    assert same_partition(zarr.open_array(str(out))[:], ref.labels)
    assert not (tmp_path / "l.zarr.partial").exists()
    assert '"resumed": true' in r.stdout


@pytest.mark.slow
def test_two_dask_workers_and_a_worker_killed_mid_run(tmp_path, case2d):
    distributed = pytest.importorskip("distributed")
    model, image, kw, ref = case2d
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(2, timeout=120)  # on a loaded machine they join late
        res = segment_blockwise(model, image, tmp_path / "a.zarr", block=16, tile=8,
                                client=client, threads_per_worker=1, **kw)
        assert res.info["workers"] == 2
        assert same_partition(zarr.open_array(str(tmp_path / "a.zarr"))[:], ref.labels)
        pids = list(client.run(os.getpid).values())
        killed = False
        for ev in run_blockwise(model, image, tmp_path / "b.zarr", block=8, tile=8,
                                client=client, **kw):
            if not killed and ev.stage == "predict" and ev.done >= 3:
                os.kill(pids[0], signal.SIGKILL)  # its running and queued blocks move on
                killed = True
        assert killed
        assert same_partition(zarr.open_array(str(tmp_path / "b.zarr"))[:], ref.labels)
    finally:
        client.close()
        cluster.close()


def test_ome_zarr_out_new_store_and_into_an_image(tmp_path, case2d):
    from ome_zarr.writer import write_image

    from napari_shift_equivariance.omezarr import list_labels, read_omezarr

    model, image, kw, ref = case2d
    segment_blockwise(model, image, tmp_path / "new.ome.zarr", block=16, tile=8, **kw)
    arr, meta = read_omezarr(tmp_path / "new.ome.zarr")
    assert meta["is_labels"] and arr.chunks == (16, 16)
    assert same_partition(arr[:], ref.labels)
    img = tmp_path / "img.ome.zarr"
    write_image(image, zarr.open_group(str(img), mode="w"), axes="yx")
    segment_blockwise(model, str(img), img, block=16, tile=8, **kw)  # labels/ of the image
    assert list_labels(img) == ["labels"]
    assert same_partition(zarr.open_array(str(img / "labels" / "labels" / "0"))[:], ref.labels)
    assert not (img / "labels" / "labels" / ".nse-work").exists()
    with pytest.raises(NSEError, match="already has labels"):
        segment_blockwise(model, str(img), img, block=16, tile=8, **kw)


def test_cli_goes_blockwise_when_the_memory_budget_is_too_small(tmp_path, case2d, capsys):
    import json

    from napari_shift_equivariance.cli import main

    model, image, kw, ref = case2d
    zarr.save_array(str(tmp_path / "img.zarr"), image)
    save_model(model, tmp_path / "m.pt")
    flags = ["--model", str(tmp_path / "m.pt"), "--tile", "8", "--device", "cpu", "--quiet",
             "--fg-threshold", str(kw["fg_threshold"]), "--bandwidth", str(kw["bandwidth"]),
             "--min-size", "2", "--memory-limit", "10KB"]
    img = str(tmp_path / "img.zarr")
    assert main(["segment", img, "--out", str(tmp_path / "l.tif"), *flags]) == 2
    assert "memory limit" in capsys.readouterr().err
    assert main(["segment", img, "--out", str(tmp_path / "l.zarr"), *flags, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "segment" and info["n_blocks"] == 1  # default block: one
    assert same_partition(zarr.open_array(str(tmp_path / "l.zarr"))[:], ref.labels)
    assert main(["predict", img, "--out", str(tmp_path / "p.zarr"), "--model",
                 str(tmp_path / "m.pt"), "--block", "32", "--tile", "8", "--device", "cpu",
                 "--quiet"]) == 0
    assert zarr.open_array(str(tmp_path / "p.zarr")).chunks == (4, 32, 32)
    assert main(["segment", img, "--out", str(tmp_path / "x.zarr"), *flags, "--whole"]) == 2
    assert "correct tiles" in capsys.readouterr().err
    assert main(["segment", img, "--out", str(tmp_path / "y.zarr"), *flags[:-2],
                 "--memory-limit", "lots"]) == 2
    assert "memory size" in capsys.readouterr().err
