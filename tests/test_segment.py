"""segment: predict -> foreground -> mean-shift -> labels; correct tiling = whole-image pass."""

import json
import threading

import numpy as np
import pytest
import tifffile
from sklearn.metrics import adjusted_rand_score

from napari_shift_equivariance import data
from napari_shift_equivariance.cli import main
from napari_shift_equivariance.clustering import estimate_bandwidth_from_margins
from napari_shift_equivariance.errors import Cancelled, NSEError
from napari_shift_equivariance.model import ModelConfig, build_model
from napari_shift_equivariance.predict import predict
from napari_shift_equivariance.segment import (
    EmptyForegroundWarning,
    instances_from_prediction,
    relabel_sequential,
    segment,
)


def _model(ndim=2, depth=2, **kw):
    cfg = ModelConfig(ndim=ndim, depth=depth, factor=2, base_channels=4, embedding_dim=3, **kw)
    return build_model(cfg, seed=0)


def _ari(a, b):
    return adjusted_rand_score(a.ravel(), b.ravel())


def _nuclei(shape=(61, 70), seed=0):
    return data.nuclei(shape, seed=seed, radius=(4, 7))


@pytest.mark.parametrize("ndim, depth, shape, tiles", [
    (2, 2, (48, 52), [8, (12, 20)]),
    (2, 3, (48, 52), [16]),
    (3, 1, (14, 21, 19), [(4, 6, 8)]),
])
def test_correct_tiling_gives_the_whole_image_partition(ndim, depth, shape, tiles):
    model = _model(ndim, depth)
    image, _ = data.nuclei(shape, seed=1, radius=(3, 6))
    # random weights: pick the threshold and bandwidth from the output so that about half
    # the pixels are foreground and the embeddings fall into many clusters
    out = predict(model, image, "whole", device="cpu")
    kw = {"fg_threshold": float(np.quantile(out[-1], 0.5)), "min_size": 2, "device": "cpu",
          "bandwidth": 0.2 * float(np.median(out[:-1].reshape(3, -1).std(axis=1))),
          "batch_size": 16}
    whole = segment(model, image, "whole", **kw)
    assert whole.labels.dtype == np.uint32 and whole.labels.shape == shape
    assert whole.n_instances > 5
    # Correct tiles give the whole-image embeddings up to float rounding (~1e-7, tested in
    # test_predict). Random weights and a bandwidth of a fifth of the spread cut a continuum
    # of embeddings into many clusters, so a few pixels sit within rounding of a mean-shift
    # decision boundary: the partitions agree but for those (measured ARI >= 0.998 over 12
    # images). Exact equality on well-separated embeddings: the default-model test below.
    worst = 1.0
    for tile in tiles:
        tiled = segment(model, image, "correct", tile, **kw)
        assert tiled.plan.mode == "correct" and len(tiled.plan) > 1
        worst = min(worst, _ari(tiled.labels, whole.labels))
        assert worst >= 0.995, tile
    # naive tiles off the grid change the partition far more (same model, threshold, bandwidth)
    naive = segment(model, image, "naive", 10 if ndim == 2 else (5, 7, 7), **kw)
    assert _ari(naive.labels, whole.labels) < min(worst, 0.99)


@pytest.mark.parametrize("tile", [16, 32, (24, 40)])
def test_correct_tiling_equals_the_whole_image_labels_with_the_default_model(tile):
    from napari_shift_equivariance.model import load_model

    model = load_model("default")
    image, _ = data.nuclei((96, 112), seed=4)
    whole = segment(model, image, "whole", device="cpu")
    tiled = segment(model, image, "correct", tile, device="cpu")
    assert whole.n_instances > 5 and len(tiled.plan) > 1
    assert _ari(tiled.labels, whole.labels) == 1.0
    assert tiled.n_instances == whole.n_instances


