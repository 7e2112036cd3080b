"""Calibration: bandwidth, foreground threshold and minimum size chosen by AP@0.5 on held-out
data, stored in the model, used by segment; a trained model never keeps an over-splitting
bandwidth."""

import numpy as np
import pytest
import torch

from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.options import ClusterOptions
from napari_shift_equivariance.segment import instances_from_prediction, segment
from napari_shift_equivariance.train import (
    CALIBRATION_KEYS,
    WIDE_TOLERANCE,
    Calibration,
    TrainConfig,
    ap50,
    calibrate,
    loop,
    margin_bandwidth,
    train,
)
from napari_shift_equivariance.train.calibrate import _pick

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model():
    return build_model(ModelConfig(depth=1, base_channels=2, embedding_dim=2), seed=0)


@pytest.fixture(scope="module")
def scene():
    """Ground truth and a synthetic network output whose instance embeddings are far apart
    but loose (spread 1.2 around each mean): the loss-margin bandwidth (1.0) over-splits them.
    Foreground probability 0.8 on the nuclei, 0.55 on a few background blobs."""
    _, gt = nuclei((64, 64), radius=(4.0, 6.0), touching=0.0, seed=3)
    rng = np.random.default_rng(0)
    ids = np.unique(gt)[1:]
    means = {int(k): np.array([12.0 * i, 12.0 * (i % 3)]) for i, k in enumerate(ids)}
    emb = rng.normal(0, 1.2, (2, *gt.shape))
    for k, m in means.items():
        emb[:, gt == k] += m[:, None]
    fg = np.where(gt > 0, 0.8, 0.05)
    for y, x in ((5, 5), (50, 10), (30, 55)):
        blob = np.zeros_like(fg, bool)
        blob[max(y - 3, 0):y + 3, max(x - 3, 0):x + 3] = True
        fg[blob & (gt == 0)] = 0.55
    return gt, np.concatenate([emb, fg[None]]).astype(np.float32)


def test_calibration_finds_the_settings_and_beats_the_defaults(scene):
    gt, pred = scene
    model = tiny_model()
    before = dict(model.config.extra)
    cal = calibrate(model, [np.zeros(gt.shape, np.float32)], [gt], predictions=[pred],
                    data="synthetic", device="cpu")
    assert model.config.extra == before  # calibrate does not change the model
    assert cal.bandwidth > margin_bandwidth(model.config)
    assert cal.fg_threshold > 0.55  # the dim background blobs are left out
    assert cal.ap >= 0.9 > cal.default_ap
    assert cal.data == "synthetic" and cal.n_images == 1
    assert cal.n_instances == len(np.unique(gt)) - 1
    sizes = len(cal.grid["min_size"]) * len(cal.grid["relative_min_size"])
    assert len(cal.scores) < len(cal.grid["bandwidth"]) * len(cal.grid["fg_threshold"]) * len(
        cal.grid["spatial_radius"]) * sizes  # coordinate search
    best = max(s["ap"] for s in cal.scores)
    assert best - cal.tolerance <= cal.ap <= best and cal.tolerance == WIDE_TOLERANCE
    full = calibrate(model, [gt], [gt], predictions=[pred], search="full", device="cpu")
    assert full.ap >= cal.ap and len(full.scores) == (
        len(full.grid["bandwidth"]) * len(full.grid["fg_threshold"]) * len(full.grid["min_size"])
        * len(full.grid["relative_min_size"]) * len(full.grid["spatial_radius"]))
    assert full.grid["spatial_radius"][0] == 0.0 and len(full.grid["spatial_radius"]) > 1


def point(b, ap, fg=0.5, r=0.0):
    """One calibration grid point's score."""
    return {"bandwidth": b, "fg_threshold": fg, "min_size": 10, "relative_min_size": 0.0,
            "spatial_radius": r, "ap": ap}


