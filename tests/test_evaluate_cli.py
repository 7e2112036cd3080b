"""``nse evaluate``: scoring label files, segmenting first with a model or the baseline."""

import json

import numpy as np
import pytest

from napari_shift_equivariance.cli import main
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.metrics import evaluate


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    image, gt = nuclei((96, 96), seed=3, touching=0.0, radius=(5, 8))
    pred = gt.copy()
    ids = np.unique(gt)[1:]
    pred[gt == ids[0]] = 0  # one miss
    rows = np.argwhere(gt == ids[1])[:, 0]
    half = (gt == ids[1]) & (np.indices(gt.shape)[0] > np.median(rows))
    pred[half] = gt.max() + 1  # one split
    paths = {}
    for name, arr in (("image", image), ("gt", gt), ("pred", pred)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    return paths, gt, pred


def test_scores_a_label_file(capsys, files):
    paths, gt, pred = files
    code, out, _ = run(capsys, "evaluate", paths["pred"], "--gt", paths["gt"], "--json")
    assert code == 0
    data = json.loads(out)
    ev = evaluate(gt, pred)
    assert data["ap50"] == pytest.approx(ev.ap50) and data["dsb"] == pytest.approx(ev.dsb)
    assert data["fn"] >= 1 and data["false_splits"] == 1 and data["false_merges"] == 0
    assert data["images"][0]["source"] == "labels"
    code, out, _ = run(capsys, "evaluate", paths["pred"], "--gt", paths["gt"])
    assert code == 0 and "AP@0.5" in out and "splits 1" in out


def test_baseline_and_model_segment_first(capsys, files, tmp_path, one_torch_thread):
    paths, gt, _ = files
    save = tmp_path / "seg.npy"
    code, out, _ = run(capsys, "evaluate", paths["image"], "--gt", paths["gt"], "--baseline",
                       "--json", "--save", save)
    assert code == 0
    data = json.loads(out)
    assert data["images"][0]["source"] == "baseline" and data["ap50"] > 0.5
    assert evaluate(gt, np.load(save)).ap50 == pytest.approx(data["ap50"])
    code, _, err = run(capsys, "evaluate", paths["image"], "--gt", paths["gt"], "--baseline",
                       "--save", save)
    assert code == 2 and "exists" in err  # never overwrites without --overwrite
    model = tmp_path / "m.pt"
    assert run(capsys, "init", "--ndim", 2, "--depth", 2, "--factor", 2, "--base-channels", 4,
               "--out", model)[0] == 0
    code, out, _ = run(capsys, "evaluate", paths["image"], "--gt", paths["gt"], "--model",
                       model, "--bandwidth", 1.0, "--quiet", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["images"][0]["source"] == "model" and data["images"][0]["bandwidth"] == 1.0
    assert data["n_true"] == len(np.unique(gt)) - 1


@pytest.mark.parametrize("which, message", [
    ("image", "not labels"),  # a float image without --model
    ("shape", "shape"),
])
def test_errors_are_one_line(capsys, files, tmp_path, which, message):
    paths, gt, _ = files
    pred = paths["image"]
    if which == "shape":
        pred = tmp_path / "small.npy"
        np.save(pred, gt[:50])
    code, _, err = run(capsys, "evaluate", pred, "--gt", paths["gt"])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_folder_pools_counts(capsys, tmp_path):
    preds, gts = tmp_path / "pred", tmp_path / "gt"
    preds.mkdir()
    gts.mkdir()
    evs = []
    for k in range(2):
        _, gt = nuclei((64, 64), seed=10 + k, touching=0.0, radius=(4, 6))
        pred = gt.copy()
        pred[gt == 1] = 0
        np.save(preds / f"im{k}.npy", pred)
        np.save(gts / f"im{k}.npy", gt)
        evs.append(evaluate(gt, pred))
    code, out, _ = run(capsys, "evaluate", preds, "--gt", gts, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["n_images"] == 2 and len(data["images"]) == 2
    assert data["tp"] == sum(e.tp[0] for e in evs) and data["fn"] == sum(e.fn[0] for e in evs)
    (gts / "im1.npy").unlink()
    code, _, err = run(capsys, "evaluate", preds, "--gt", gts)
    assert code == 2 and "im1" in err
