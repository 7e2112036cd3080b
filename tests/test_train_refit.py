"""Refit: the held-out crop joins training for the last share of the run."""

import json

import numpy as np
import pytest
import torch

from napari_shift_equivariance.cli import main
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.train import TrainConfig, loop, train
from napari_shift_equivariance.train.config import DEFAULT_REFIT
from napari_shift_equivariance.train.refit import HISTORY_KEY

TINY = {"depth": 1, "base_channels": 2, "embedding_dim": 2, "batch_size": 2, "device": "cpu",
        "window": 12}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw):
    return TrainConfig(**{**TINY, "iterations": 4, "val_every": 1, **kw})


@pytest.fixture(scope="module")
def pair():
    return nuclei((64, 48), radius=(3.0, 6.0), seed=2)  # split: the last 13 rows


@pytest.fixture
def sampled(monkeypatch):
    """The label shapes of every sampler ``train`` builds, in order."""
    shapes = []

    class Recording(loop.CropSampler):
        def __init__(self, arrays, *args):
            shapes.append([a.labels.shape for a in arrays])
            super().__init__(arrays, *args)

    monkeypatch.setattr(loop, "CropSampler", Recording)
    return shapes


@pytest.mark.parametrize(("bad", "what"), [
    ({"refit": 1.0}, "refit must be a share"), ({"refit": -0.1}, "refit must be a share"),
    ({"refit": 0.5, "keep_best": True}, "exclude each other"),
    ({"refit": 0.5, "calibrate_on": "validation"}, "needs calibrate_on='all'"),
])
def test_bad_refit_settings_are_one_clear_error(bad, what):
    with pytest.raises(NSEError, match=what):
        TrainConfig(**bad)


def test_default_share_and_where_it_is_off():
    assert TrainConfig().refit_share == DEFAULT_REFIT == 0.25
    assert TrainConfig(keep_best=True).refit_share == 0.0
    assert TrainConfig(calibrate_on="validation").refit_share == 0.0
    assert TrainConfig().replace(keep_best=True).refit_share == 0.0
    assert TrainConfig.from_dict(TrainConfig(refit=0.1).to_dict()).refit_share == 0.1
    assert TrainConfig(refit=0).refit_share == 0.0


def test_off_the_crop_is_never_trained_on(pair, sampled):
    result = train([pair[0]], [pair[1]], tiny(refit=0))
    assert sampled == [[(51, 48)]]
    assert not any(HISTORY_KEY in e for e in result.history)
    assert sum("val_ap" in e for e in result.history) == 4


def test_the_crop_joins_training_after_its_ap_is_measured(pair, sampled):
    result = train([pair[0]], [pair[1]], tiny(refit=0.5))
    assert sampled == [[(51, 48)], [(64, 48)]]  # the split, then the whole image
    marked = [e for e in result.history if HISTORY_KEY in e]
    assert [e["iteration"] for e in marked] == [3]  # after half of the 4 iterations
    # validation stops once the crop is training data; the reported held-out AP is the
    # figure measured before it joined
    assert [e["iteration"] for e in result.history if "val_ap" in e] == [1, 2]
    assert result.calibration.heldout_ap == marked[0][HISTORY_KEY]
    assert result.model.config.extra["calibration"]["heldout_ap"] == marked[0][HISTORY_KEY]
    assert any("joined training after iteration 2" in n for n in result.notes)
    assert result.calibration.heldout_iteration == 2
    assert "on the held-out crop alone (after 2 iterations, before it joined training)" in (
        result.calibration.ap_text())


def test_given_validation_images_are_never_trained_on(pair, sampled):
    val = nuclei((32, 48), radius=(3.0, 6.0), seed=3)
    result = train([pair[0]], [pair[1]], tiny(refit=0.5), validation=([val[0]], [val[1]]))
    assert sampled == [[(64, 48)]]
    assert not any(HISTORY_KEY in e for e in result.history)


def test_resume_after_the_switch_equals_an_uninterrupted_run(pair, tmp_path, sampled):
    full = train([pair[0]], [pair[1]], tiny(refit=0.5))
    train([pair[0]], [pair[1]], tiny(refit=0.5, checkpoint_every=3), checkpoint_dir=tmp_path)
    sampled.clear()
    # the checkpoint's refit share holds, whatever the resuming config says
    resumed = train([pair[0]], [pair[1]], tiny(refit=0),
                    resume=tmp_path / "checkpoint-000003.pt")
    assert sampled == [[(64, 48)]]  # the crop is training data from the start
    assert resumed.calibration.heldout_ap == full.calibration.heldout_ap
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_cli_refit_flag(tmp_path, pair, capsys):
    np.save(tmp_path / "img.npy", pair[0])
    np.save(tmp_path / "lab.npy", pair[1])
    args = ["train", "--image", str(tmp_path / "img.npy"), "--labels",
            str(tmp_path / "lab.npy"), "--depth", "1", "--base-channels", "2",
            "--embedding-dim", "2", "--window", "12", "--iterations", "4", "--device", "cpu",
            "--quiet", "--json", "--out", str(tmp_path / "m.pt"), "--refit", "0.5"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["extra"]["train"]["refit"] == 0.5
    assert any("joined training" in n for n in out["notes"])
    assert main([*args[:-1], "2", "--overwrite"]) == 2
    assert "refit must be a share" in capsys.readouterr().err