def test_labels_sequential_and_small_fragments_removed():
    # embeddings constant per object, far apart: clustering must give back the objects
    gt = np.zeros((40, 50), np.uint32)
    gt[2:12, 3:15] = 1
    gt[20:35, 5:20] = 2
    gt[15:30, 30:45] = 3
    gt[37:39, 47:49] = 4  # 4 pixels
    pred = np.zeros((3, *gt.shape), np.float32)
    for k in range(1, 5):
        pred[0][gt == k] = 10.0 * k
        pred[1][gt == k] = -5.0 * k
    pred[-1] = (gt > 0).astype(np.float32)
    labels, info = instances_from_prediction(pred, 2, bandwidth=2.0, min_size=5)
    assert labels.dtype == np.uint32
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert not labels[gt == 4].any()
    assert _ari(labels[gt != 4], gt[gt != 4]) == 1.0
    assert info["n_instances"] == 3
    labels, info = instances_from_prediction(pred, 2, bandwidth=2.0, min_size=0)
    assert info["n_instances"] == 4 and _ari(labels, gt) == 1.0


def test_relative_min_size_drops_what_is_small_for_this_image_over_all_planes():
    # plane 0: objects of 120, 225 and 180 px and a 16 px fragment; plane 1: three 16 px
    # nuclei. The median over both planes is 16 px, so 0.5 of it keeps everything; plane 0
    # alone has a median of 150 px and loses its fragment
    plane = np.zeros((2, 40, 50), np.uint32)
    plane[0, 2:12, 3:15], plane[0, 20:35, 5:20], plane[0, 15:30, 30:42] = 1, 2, 3
    plane[0, 36:40, 46:50] = 4
    for k, x in enumerate((2, 12, 22), start=5):
        plane[1, 5:9, x:x + 4] = k
    pred = np.zeros((3, *plane.shape), np.float32)
    for k in range(1, 8):
        pred[0][plane == k] = 10.0 * k
    pred[-1] = (plane > 0).astype(np.float32)
    both, info = instances_from_prediction(pred, 2, bandwidth=2.0, min_size=0,
                                           relative_min_size=0.5)
    assert info["relative_threshold"] == 8 and info["n_instances"] == 7
    alone, info = instances_from_prediction(pred[:, :1], 2, bandwidth=2.0, min_size=0,
                                            relative_min_size=0.5)
    assert info["relative_threshold"] == 75 and info["n_instances"] == 3
    assert not alone[plane[:1] == 4].any()
    assert set(np.unique(alone)) == {0, 1, 2, 3}
    model = _model()
    res = segment(model, _nuclei()[0], "whole", device="cpu", relative_min_size=0.3)
    assert res.info["relative_min_size"] == 0.3 and res.info["cluster"]["relative_min_size"] == 0.3


COORD = 0.35


def _coord_scene(side, n=3, seed=0, spread=0.1):
    """An ``n x n`` grid of touching squares of ``side`` px and a network output with
    coordinates: every pixel points at its square's centre, with an error that grows with
    the size (``spread x side`` px), as a network's offsets do."""
    rng = np.random.default_rng(seed)
    shape = (n * side + 4, n * side + 4)
    gt = np.zeros(shape, np.int32)
    pred = np.zeros((3, *shape), np.float32)
    pos = np.indices(shape).astype(np.float32)
    for k, (i, j) in enumerate(np.ndindex(n, n), start=1):
        box = (slice(2 + i * side, 2 + (i + 1) * side), slice(2 + j * side, 2 + (j + 1) * side))
        gt[box] = k
        for a, c in enumerate((2 + i * side, 2 + j * side)):
            pred[a][box] = COORD * (c + (side - 1) / 2 - pos[a][box]) + rng.normal(
                0, spread * side * COORD, (side, side))
    pred[2] = np.where(gt > 0, 0.9, 0.05)
    return gt, pred


def test_a_relative_bandwidth_follows_the_objects_size():
    # small touching squares merge at a bandwidth wide enough for the large ones' spread;
    # a fraction of the span of each image's median object suits both
    kw = {"coord_scale": COORD, "min_size": 0, "device": "cpu", "bandwidth": 1.4}
    for side in (6, 24):
        gt, pred = _coord_scene(side)
        fixed, info = instances_from_prediction(pred, 2, **kw)
        assert info["bandwidth"] == 1.4 and info["diameter"] is None
        labels, info = instances_from_prediction(pred, 2, relative_bandwidth=0.3, **kw)
        assert _ari(labels, gt) == 1.0 and info["n_instances"] == 9
        d = 2 * np.sqrt(side * side / np.pi)  # a disk of the squares' area
        assert info["diameter"] == pytest.approx(d, rel=0.25)
        assert info["bandwidth"] == pytest.approx(0.3 * COORD * info["diameter"])
        assert info["relative_bandwidth"] == 0.3
        if side == 6:
            assert _ari(fixed, gt) < 1.0  # what the fixed bandwidth does to them