def test_the_widest_bandwidth_within_the_tolerance_wins():
    scores = [point(1.0, 0.90), point(1.4, 0.80), point(1.4, 0.89, fg=0.6), point(2.0, 0.87),
              point(2.8, 0.70), point(4.0, 0.95, r=3.0)]
    assert _pick(scores[:5], 10) == scores[0]  # no tolerance: the best alone
    assert _pick(scores[:5], 10, 0.02) == scores[2]  # 1.4's best point, 0.01 below
    assert _pick(scores[:5], 10, 0.05) == scores[3]  # 2.8 falls 0.2 below
    assert _pick(scores, 10, 0.05) == scores[5]  # at the best point's spatial radius


def test_a_flat_curve_up_to_the_widest_bandwidth_takes_the_middle_not_the_widest():
    # within 0.25 every bandwidth up to the grid's widest (2.8): the data never shows where
    # merging starts, so the middle of 1.0, 1.4, 2.0, 2.8 (the lower one of two: 1.4)
    scores = [point(1.0, 0.90), point(1.4, 0.80), point(1.4, 0.89, fg=0.6), point(2.0, 0.87),
              point(2.8, 0.70)]
    assert _pick(scores, 10, 0.25) == scores[2]
    assert _pick(scores[:4], 10, 0.05) == scores[2]  # flat up to 2.0 there


