"""nse demo: the paper's story end to end (tiny model by default; the bundled one when slow)."""

import json

import numpy as np
import pytest

from napari_shift_equivariance.cli import main
from napari_shift_equivariance.demo import demo_tiles, run_demo
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.geometry import UNetGeometry
from napari_shift_equivariance.model import (
    ModelConfig,
    build_model,
    default_model_path,
    save_model,
)


def _model():
    cfg = ModelConfig(ndim=2, depth=3, factor=2, base_channels=4, embedding_dim=3)
    return build_model(cfg, seed=0)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_demo_tiles(depth):
    g = UNetGeometry.create(2, depth, 2)
    correct, naive = demo_tiles(g, (512, 512))
    assert all(c % gg == 0 and c <= max(64, gg) for c, gg in zip(correct, g.grid))
    assert all(n % gg != 0 and n > c for n, c, gg in zip(naive, correct, g.grid))


def test_run_demo_tiny_model(tmp_path):
    lines = []
    out = tmp_path / "demo"
    summary = run_demo(out, model=_model(), shape=(96, 104), device="cpu", log=lines.append)
    eq = summary["equivalence"]
    assert eq["correct_equals_whole"] and not eq["naive_equals_whole"]
    assert eq["correct_vs_whole_max_abs"] < 1e-4 * eq["output_max_abs"]
    assert eq["naive_vs_whole_max_abs"] > 1e-3 * eq["output_max_abs"]
    assert summary["geometry"]["grid"] == [8, 8] and summary["geometry"]["capacity"] == 64
    for mode in ("naive", "correct"):
        assert {"n_instances", "seam_splits", "ap50", "false_splits", "false_merges"} <= set(
            summary[mode])
    assert summary["plans"]["correct"]["tile_shape"] == [24, 24]
    assert {"compare.png", "summary.json", "naive_labels.tif", "correct_labels.tif",
            "split_map.tif", "image.tif", "gt_labels.tif"} <= {f.name for f in out.iterdir()}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["equivalence"] == eq and "total" in on_disk["times"]
    text = "\n".join(lines)
    n, c = summary["naive"], summary["correct"]
    assert (f"naive stitching cut {n['seam_splits']} ground-truth objects at its tile seams, "
            f"correct stitching {c['seam_splits']}") in text
    assert "grid f^l = (8, 8)" in text and "capacity" in text and "equal (Cor. 4)" in text
    # correct tiles reproduce every object of the whole-image segmentation exactly
    assert eq["correct_objects_identical_to_whole"] == eq["whole_objects"] > 0
    # refuses to write into the now non-empty folder
    with pytest.raises(NSEError, match="not empty"):
        run_demo(out, model=_model(), shape=(96, 104), device="cpu", log=None)


def test_cli_demo_json_and_refusal(tmp_path, capsys):
    model_path = save_model(_model(), tmp_path / "m.pt")
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["demo", "--out", str(out), "--model", str(model_path), "--quiet", "--device", "cpu",
            "--json", "--quick"]
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(f.name for f in out.iterdir()) == ["keep.txt"]
    assert main([*args, "--overwrite"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)  # stdout: one JSON document; the narrative is on stderr
    assert doc["data"]["shape"] == [256, 256] and doc["equivalence"]["correct_equals_whole"]
    assert "network arithmetic" in captured.err
    assert (out / "keep.txt").read_text() == "mine" and (out / "compare.png").exists()


@pytest.mark.slow
@pytest.mark.skipif(not default_model_path(2).exists(), reason="no bundled default model")
def test_demo_default_model_tells_the_story(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True, device="cpu", log=None)
    eq = summary["equivalence"]
    assert eq["correct_equals_whole"] and not eq["naive_equals_whole"]
    assert eq["correct_objects_identical_to_whole"] == eq["whole_objects"]
    assert eq["naive_objects_identical_to_whole"] < eq["whole_objects"]
    n, c = summary["naive"], summary["correct"]
    # a trained model's embeddings (as clustered, coordinates included) jump at naive seams,
    # not at correct tile borders (the default of 2026-12-02: 1.34 vs 1.00 on this image)
    assert 0.9 < c["embedding_seam_statistic"] < 1.1
    assert n["embedding_seam_statistic"] > 1.2 * c["embedding_seam_statistic"]
    assert summary["split_objects"] >= 1
    assert c["ap50"] > 0.2  # a sanity floor: the pipeline finds the nuclei
    assert np.isfinite(summary["times"]["total"])


def test_demo_finds_a_relative_bandwidth_once_for_every_run(tmp_path):
    model = _model()
    model.config.loss = {**model.config.loss, "coord_scale": 0.35}
    model.config.extra = {"bandwidth": 1.0, "relative_bandwidth": 0.3}
    lines = []
    summary = run_demo(tmp_path / "demo", model=model, shape=(96, 104), device="cpu",
                       log=lines.append)
    said = [line for line in lines if line.startswith("5. segmentation")]
    assert said and "x the span of the median object" in said[0]
    bandwidth = float(said[0].split("bandwidth ")[1].split(" ")[0])
    assert bandwidth != 1.0
    assert summary["clustering"]["bandwidth"] == pytest.approx(bandwidth, rel=1e-2)
