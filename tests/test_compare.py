"""compare / sweep: naive vs correct stitching, seam splits, the split map, files, CLI."""

import json

import numpy as np
import pytest
import tifffile

from napari_shift_equivariance import data
from napari_shift_equivariance.cli import main
from napari_shift_equivariance.compare import (
    compare,
    compare_results,
    format_summary,
    save_comparison,
    save_sweep,
    sweep,
)
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.segment import segment_prediction
from napari_shift_equivariance.tiling import plan_tiles


def _model(depth=2):
    cfg = ModelConfig(ndim=2, depth=depth, factor=2, base_channels=4, embedding_dim=3)
    return build_model(cfg, seed=0)


# -- synthetic predictions: the seam mechanism without a network -----------------------------

SHAPE = (48, 60)


def _gt():
    gt = np.zeros(SHAPE, np.int32)
    gt[2:10, 2:12] = 1  # inside naive tile (0, 0)
    gt[14:26, 5:15] = 2  # crosses the naive border at row 20
    gt[4:12, 34:46] = 3  # crosses the naive border at column 40
    gt[30:38, 24:32] = 4  # inside naive tile (1, 1)
    gt[36:46, 36:44] = 5  # crosses both naive borders (row 40, column 40)
    return gt


def _prediction(gt, plan=None):
    """Embeddings constant per object (10 apart); with ``plan``, each tile adds its own
    offset on another axis, as an inconsistent naive tiling does."""
    pred = np.zeros((4, *gt.shape), np.float32)
    for k in range(1, gt.max() + 1):
        pred[0][gt == k] = 10.0 * k
    if plan is not None:
        for t in plan.tiles:
            pred[(1, *t.output_roi.to_slices())] = 3.0 * (3 * t.index[0] + t.index[1])
    pred[-1] = (gt > 0).astype(np.float32)
    return pred


def _synthetic_pair():
    cfg = _model(3).config  # grid 8
    naive_plan = plan_tiles(SHAPE, cfg.geometry, 20, "naive")
    correct_plan = plan_tiles(SHAPE, cfg.geometry, 16, "correct")
    gt = _gt()
    kw = {"bandwidth": 1.0, "min_size": 0, "device": "cpu"}
    naive = segment_prediction(_prediction(gt, naive_plan), naive_plan, cfg, **kw)
    correct = segment_prediction(_prediction(gt), correct_plan, cfg, **kw)
    return naive, correct, gt


def test_seam_splits_and_split_map_on_synthetic_seams():
    naive, correct, gt = _synthetic_pair()
    res = compare_results(naive, correct, gt)
    s = res.summary
    # objects 2, 3 (two pieces each) and 5 (four pieces) cross naive borders
    assert naive.n_instances == 2 + 2 + 2 + 4
    assert s["naive"]["seam_splits"] == 3
    assert s["correct"]["seam_splits"] == 0
    assert s["split_objects"] == 3
    split_ids = set(np.unique(res.split_map)) - {0}
    expected = {int(np.unique(correct.labels[gt == k])[0]) for k in (2, 3, 5)}
    assert split_ids == expected
    assert np.array_equal(res.split_map > 0, np.isin(gt, [2, 3, 5]))
    # against ground truth: Caicedo splits (each split object once), AP drops for naive only
    assert s["correct"]["ap50"] == 1.0 and s["correct"]["false_splits"] == 0
    assert s["naive"]["false_splits"] == 3
    assert s["naive"]["ap50"] < 1.0
    assert s["naive"]["false_merges"] == s["correct"]["false_merges"] == 0
    # the embedding jump at naive borders shows in the seam statistic; objects are constant
    # inside in this construction, so within tiles (and anywhere for correct) the jump is 0
    assert s["naive"]["embedding_jump_across"] > 0 == s["naive"]["embedding_jump_within"]
    assert s["correct"]["embedding_jump_across"] == 0
    assert s["correct"]["embedding_seam_statistic"] is None  # 0 / 0: undefined
    json.dumps(s)  # serialisable
    text = format_summary(s)
    assert "seam splits" in text and "AP@0.5" in text


def test_stack_scored_plane_by_plane():
    # a 2D model on a stack: GT ids repeat in every plane, yet each plane's objects count
    cfg = _model(3).config
    naive_plan = plan_tiles(SHAPE, cfg.geometry, 20, "naive")
    correct_plan = plan_tiles(SHAPE, cfg.geometry, 16, "correct")
    gt = np.stack([_gt(), _gt()])
    kw = {"bandwidth": 1.0, "min_size": 0, "device": "cpu"}
    naive = segment_prediction(np.stack([_prediction(_gt(), naive_plan)] * 2, axis=1),
                               naive_plan, cfg, **kw)
    correct = segment_prediction(np.stack([_prediction(_gt())] * 2, axis=1), correct_plan,
                                 cfg, **kw)
    s = compare_results(naive, correct, gt).summary
    assert s["correct"]["n_gt"] == 10 and s["correct"]["ap50"] == 1.0
    assert s["naive"]["seam_splits"] == s["split_objects"] == 6
    assert s["naive"]["false_splits"] == 6


def test_gt_shape_must_match():
    naive, correct, gt = _synthetic_pair()
    with pytest.raises(NSEError, match="shape"):
        compare_results(naive, correct, gt[:-1])