def test_calibration_with_a_tolerance_on_a_curve_flat_to_the_widest_takes_the_middle(scene):
    # the scene's nuclei never touch, so no bandwidth merges two of them (component scope)
    gt, pred = scene
    model = tiny_model()
    kw = dict(predictions=[pred], search="full", spatial_radii=[0.0], device="cpu")
    plain = calibrate(model, [gt], [gt], tolerance=0.0, **kw)
    wide = calibrate(model, [gt], [gt], tolerance=0.1, **kw)
    best = max(s["ap"] for s in plain.scores)
    per_bandwidth = {b: max(s["ap"] for s in plain.scores if s["bandwidth"] == b)
                     for b in plain.grid["bandwidth"]}
    near = sorted(b for b, ap in per_bandwidth.items() if ap >= best - 0.1)
    assert plain.ap == best and wide.tolerance == 0.1
    assert near[-1] == max(per_bandwidth) and len(near) > 2  # flat up to the widest
    assert wide.bandwidth == near[(len(near) - 1) // 2] != near[-1]
    assert wide.ap >= best - 0.1


def test_validation_during_training_reports_the_best_of_its_three_bandwidths(scene, monkeypatch):
    gt, pred = scene
    seen = []

    def on_the_scene(*args, **kwargs):  # the Validator's own arguments, the scene's output
        seen.append(kwargs)
        return calibrate(*args, predictions=[pred], **kwargs)

    monkeypatch.setattr(loop, "calibrate", on_the_scene)
    validator = loop.Validator([gt], [gt], None, torch.device("cpu"))
    cal = validator(tiny_model())
    assert sorted({s["bandwidth"] for s in cal.scores}) == pytest.approx([1 / 1.4, 1.0, 1.4])
    assert cal.ap == max(s["ap"] for s in cal.scores) > 0 and cal.tolerance == 0.0
    assert validator.bandwidth == cal.bandwidth
    validator(tiny_model())  # the next validation centres on the best bandwidth
    assert seen[1]["bandwidths"][1] == cal.bandwidth


def test_calibrated_model_segments_with_its_calibration_never_the_over_splitting_default(
        scene, tmp_path):
    gt, pred = scene
    model = tiny_model()
    n_gt = len(np.unique(gt)) - 1
    default = ClusterOptions().resolve(model.config)
    over, _ = instances_from_prediction(pred, 2, default, device="cpu")
    assert over.max() >= 2 * n_gt  # the margin bandwidth over-splits this output 2x
    cal = calibrate(model, [gt], [gt], predictions=[pred], device="cpu")
    cal.apply(model)
    assert set(CALIBRATION_KEYS) <= set(model.config.extra)
    opts = ClusterOptions().resolve(save_model_and_load(model, tmp_path).config)
    assert (opts.bandwidth, opts.fg_threshold, opts.min_size) == (
        cal.bandwidth, cal.fg_threshold, cal.min_size)
    labels, _ = instances_from_prediction(pred, 2, opts, device="cpu")
    assert labels.max() < 1.5 * n_gt
    assert ap50(gt, labels) == pytest.approx(cal.ap)
    assert Calibration.from_dict(model.config.extra["calibration"]) == cal


def save_model_and_load(model, tmp_path):
    from napari_shift_equivariance.model import load_model

    return load_model(save_model(model, tmp_path / "m.pt", overwrite=True))


def test_a_trained_model_is_calibrated_and_segment_uses_it():
    img, lab = nuclei((112, 64), radius=(3.0, 6.0), seed=4)
    cfg = TrainConfig(depth=1, base_channels=4, embedding_dim=4, batch_size=2, window=24,
                      iterations=60, lr=1e-2, device="cpu", refit=0)  # the crop never trained
    result = train([img], [lab], cfg)
    cal, extra = result.calibration, result.model.config.extra
    # calibrate_on="all": the whole training image, and the held-out crop on its own
    assert cal is not None and cal.data == ("1 whole training image(s), and the last 24 px "
                                            "of image 1 along axis 0 on its own")
    assert any(n.startswith(f"calibrating on {cal.data}") for n in result.notes)
    assert (extra["bandwidth"], extra["fg_threshold"], extra["min_size"]) == (
        cal.bandwidth, cal.fg_threshold, cal.min_size)
    assert cal.ap >= cal.default_ap
    res = segment(result.model, img, "whole", device="cpu")
    assert res.info["bandwidth"] == cal.bandwidth
    assert res.info["fg_threshold"] == cal.fg_threshold
    val_img, val_lab = img[-24:], lab[-24:]  # the held-out crop (20 % of 112 px, rounded)
    held = segment(result.model, val_img, "whole", device="cpu").labels
    assert cal.ap == pytest.approx((ap50(lab, res.labels) + ap50(val_lab, held)) / 2)
    assert ap50(val_lab, held) == pytest.approx(cal.heldout_ap) == pytest.approx(
        cal.validation_ap)
    assert extra["calibration"]["heldout_ap"] == cal.heldout_ap
    assert f"{cal.heldout_ap:.3f} on the held-out crop alone" in cal.ap_text()


def test_calibrate_on_validation_scores_the_held_out_crop_alone():
    img, lab = nuclei((112, 64), radius=(3.0, 6.0), seed=4)
    cfg = TrainConfig(depth=1, base_channels=4, embedding_dim=4, batch_size=2, window=24,
                      iterations=20, lr=1e-2, device="cpu", calibrate_on="validation")
    cal = train([img], [lab], cfg).calibration
    assert cal.data == "the last 24 px of image 1 along axis 0"
    assert cal.heldout_ap is None and cal.validation_ap == cal.ap
    assert "held-out" not in cal.ap_text()


def test_fine_tuning_without_calibration_drops_the_start_models_calibration():
    img, lab = nuclei((48, 48), radius=(3.0, 6.0), seed=1)
    start = tiny_model()
    start.config.extra.update({"bandwidth": 9.0, "fg_threshold": 0.9, "min_size": 99,
                               "calibration": {}})
    cfg = TrainConfig(depth=1, base_channels=2, embedding_dim=2, batch_size=2, window=12,
                      iterations=1, device="cpu", calibrate=False, val_every=0)
    result = train([img], [lab], cfg, init_model=start)
    assert not set(CALIBRATION_KEYS) & set(result.model.config.extra)
    assert result.calibration is None
    assert start.config.extra["bandwidth"] == 9.0  # the caller's model is left alone


def test_stop_still_calibrates_the_model_so_far():
    img, lab = nuclei((64, 48), radius=(3.0, 6.0), seed=1)
    cfg = TrainConfig(depth=1, base_channels=2, embedding_dim=2, batch_size=2, window=12,
                      iterations=100, device="cpu")
    result = train([img], [lab], cfg, cancel=lambda: True)
    assert result.model.config.extra["cancelled"] is True
    assert result.calibration is not None and "bandwidth" in result.model.config.extra


@pytest.mark.parametrize("kw, match", [
    ({"bandwidths": [0.0]}, "positive"),
    ({"fg_thresholds": [1.0]}, "between 0 and 1"),
    ({"min_sizes": [-1]}, "non-negative"),
    ({"bandwidths": []}, "empty"),
    ({"search": "random"}, "search"),
    ({"tolerance": -0.1}, "tolerance"),
])
def test_bad_calibration_grid_is_one_clear_error(scene, kw, match):
    gt, pred = scene
    with pytest.raises(NSEError, match=match):
        calibrate(tiny_model(), [gt], [gt], predictions=[pred], **kw)


def test_calibration_needs_instances(scene):
    gt, pred = scene
    with pytest.raises(NSEError, match="no instance"):
        calibrate(tiny_model(), [gt], [np.zeros_like(gt)], predictions=[pred])


def test_calibration_time_limit_keeps_the_best_found_so_far(scene):
    gt, pred = scene
    model = tiny_model()
    cal = calibrate(model, [gt], [gt], predictions=[pred], time_limit=0.0)
    assert not cal.complete
    assert {(s["bandwidth"], s["fg_threshold"]) for s in cal.scores} == {
        (round(margin_bandwidth(model.config), 4), 0.5)}  # the default point, tried first


def test_calibration_picks_a_spatial_radius_when_embeddings_alone_merge_touching_objects():
    # every instance has the same embedding: only positions can split touching nuclei
    _, gt = nuclei((96, 96), radius=(5.0, 7.0), touching=1.0, seed=4)
    from napari_shift_equivariance.clustering import components

    assert components(gt > 0).max() < len(np.unique(gt)) - 1  # some nuclei do touch
    rng = np.random.default_rng(1)
    emb = rng.normal(0, 0.05, (2, *gt.shape))
    fg = np.where(gt > 0, 0.9, 0.05)
    pred = np.concatenate([emb, fg[None]]).astype(np.float32)
    model = tiny_model()
    cal = calibrate(model, [gt], [gt], predictions=[pred], device="cpu")
    flat = max(s["ap"] for s in cal.scores if s["spatial_radius"] == 0)
    assert cal.spatial_radius > 0 and cal.ap > flat
    cal.apply(model)
    assert model.config.extra["spatial_radius"] == cal.spatial_radius
    assert ClusterOptions().resolve(model.config).spatial_radius == cal.spatial_radius


def test_calibration_picks_a_relative_min_size_when_fragments_scale_with_the_objects():
    # two images, nuclei of 400 px and of 36 px; each over-split leaves a fragment of about a
    # tenth of its nucleus: the 36 px fragments of the first survive any absolute size that
    # keeps the second's 36 px nuclei, a fraction of each image's median drops both kinds
    def image(side, n, seed):
        rng = np.random.default_rng(seed)
        gt = np.zeros((n * (side + 8), 4 * (side + 8)), np.int32)
        pred = np.zeros((3, *gt.shape), np.float32)
        pred[:2] = rng.normal(0, 0.02, (2, *gt.shape))
        k = 0
        for i in range(n):
            for j in range(4):
                k += 1
                y, x = i * (side + 8) + 2, j * (side + 8) + 2
                gt[y:y + side, x:x + side] = k
                pred[0, y:y + side, x:x + side] += 3.0 * k  # one cluster per nucleus
                f = max(side // 3, 2)  # and a fragment beside it with its own embedding
                pred[1, y + side + 1:y + side + 1 + f, x:x + f] += 50.0 + 3.0 * k
                pred[2, y + side + 1:y + side + 1 + f, x:x + f] = 0.9
        pred[2][gt > 0] = 0.9
        return gt, pred

    (g1, p1), (g2, p2) = image(20, 3, 0), image(6, 3, 1)
    model = tiny_model()
    cal = calibrate(model, [g1, g2], [g1, g2], predictions=[p1, p2], device="cpu",
                    bandwidths=[1.0], fg_thresholds=[0.5])
    off = max(s["ap"] for s in cal.scores if s["relative_min_size"] == 0)
    assert cal.relative_min_size > 0 and cal.ap == 1.0 > off
    cal.apply(model)
    assert ClusterOptions().resolve(model.config).relative_min_size == cal.relative_min_size
    labels, info = instances_from_prediction(p1, 2, ClusterOptions().resolve(model.config),
                                             device="cpu")
    assert info["relative_threshold"] > 36 and labels.max() == 12
    assert "median size" in cal.describe()


def test_calibration_picks_a_relative_bandwidth_when_the_images_objects_differ_in_size():
    from test_segment import COORD, _coord_scene

    model = tiny_model()
    model.config.loss = {**model.config.loss, "coord_scale": COORD}
    (g1, p1), (g2, p2) = _coord_scene(6), _coord_scene(24)
    cal = calibrate(model, [g1, g2], [g1, g2], predictions=[p1, p2], device="cpu",
                    min_sizes=[0], relative_min_sizes=[0])
    assert cal.fixed_ap < 0.98  # no one bandwidth suits both sizes
    assert cal.relative_bandwidth > 0 and cal.ap == 1.0 > cal.fixed_ap
    assert {s["relative_bandwidth"] for s in cal.relative_scores} == set(
        cal.grid["relative_bandwidth"])
    cal.apply(model)
    assert ClusterOptions().resolve(model.config).relative_bandwidth == cal.relative_bandwidth
    for g, p in ((g1, p1), (g2, p2)):
        labels, _ = instances_from_prediction(p, 2, ClusterOptions().resolve(model.config),
                                              device="cpu")
        assert ap50(g, labels) == 1.0  # segment clusters as the calibration scored
    # one object size: a fixed bandwidth does as well, and stays
    alone = calibrate(model, [g1], [g1], predictions=[p1], device="cpu")
    assert alone.relative_bandwidth == 0.0 and alone.relative_scores
    assert alone.ap == alone.fixed_ap
    # a model without coordinates has no relative grid, and refuses one
    plain = tiny_model()
    assert not calibrate(plain, [g1], [g1], predictions=[p1], device="cpu").relative_scores
    with pytest.raises(NSEError, match="coordinates"):
        calibrate(plain, [g1], [g1], predictions=[p1], relative_bandwidths=[0.2])


@pytest.mark.parametrize("stop_after", [0, 1, 3])
def test_calibration_time_limit_also_stops_the_relative_bandwidths(monkeypatch, stop_after):
    # a clock that stands still through the search and jumps past the limit once
    # ``stop_after`` relative bandwidths have been scored
    import importlib
    import types

    from test_segment import COORD, _coord_scene

    cal_mod = importlib.import_module("napari_shift_equivariance.train.calibrate")

    model = tiny_model()
    model.config.loss = {**model.config.loss, "coord_scale": COORD}
    (g1, p1), (g2, p2) = _coord_scene(6), _coord_scene(24)
    kw = {"predictions": [p1, p2], "device": "cpu", "min_sizes": [0],
          "relative_min_sizes": [0]}
    full = calibrate(model, [g1, g2], [g1, g2], **kw)
    n_rel = len(full.grid["relative_bandwidth"])
    seen = {"done": 0, "total": None}

    def progress(done, total):
        seen.update(done=done, total=total)

    def now():
        # the relative stage is the last steps: one per image for the diameters, then one
        # per image and relative bandwidth
        if seen["total"] is None:
            return 0.0
        start = seen["total"] - 2 * (n_rel + 1)
        scored = max(0, (seen["done"] - start - 2) // 2)
        return 1e9 if seen["done"] >= start and scored >= stop_after else 0.0

    monkeypatch.setattr(cal_mod, "time", types.SimpleNamespace(perf_counter=now))
    cut = calibrate(model, [g1, g2], [g1, g2], time_limit=10.0, progress=progress, **kw)
    assert cut.scores == full.scores  # the search itself was in time
    assert not cut.complete
    assert cut.relative_scores == full.relative_scores[:stop_after]
    if stop_after == 0:
        assert cut.relative_bandwidth == 0.0 and cut.fixed_ap is None
    assert full.complete and len(full.relative_scores) == len(full.grid["relative_bandwidth"])