def test_a_relative_bandwidth_needs_coordinates_and_objects():
    gt, pred = _coord_scene(6)
    with pytest.raises(NSEError, match="coordinates"):
        instances_from_prediction(pred, 2, bandwidth=1.0, relative_bandwidth=0.3,
                                  coord_scale=0, device="cpu")
    empty = pred.copy()
    empty[-1] = 0.0
    with pytest.warns(EmptyForegroundWarning, match="fixed bandwidth 1"):
        labels, info = instances_from_prediction(empty, 2, bandwidth=1.0, coord_scale=COORD,
                                                 relative_bandwidth=0.3, device="cpu")
    assert info["bandwidth"] == 1.0 and info["diameter"] is None and not labels.any()


def test_the_scale_comes_from_a_central_sample_of_the_middle_plane(monkeypatch):
    from napari_shift_equivariance.clustering import scale

    (_, small), (_, large) = _coord_scene(6, n=8), _coord_scene(24, n=2)  # both 52 x 52
    kw = {"coord_scale": COORD, "min_size": 0, "device": "cpu", "bandwidth": 1.4,
          "relative_bandwidth": 0.3}
    # the middle plane of three sets the scale of all of them
    _, info = instances_from_prediction(np.stack([small, large, small], axis=1), 2, **kw)
    assert info["diameter"] > 20
    _, info = instances_from_prediction(np.stack([large, small, large], axis=1), 2, **kw)
    assert info["diameter"] < 12
    # and only its central sample: the large squares' corners are cut out of it
    monkeypatch.setitem(scale.SAMPLE_EDGE, 2, 12)
    assert scale.sample_roi((52, 52)).begin == (20, 20)
    _, info = instances_from_prediction(large, 2, **kw)
    assert info["diameter"] < 15


def test_relabel_sequential():
    lab = np.array([[0, 7, 7], [3, 0, 100]])
    out, k = relabel_sequential(lab, start=5)
    assert k == 3 and out.dtype == np.uint32
    np.testing.assert_array_equal(out, [[0, 6, 6], [5, 0, 7]])


def test_plane_by_plane_unique_labels():
    model = _model(normalization={"kind": "none"})
    planes = [_nuclei((40, 44), seed=s)[0] for s in range(3)]
    stack = np.stack(planes)
    res = segment(model, stack, "whole", device="cpu")
    assert res.labels.shape == stack.shape
    assert res.prediction.shape == (4, *stack.shape)
    seen = set()
    for z, plane in enumerate(planes):
        alone = segment(model, plane, "whole", device="cpu")
        assert _ari(res.labels[z], alone.labels) == 1.0
        ids = set(np.unique(res.labels[z])) - {0}
        assert not ids & seen  # no label shared between planes
        seen |= ids
    assert seen == set(range(1, res.n_instances + 1))


def test_empty_foreground_warns_and_returns_zeros():
    model = _model()
    with np.errstate(all="ignore"):
        model.head.bias.data[-1] = -1e4  # foreground logit: never foreground
    image, _ = _nuclei()
    with pytest.warns(EmptyForegroundWarning, match="no pixel"):
        res = segment(model, image, "whole", device="cpu")
    assert res.labels.dtype == np.uint32 and not res.labels.any()
    assert res.n_instances == 0 and res.info["warnings"]


def test_bandwidth_from_loss_margins_and_explicit():
    model = _model(loss={"delta_v": 0.2, "delta_d": 2.0})
    image, _ = _nuclei((40, 40))
    res = segment(model, image, "whole", device="cpu")
    assert res.info["bandwidth"] == estimate_bandwidth_from_margins(0.2, 2.0)
    res2 = segment(model, image, "whole", device="cpu", bandwidth=0.05)
    assert res2.info["bandwidth"] == 0.05
    # a much smaller bandwidth cannot give fewer instances on the same embeddings
    assert res2.n_instances >= res.n_instances