def test_save_comparison_atomic_and_refuses_overwrite(tmp_path):
    naive, correct, gt = _synthetic_pair()
    res = compare_results(naive, correct, gt)
    image = gt.astype(np.float32)
    out = tmp_path / "cmp"
    files = save_comparison(res, image, out)
    names = {f.name for f in files}
    assert names == {"naive_labels.tif", "correct_labels.tif", "split_map.tif", "compare.png",
                     "summary.json"}
    assert all(f.exists() and f.stat().st_size > 0 for f in files)
    np.testing.assert_array_equal(tifffile.imread(out / "naive_labels.tif"), naive.labels)
    assert json.loads((out / "summary.json").read_text())["split_objects"] == 3
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(NSEError, match="not empty"):
        save_comparison(res, image, out)
    (out / "mine.txt").write_text("user data")
    save_comparison(res, image, out, overwrite=True)
    assert (out / "mine.txt").read_text() == "user data"
    assert not list(tmp_path.glob("*.partial"))


# -- with a network ---------------------------------------------------------------------------


def test_compare_with_a_model():
    model = _model(3)
    image, gt = data.nuclei((56, 64), seed=2, radius=(4, 7))
    res = compare(model, image, 20, gt=gt, device="cpu", bandwidth=1.5)
    s = res.summary
    assert res.naive.plan.mode == "naive" and res.correct.plan.mode == "correct"
    assert s["naive"]["tile"] == [20, 20] and s["correct"]["tile"] == [16, 16]
    assert s["max_abs_difference"] > 0  # off-grid naive tiles use other output functions
    assert s["split_objects"] == len(np.unique(res.split_map)) - 1
    assert set(np.unique(res.split_map)) - {0} <= set(np.unique(res.correct.labels))
    for mode in ("naive", "correct"):
        assert {"n_instances", "seam_splits", "ap50", "false_splits", "false_merges",
                "embedding_seam_statistic"} <= set(s[mode])
        assert 0.0 <= s[mode]["ap50"] <= 1.0
    assert res.correct.info["bandwidth"] == res.naive.info["bandwidth"] == 1.5
    json.dumps(s)


def test_compare_clusters_both_stitchings_at_the_bandwidth_found_once():
    # a relative bandwidth is found on the correct run and used for the naive one as well,
    # so that only the stitching differs between them
    model = _model(3)
    model.config.loss = {**model.config.loss, "coord_scale": 0.35}
    image, gt = data.nuclei((56, 64), seed=2, radius=(4, 7))
    res = compare(model, image, 20, gt=gt, device="cpu", bandwidth=1.0, relative_bandwidth=0.3)
    found = res.correct.info
    assert found["diameter"] > 0 and found["relative_bandwidth"] == 0.3
    assert res.naive.info["bandwidth"] == found["bandwidth"] != 1.0
    assert res.naive.info["relative_bandwidth"] == 0.0  # not found again on naive tiles
    assert res.summary["clustering"]["diameter"] == found["diameter"]


def test_sweep_and_files(tmp_path):
    model = _model(2)  # grid 4
    image, gt = data.nuclei((40, 44), seed=3, radius=(3, 6))
    result = sweep(model, image, gt, [10, 12, 14], device="cpu", batch_size=16)
    assert [r["tile"] for r in result.rows] == [[10, 10], [12, 12], [14, 14]]
    assert [r["multiple_of_grid"] for r in result.rows] == [False, True, False]
    assert result.reference["used_tile"] == [12, 12]
    for r in result.rows:
        assert 0 <= r["ap50"] <= 1 and r["false_splits"] >= 0 and r["seam_splits"] >= 0
    files = save_sweep(result, tmp_path / "sw")
    assert {f.name for f in files} == {"sweep.csv", "sweep.png", "summary.json"}
    rows = (tmp_path / "sw" / "sweep.csv").read_text().splitlines()
    assert rows[0].startswith("mode,tile") and len(rows) == 5 and rows[-1].startswith("correct")
    with pytest.raises(NSEError, match="ground-truth"):
        sweep(model, image, None, [10])


def test_cli_compare_and_sweep(tmp_path, capsys):
    model_path = save_model(_model(2), tmp_path / "m.pt")
    image, gt = data.nuclei((40, 44), seed=3, radius=(3, 6))
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    base = ["--model", str(model_path), "--quiet", "--device", "cpu", "--batch-size", "16"]
    rc = main(["compare", str(tmp_path / "img.tif"), "--tile", "10", "--gt",
               str(tmp_path / "gt.tif"), "--json", "--out", str(tmp_path / "c"), *base])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"naive", "correct"} <= set(doc) and "ap50" in doc["naive"]
    assert (tmp_path / "c" / "compare.png").exists()
    rc = main(["compare", str(tmp_path / "img.tif"), "--tile", "10", "--out",
               str(tmp_path / "c"), *base])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "gt_small.tif", gt[:-2])
    rc = main(["compare", str(tmp_path / "img.tif"), "--tile", "10", "--gt",
               str(tmp_path / "gt_small.tif"), *base])
    assert rc == 2 and "shape" in capsys.readouterr().err
    rc = main(["sweep", str(tmp_path / "img.tif"), "--gt", str(tmp_path / "gt.tif"),
               "--tiles", "10,12", "--out", str(tmp_path / "s"), "--json", *base])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["naive"]) == 2 and "ap50" in doc["correct"]
    assert (tmp_path / "s" / "sweep.png").exists()