@pytest.mark.parametrize("kwargs, match", [
    ({"bandwidth": 0.0}, "bandwidth"),
    ({"bandwidth": -1.0}, "bandwidth"),
    ({"scope": "galaxy"}, "scope"),
    ({"fg_threshold": 1.5}, "threshold"),
    ({"min_size": -3}, "min size"),
    ({"mode": "correct", "tile": 3}, "below the grid"),
])
def test_bad_options(kwargs, match):
    image, _ = _nuclei((30, 30))
    mode = kwargs.pop("mode", "whole")
    tile = kwargs.pop("tile", None)
    with pytest.raises(NSEError, match=match):
        segment(_model(), image, mode, tile, device="cpu", **kwargs)


def test_progress_stages_determinism_and_cancel():
    model = _model()
    image, _ = _nuclei((40, 44))
    calls = []
    a = segment(model, image, "correct", 12, device="cpu",
                progress=lambda s, d, t: calls.append((s, d, t)))
    stages = [c[0] for c in calls]
    assert stages[0] == "predict" and stages[-1] == "cluster"
    assert stages.index("cluster") > max(i for i, s in enumerate(stages) if s == "predict")
    assert calls[-1][1] == calls[-1][2]
    b = segment(model, image, "correct", 12, device="cpu")
    np.testing.assert_array_equal(a.labels, b.labels)  # no randomness: same image, same labels
    with pytest.raises(TypeError):  # the clustering has no seed (it would do nothing)
        segment(model, image, "correct", 12, device="cpu", seed=3)
    assert set(a.info["times"]) >= {"predict", "cluster", "total"}
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        segment(model, image, "correct", 12, device="cpu", cancel=stop)


def test_cli_segment(tmp_path, capsys):
    from napari_shift_equivariance.model import save_model

    model_path = save_model(_model(), tmp_path / "m.pt")
    image, _ = _nuclei()
    tifffile.imwrite(tmp_path / "img.tif", image)
    out = tmp_path / "labels.tif"
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(out), "--tile", "12", "--stitch", "naive", "--json", "--quiet",
               "--device", "cpu"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert doc["n_instances"] == int(labels.max()) and doc["mode"] == "naive"
    # never overwrite without --overwrite; the file stays as it was
    before = out.read_bytes()
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(out), "--whole", "--quiet"])
    assert rc == 2 and "refusing" in capsys.readouterr().err
    assert out.read_bytes() == before
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(tmp_path / "x.tif"), "--bandwidth", "-1", "--quiet"])
    assert rc == 2 and "bandwidth" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(tmp_path / "x.tif"), "--relative-min-size", "2", "--quiet"])
    assert rc == 2 and "relative min size" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(tmp_path / "r.tif"), "--relative-min-size", "0.5", "--json", "--quiet",
               "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["relative_min_size"] == 0.5
    assert not list(tmp_path.glob("*.partial"))
    # a relative bandwidth: a clear error without coordinates, nothing written
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(model_path), "--out",
               str(tmp_path / "y.tif"), "--relative-bandwidth", "0.3", "--quiet",
               "--device", "cpu"])
    assert rc == 2 and "coordinates" in capsys.readouterr().err
    assert not (tmp_path / "y.tif").exists()
    coords = _model()
    coords.config.loss = {**coords.config.loss, "coord_scale": 0.35}
    coord_path = save_model(coords, tmp_path / "c.pt")
    rc = main(["segment", str(tmp_path / "img.tif"), "--model", str(coord_path), "--out",
               str(tmp_path / "y.tif"), "--relative-bandwidth", "0.3", "--bandwidth", "1",
               "--json", "--quiet", "--device", "cpu"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["relative_bandwidth"] == 0.3 and doc["diameter"] > 0
    assert doc["bandwidth"] == pytest.approx(0.3 * 0.35 * doc["diameter"])


def test_default_bandwidth_prefers_the_models_calibrated_one():
    from napari_shift_equivariance.model import ModelConfig
    from napari_shift_equivariance.segment import default_bandwidth

    cfg = ModelConfig(loss={"delta_v": 0.5, "delta_d": 3.0})
    from_margins = default_bandwidth(cfg)
    assert from_margins == 1.5
    cfg.extra["bandwidth"] = 3.0
    assert default_bandwidth(cfg) == 3.0
