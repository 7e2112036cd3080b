"""Training: sampling rules, bad input, determinism, cancel, checkpoints, fine-tuning, CLI."""

import json
import threading

import numpy as np
import pytest
import torch

from napari_shift_equivariance.cli import main
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.loss import DEFAULT_DELTA_D
from napari_shift_equivariance.model import ModelConfig, build_model, load_model, save_model
from napari_shift_equivariance.train import (
    UNLIMITED_ITERATIONS,
    CropSampler,
    SplitInstanceWarning,
    TrainArray,
    TrainConfig,
    default_window,
    load_checkpoint,
    prepare_data,
    resolve_window,
    split_validation,
    torch_state,
    train,
)

# depth 1, f = 2: grid 2, context 16, valid outputs 2, 4, 6, ...
TINY = {"depth": 1, "base_channels": 2, "embedding_dim": 2, "batch_size": 2, "device": "cpu",
        "window": 12}


def tiny(**kw):
    return TrainConfig(**{**TINY, "iterations": 3, **kw})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair():
    return nuclei((48, 48), radius=(3.0, 6.0), seed=1)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- the seam rule and windows ---------------------------------------------------------


def test_window_at_or_below_grid_is_refused_with_the_reason(pair):
    with pytest.raises(NSEError, match=r"f\^l.*seams"):
        train([pair[0]], [pair[1]], tiny(depth=2, window=4))
    with pytest.raises(NSEError, match="allow-small-window"):
        train([pair[0]], [pair[1]], tiny(depth=2, window=3))


def test_small_window_allowed_on_request_uses_exactly_that_window(pair):
    result = train([pair[0]], [pair[1]], tiny(depth=2, window=4, allow_small_window=True,
                                              iterations=1))
    assert result.model.config.window == (4, 4)
    assert any("on purpose" in n for n in result.notes)


def test_window_is_rounded_up_to_a_valid_output_and_says_so(pair):
    # depth 2: valid outputs are multiples of 4
    result = train([pair[0]], [pair[1]], tiny(depth=2, window=10, iterations=1))
    assert result.model.config.window == (12, 12)
    assert any("rounded up to (12, 12)" in n for n in result.notes)


def test_window_larger_than_the_image_is_an_error(pair):
    with pytest.raises(NSEError, match="larger than"):
        train([pair[0]], [pair[1]], tiny(window=64))


def test_default_window_exceeds_grid_and_shrinks_to_small_images(pair):
    geo = ModelConfig(depth=3).geometry
    w = default_window(geo)
    assert all(v > g for v, g in zip(w, geo.grid)) and geo.is_valid_output(w)
    notes = []
    net, window = resolve_window(tiny(window=None), ModelConfig(depth=1).geometry,
                                 [(48, 40)], notes)
    assert tuple(window) == (48, 40) and net == window


# -- bad input, before training --------------------------------------------------------


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (lambda i, lab: [i], lambda i, lab: [lab.astype(np.float32)], "integers"),
        (lambda i, lab: [i], lambda i, lab: [lab[:-1]], "shape"),
        (lambda i, lab: [i], lambda i, lab: [np.zeros_like(lab)], "no instance"),
        (lambda i, lab: [np.where(lab > 0, np.nan, i)], lambda i, lab: [lab], "NaN"),
        (lambda i, lab: [i, i], lambda i, lab: [lab], "2 images and 1 label"),
        (lambda i, lab: [i[None, None]], lambda i, lab: [lab[None, None]], "dimensionality"),
        (lambda i, lab: [], lambda i, lab: [], "no training data"),
    ],
)
def test_bad_input_is_one_clear_error(pair, images, labels, match):
    calls = []
    with pytest.raises(NSEError, match=match):
        train(images(*pair), labels(*pair), tiny(), progress=calls.append)
    assert calls == []  # nothing trained


def test_3d_model_on_2d_data_is_an_error(pair):
    with pytest.raises(NSEError, match="dimensionality"):
        train([pair[0]], [pair[1]], tiny(ndim=3))


def test_negative_labels_need_an_ignore_index(pair):
    lab = pair[1].astype(np.int32)
    lab[:10] = -1
    with pytest.raises(NSEError, match="ignore_index"):
        train([pair[0]], [lab], tiny())
    result = train([pair[0]], [lab], tiny(ignore_index=-1, iterations=1))
    assert result.model.config.loss["ignore_index"] == -1


# -- sampling --------------------------------------------------------------------------


def test_crops_pair_input_and_labels_through_rotations_and_flips():
    labels = nuclei((40, 40), radius=(3.0, 6.0), seed=3)[1].astype(np.int64)
    array = TrainArray(labels.astype(np.float32), labels, "test")
    cfg = tiny(window=8, intensity_scale=None, intensity_offset=None, noise_std=None,
               p_elastic=0.0)
    geo = ModelConfig(depth=1).geometry
    sampler = CropSampler([array], geo, geo.valid_output_above(8), geo.valid_output_above(8),
                          cfg, np.random.default_rng(0))
    h = geo.half_context[0]
    for _ in range(20):
        x, y = sampler.draw_one()
        assert x.shape == (24, 24) and y.shape == (8, 8)
        np.testing.assert_array_equal(x[h:h + 8, h:h + 8], y)


def test_crops_are_blurred_when_the_config_says_so():
    labels = nuclei((40, 40), radius=(3.0, 6.0), seed=3)[1].astype(np.int64)
    array = TrainArray((labels > 0).astype(np.float32), labels, "test")
    geo = ModelConfig(depth=1).geometry
    out = geo.valid_output_above(8)
    for p_blur, sharp in ((0.0, True), (1.0, False)):
        cfg = tiny(window=8, intensity_scale=None, intensity_offset=None, noise_std=None,
                   p_elastic=0.0, blur_sigma=(1.0, 1.0), p_blur=p_blur)
        sampler = CropSampler([array], geo, out, out, cfg, np.random.default_rng(0))
        x, _ = sampler.draw_one()
        assert set(np.unique(x)) <= {0.0, 1.0} if sharp else len(np.unique(x)) > 2


def test_crops_mostly_contain_an_instance():
    labels = np.zeros((64, 64), np.int64)
    labels[50:54, 50:54] = 1
    array = TrainArray(np.zeros((64, 64), np.float32), labels, "test")
    geo = ModelConfig(depth=1).geometry
    cfg = tiny(window=8, p_foreground=1.0, augment=False)
    sampler = CropSampler([array], geo, geo.valid_output_above(8), geo.valid_output_above(8),
                          cfg, np.random.default_rng(0))
    assert all(sampler.draw_one()[1].any() for _ in range(10))


def test_zstack_planes_without_labels_are_skipped(pair):
    img = np.stack([pair[0]] * 3)
    lab = np.stack([pair[1], np.zeros_like(pair[1]), pair[1]])
    notes = []
    arrays, _ = prepare_data([img], [lab], 2, None, None, notes)
    assert [a.name for a in arrays] == ["image 1, plane 0", "image 1, plane 2"]
    assert any("skipped 1 plane" in n for n in notes)
    assert train([img], [lab], tiny(iterations=1)).model.config.ndim == 2


def test_normalisation_is_stored_and_applied_per_image(pair):
    img = pair[0] * 1000 + 50
    notes = []
    arrays, _ = prepare_data([img], [pair[1]], 2, {"kind": "percentile", "low": 1.0,
                                                     "high": 99.8}, None, notes)
    lo, hi = np.percentile(arrays[0].image, [1, 99.8])
    assert abs(lo) < 1e-3 and abs(hi - 1) < 1e-3
    model = train([img], [pair[1]], tiny(iterations=1)).model
    assert model.config.normalization["kind"] == "percentile"


def test_3d_training_runs():
    img, lab = nuclei((20, 28, 28), radius=(3.0, 5.0), seed=2)
    result = train([img], [lab], tiny(ndim=3, window=6, iterations=2, in_plane_only=True))
    assert result.model.config.ndim == 3 and result.model.config.window == (6, 6, 6)
    assert len(result.history) == 2


# -- the loop --------------------------------------------------------------------------


def test_progress_reports_every_iteration_and_loss_decreases(pair):
    entries = []
    result = train([pair[0]], [pair[1]], tiny(iterations=40, lr=1e-2, base_channels=4,
                                              embedding_dim=4),
                   progress=entries.append)
    steps = [e for e in entries if e["stage"] == "train"]
    assert [e["iteration"] for e in steps] == list(range(1, 41))
    assert {"iteration", "iterations", "loss", "var", "dist", "reg", "fg", "lr", "seconds",
            "fraction"} <= set(steps[0])
    assert steps == result.history
    assert [e["stage"] for e in entries[40:]] == ["calibrate"] * (len(entries) - 41) + ["done"]
    assert entries[-1]["val_ap"] == result.calibration.validation_ap
    first = np.mean([e["loss"] for e in steps[:5]])
    last = np.mean([e["loss"] for e in steps[-5:]])
    assert last < first
    assert not result.model.training


def test_same_seed_same_weights_other_seed_other_weights(pair):
    a = train([pair[0]], [pair[1]], tiny(seed=3)).model
    b = train([pair[0]], [pair[1]], tiny(seed=3)).model
    c = train([pair[0]], [pair[1]], tiny(seed=4)).model
    assert_same_weights(weights(a), weights(b))
    assert any(not torch.equal(x, y) for x, y in zip(weights(a).values(),
                                                      weights(c).values()))


def test_deterministic_mode_is_restored(pair):
    before = torch.are_deterministic_algorithms_enabled()
    train([pair[0]], [pair[1]], tiny(iterations=1))
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_returns_the_partial_model(pair, kind):
    event = threading.Event()
    cancel = event if kind == "event" else event.is_set

    def progress(entry):
        if entry["iteration"] == 2:
            event.set()

    result = train([pair[0]], [pair[1]], tiny(iterations=50), progress=progress, cancel=cancel)
    assert len(result.history) == 2
    assert result.model.config.extra["cancelled"] is True
    assert result.model.config.extra["iterations_done"] == 2


def test_checkpoint_and_resume_equal_an_uninterrupted_run(pair, tmp_path):
    full = train([pair[0]], [pair[1]], tiny(iterations=4))
    train([pair[0]], [pair[1]], tiny(iterations=4, checkpoint_every=2),
          checkpoint_dir=tmp_path)
    ckpt = tmp_path / "checkpoint-000002.pt"
    assert ckpt.exists() and (tmp_path / "checkpoint-000004.pt").exists()
    model, state = load_checkpoint(ckpt)
    assert state["iteration"] == 2 and len(state["history"]) == 2
    assert load_model(ckpt).config.window == (12, 12)  # a checkpoint is a usable model
    resumed = train([pair[0]], [pair[1]], tiny(iterations=4), resume=ckpt)
    assert [e["iteration"] for e in resumed.history] == [1, 2, 3, 4]
    assert_same_weights(weights(full.model), weights(resumed.model))


def test_resume_from_a_plain_model_file_is_refused(pair, tmp_path):
    path = save_model(build_model(ModelConfig(depth=1, base_channels=2)), tmp_path / "m.pt")
    with pytest.raises(NSEError, match="fine-tune"):
        train([pair[0]], [pair[1]], tiny(), resume=path)


def test_checkpoint_every_needs_a_folder(pair):
    with pytest.raises(NSEError, match="folder"):
        train([pair[0]], [pair[1]], tiny(checkpoint_every=1))


def test_fine_tuning_keeps_architecture_and_leaves_the_start_model_alone(pair, tmp_path):
    start = build_model(ModelConfig(depth=1, base_channels=3, embedding_dim=3,
                                    normalization={"kind": "none"}), seed=0)
    before = weights(start)
    result = train([pair[0]], [pair[1]], tiny(base_channels=7, iterations=2),
                   init_model=start)
    assert result.model.config.base_channels == 3
    assert result.model.config.normalization == {"kind": "none"}
    assert_same_weights(before, weights(start))
    assert any(not torch.equal(before[k], v) for k, v in weights(result.model).items())
    path = save_model(start, tmp_path / "start.pt")
    from_file = train([pair[0]], [pair[1]], tiny(iterations=2), init_model=str(path))
    assert_same_weights(weights(result.model), weights(from_file.model))


def test_coordinates_default_on_new_models_and_follow_the_start_model(pair):
    from napari_shift_equivariance.labels import instance_sizes
    from napari_shift_equivariance.loss import COORD_SPAN
    from napari_shift_equivariance.train.calibrate import object_diameter

    new = train([pair[0]], [pair[1]], tiny(iterations=1, val_every=0, calibrate=False,
                                           window=24))
    d = object_diameter(float(np.median(list(instance_sizes(pair[1]).values()))), 2)
    assert new.model.config.loss["coord_scale"] == pytest.approx(COORD_SPAN / d, rel=1e-2)
    assert any("coord_scale" in n and "median object diameter" in n for n in new.notes)
    # larger objects, smaller scale: the offsets span the same embedding distance
    big = nuclei((64, 64), radius=(9.0, 12.0), seed=2)
    assert train([big[0]], [big[1]], tiny(iterations=1)).model.config.loss[
        "coord_scale"] < new.model.config.loss["coord_scale"]
    assert not any("exceed half" in n for n in new.notes)
    cut = train([big[0]], [big[1]], tiny(iterations=1))  # 12 px windows, 18-24 px nuclei
    assert any("exceed half the 12 px training window" in n for n in cut.notes)
    new = new.model
    old = build_model(ModelConfig(depth=1, base_channels=2, embedding_dim=2), seed=0)
    assert "coord_scale" not in old.config.loss  # a model from before coordinates
    tuned = train([pair[0]], [pair[1]], tiny(iterations=1), init_model=old).model
    assert tuned.config.loss["coord_scale"] == 0.0  # its embeddings keep their meaning
    again = train([pair[0]], [pair[1]], tiny(iterations=1), init_model=new).model
    assert again.config.loss["coord_scale"] == new.config.loss["coord_scale"]
    mine = train([pair[0]], [pair[1]], tiny(iterations=1, coord_scale=0.5),
                 init_model=old).model
    assert mine.config.loss["coord_scale"] == 0.5
    with pytest.raises(NSEError, match="at least 2 embedding dimensions"):
        train([pair[0]], [pair[1]], tiny(embedding_dim=1, coord_scale=0.2))
    few = train([pair[0]], [pair[1]], tiny(embedding_dim=1, iterations=1))
    assert few.model.config.loss["coord_scale"] == 0.0
    assert any("no coordinates" in n for n in few.notes)
    with pytest.raises(NSEError, match="coordinate scale"):
        tiny(coord_scale=-1)


def test_fine_tuning_a_3d_model_on_2d_data_is_an_error(pair):
    start = build_model(ModelConfig(ndim=3, depth=1, factor=2, base_channels=2), seed=0)
    with pytest.raises(NSEError, match="dimensionality"):
        train([pair[0]], [pair[1]], tiny(), init_model=start)


def test_training_state_is_stored_in_the_model(pair, tmp_path):
    model = train([pair[0]], [pair[1]], tiny(seed=5, iterations=1)).model
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    cfg = TrainConfig.from_dict(loaded.config.extra["train"])
    assert cfg.seed == 5 and cfg.window == 12
    assert loaded.config.loss["delta_d"] == DEFAULT_DELTA_D == TrainConfig().delta_d
    assert ModelConfig().loss["delta_d"] == DEFAULT_DELTA_D


def test_validation_reports_ap(pair):
    img, lab = nuclei((96, 64), radius=(3.0, 6.0), seed=4)
    result = train([img], [lab], tiny(iterations=2, val_every=1))
    assert all(0.0 <= e["val_ap"] <= 1.0 for e in result.history)
    assert any("validation on the last" in n for n in result.notes)


# -- command line ----------------------------------------------------------------------


@pytest.fixture
def files(tmp_path, pair):
    np.save(tmp_path / "img.npy", pair[0])
    np.save(tmp_path / "lab.npy", pair[1])
    return tmp_path


def _args(d, *extra):
    return ["train", "--image", str(d / "img.npy"), "--labels", str(d / "lab.npy"),
            "--depth", "1", "--base-channels", "2", "--embedding-dim", "2", "--window", "12",
            "--iterations", "2", "--batch-size", "1", "--device", "cpu", "--quiet", *extra]


def test_cli_trains_and_writes_a_model(files, capsys):
    assert main(_args(files, "--out", str(files / "m.pt"), "--json", "--seed", "7")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iterations"] == 2 and out["model"].endswith("m.pt")
    model = load_model(files / "m.pt")
    assert model.config.window == (12, 12) and model.config.extra["train"]["seed"] == 7


def test_cli_refuses_to_overwrite_before_training(files, capsys):
    (files / "m.pt").write_bytes(b"keep me")
    assert main(_args(files, "--out", str(files / "m.pt"))) == 2
    assert "exists" in capsys.readouterr().err
    assert (files / "m.pt").read_bytes() == b"keep me"


def test_cli_unequal_images_and_labels(files, capsys):
    args = _args(files, "--out", str(files / "m.pt"), "--image", str(files / "img.npy"))
    assert main(args) == 2
    assert "2 --image and 1 --labels" in capsys.readouterr().err
    assert not (files / "m.pt").exists()


def test_cli_small_window_needs_the_flag(files, capsys):
    args = _args(files, "--out", str(files / "m.pt"))
    args[args.index("--window") + 1] = "2"
    assert main(args) == 2
    assert "--allow-small-window" in capsys.readouterr().err
    assert main(args + ["--allow-small-window"]) == 0


def test_cli_fine_tunes_and_resumes(files):
    assert main(_args(files, "--out", str(files / "a.pt"), "--checkpoint-every", "1")) == 0
    ckpt = files / "a.pt.checkpoints" / "checkpoint-000001.pt"
    assert ckpt.exists()
    resume = _args(files, "--out", str(files / "b.pt"), "--resume", str(ckpt))
    i = resume.index("--iterations")
    del resume[i:i + 2]  # the checkpoint's iteration count is kept
    assert main(resume) == 0
    assert_same_weights(weights(load_model(files / "a.pt")), weights(load_model(files / "b.pt")))
    assert main(_args(files, "--out", str(files / "c.pt"), "--from", str(files / "a.pt"))) == 0


# -- time limit, process-wide state, bad labels ------------------------------------------


def test_time_limit_stops_cleanly_then_validates_and_calibrates(pair):
    # the limit counts from the call, setup included: warm torch's one-time imports first
    train([pair[0]], [pair[1]], tiny(iterations=1, calibrate=False, val_every=0))
    img, lab = nuclei((96, 64), radius=(3.0, 6.0), seed=4)
    limit = 8.0
    cfg = tiny(iterations=UNLIMITED_ITERATIONS, time_limit=limit, lr=1e-2)
    events = []
    small = ([img[-24:, :40]], [lab[-24:, :40]])  # cheap to validate: a short test
    result = train([img[:-24]], [lab[:-24]], cfg, progress=events.append, validation=small)
    extra = result.model.config.extra
    assert extra["stopped"] == "time_limit" and extra["iterations_done"] > 1
    assert result.history[-1]["seconds"] < limit  # the loop kept the reserve
    assert events[-1]["stage"] == "done" and events[-1]["stopped"] == "time_limit"
    assert result.calibration is not None and "bandwidth" in extra
    assert any("time limit" in n for n in result.notes)
    # the learning-rate schedule follows the clock: it decays although few of the
    # (unlimited) iterations were done
    assert result.history[-1]["lr"] < 0.5 * result.history[0]["lr"]
    assert result.history[-1]["fraction"] > 0.5


def test_a_time_limit_without_iterations_trains_until_the_clock():
    # TrainConfig(time_limit=600) must not stop at the default 2000 iterations (it did,
    # after 150 s on an idle 2-core machine): as with nse train --time-limit
    from napari_shift_equivariance.train.config import DEFAULT_ITERATIONS

    assert TrainConfig().iterations == DEFAULT_ITERATIONS
    assert TrainConfig(time_limit=600).iterations == UNLIMITED_ITERATIONS
    assert TrainConfig(time_limit=600, iterations=50).iterations == 50
    with pytest.raises(NSEError, match="iterations"):
        TrainConfig(iterations=0)


def test_time_limit_too_short_is_one_clear_error_before_training(pair, tmp_path):
    calls = []
    with pytest.raises(NSEError, match="too short.*give at least"):
        train([pair[0]], [pair[1]], tiny(time_limit=1e-3, checkpoint_every=1),
              progress=calls.append, checkpoint_dir=tmp_path / "ckpt")
    assert calls == [] and not (tmp_path / "ckpt").exists()


def test_process_wide_torch_state_is_restored_exactly(pair):
    threads = torch.get_num_threads()
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    seen = []

    def progress(entry):
        if entry["stage"] == "train":
            seen.append(torch.are_deterministic_algorithms_enabled())

    try:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(2 if threads != 2 else 1)
        before = torch.get_num_threads()
        train([pair[0]], [pair[1]], tiny(iterations=2), progress=progress)
        assert seen == [True, True]  # deterministic kernels while training on the CPU...
        assert not torch.are_deterministic_algorithms_enabled()  # ...and only then
        assert torch.get_num_threads() == before
        torch.use_deterministic_algorithms(True, warn_only=False)
        seen.clear()
        train([pair[0]], [pair[1]], tiny(iterations=1, deterministic=False),
              progress=progress)
        assert seen == [True]  # a caller's own setting is left alone, not switched off...
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # ...nor its mode
        with pytest.raises(RuntimeError, match="boom"), torch_state(torch.device("cpu"), True):
            torch.set_num_threads(1)
            raise RuntimeError("boom")
        assert torch.get_num_threads() == before
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]
        torch.set_num_threads(threads)


def test_one_id_in_several_pieces_is_warned_about_with_the_count(pair):
    lab = pair[1].astype(np.int32).copy()
    ids = [i for i in np.unique(lab) if i]
    lab[lab == ids[1]] = ids[0]  # two nuclei share one ID
    with pytest.warns(SplitInstanceWarning, match=r"1 instance ID\(s\).*2 pieces"):
        result = train([pair[0]], [lab], tiny(iterations=1))
    assert any("disconnected pieces" in n for n in result.notes)


def test_fewer_than_two_instances_is_an_error(pair):
    lab = np.zeros_like(pair[1])
    lab[10:16, 10:16] = 3
    with pytest.raises(NSEError, match="only one instance"):
        train([pair[0]], [lab], tiny())
    # one nucleus seen in two planes of a z-stack is still one instance
    with pytest.raises(NSEError, match="only one instance"):
        train([np.stack([pair[0]] * 2)], [np.stack([lab] * 2)], tiny())


def test_validation_split_is_held_out_of_training_automatically():
    img, lab = nuclei((96, 64), radius=(3.0, 6.0), seed=4)
    notes = []
    arrays, raw = prepare_data([img], [lab], 2, None, None, notes)
    held = split_validation(arrays, raw, (12, 12), 0.2, None, notes)
    assert held[1].shape == (20, 64) and arrays[0].labels.shape == (76, 64)
    np.testing.assert_array_equal(held[1], lab[76:])
    result = train([img], [lab], tiny(iterations=2))
    assert "last 20 px of image 1" in result.calibration.data


def test_cli_time_limit_too_short_writes_nothing(files, capsys):
    args = _args(files, "--out", str(files / "m.pt"), "--time-limit", "0.001",
                 "--checkpoint-every", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("nse train: error: time limit") and "too short" in err
    assert err.count("\n") == 1
    assert not (files / "m.pt").exists() and not (files / "m.pt.checkpoints").exists()


def test_cli_reports_the_calibration(files, capsys):
    assert main(_args(files, "--out", str(files / "m.pt"), "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    cal = out["calibration"]
    assert out["val_ap"] == cal["heldout_ap"] is not None and cal["bandwidth"] > 0
    assert load_model(files / "m.pt").config.extra["bandwidth"] == cal["bandwidth"]
    assert main(_args(files, "--out", str(files / "v.pt"), "--json", "--calibrate-on",
                      "validation")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration"]["heldout_ap"] is None
    assert out["val_ap"] == out["calibration"]["ap"]
    assert out["config"]["extra"]["train"]["calibrate_on"] == "validation"
    assert main(_args(files, "--out", str(files / "n.pt"), "--json", "--no-calibrate")) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] is None
    assert "bandwidth" not in load_model(files / "n.pt").config.extra


def test_presets_table_and_cli_choices_agree():
    from napari_shift_equivariance.cli.train import PRESET_NAMES
    from napari_shift_equivariance.train import PRESETS, preset

    assert tuple(PRESETS) == PRESET_NAMES == ("default", "default-finetune", "default3d")
    for name, ndim in (("default", 2), ("default-finetune", 2), ("default3d", 3)):
        images, labels, cfg = preset(name, n_images=1)
        assert cfg.ndim == ndim and images[0].ndim == ndim == labels[0].ndim
        assert images[0].shape == labels[0].shape
        assert cfg == TrainConfig(**PRESETS[name].config)
    with pytest.raises(NSEError, match="unknown preset"):
        preset("nope")


def test_keep_best_returns_the_weights_of_the_best_validation(pair, monkeypatch):
    from napari_shift_equivariance.train import Calibration, loop

    aps = iter([0.1, 0.9, 0.2])

    def fake_validation(self, model):
        return Calibration(bandwidth=1.0, fg_threshold=0.5, min_size=10, ap=next(aps),
                           default_ap=0.0)

    monkeypatch.setattr(loop.Validator, "__call__", fake_validation)
    img, lab = nuclei((96, 64), radius=(3.0, 6.0), seed=4)
    cfg = tiny(iterations=3, val_every=1, keep_best=True, lr_schedule="constant",
               calibrate=False)
    val = ([img[-20:]], [lab[-20:]])
    best = train([img[:-20]], [lab[:-20]], cfg, validation=val)
    assert [e["val_ap"] for e in best.history] == [0.1, 0.9, 0.2]
    assert any("kept the weights of iteration 2" in n for n in best.notes)
    two = train([img[:-20]], [lab[:-20]], cfg.replace(iterations=2, val_every=0,
                                                      keep_best=False))
    assert_same_weights(weights(best.model), weights(two.model))


def test_cli_help_states_the_one_delta_d_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"push margin (default {DEFAULT_DELTA_D})" in text
    assert "--time-limit SECONDS" in text and "default3d" in text


def test_boundary_gap_changes_the_training_targets_not_the_validation_labels():
    from napari_shift_equivariance.train.sampling import prepare_data

    img, lab = nuclei((64, 64), radius=(5.0, 7.0), touching=1.0, seed=4)
    arrays, raw = prepare_data([img], [lab], 2, None, None, [], boundary_gap=True)
    plain, _ = prepare_data([img], [lab], 2, None, None, [])
    gap = (plain[0].labels > 0) & (arrays[0].labels == 0)
    assert gap.any() and np.array_equal(raw[0][1], lab)  # validation scores the real labels
    assert TrainConfig(boundary_gap=True).boundary_gap and not TrainConfig().boundary_gap


def test_blur_and_zoom_settings_are_checked_and_round_trip():
    cfg = TrainConfig(blur_sigma=[0.5, 2.0], p_blur=0.5, zoom=(0.8, 1.25), p_zoom=0.3)
    assert cfg.blur_sigma == (0.5, 2.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad, what in (({"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
                      ({"blur_sigma": (-1.0, 1.0)}, "blur_sigma"),
                      ({"blur_sigma": (1.0,)}, "blur_sigma"), ({"p_blur": 1.5}, "p_blur"),
                      ({"zoom": (0.0, 1.0)}, "zoom"), ({"p_zoom": -0.1}, "p_zoom")):
        with pytest.raises(NSEError, match=what):
            TrainConfig(**bad)


def test_calibrate_on_is_checked():
    assert TrainConfig().calibrate_on == "all"
    with pytest.raises(NSEError, match="calibrate_on must be one of all, validation"):
        TrainConfig(calibrate_on="train")


def test_calibration_data_holds_whole_training_images_up_to_the_pixel_budget(monkeypatch):
    from napari_shift_equivariance.train import loop

    raw = [(np.zeros((100, 100)), np.ones((100, 100), np.int64)),
           (np.zeros((50, 50)), np.ones((50, 50), np.int64)),
           (np.zeros((200, 200)), np.ones((200, 200), np.int64))]
    val = ([raw[2][0][160:]], [raw[2][1][160:]])  # the split: a view of the largest image
    notes = []
    monkeypatch.setattr(loop, "CALIBRATION_PIXELS", 200 * 200 + 100 * 100)
    (images, labels), desc = loop._calibration_data(val, raw, "the crop", notes)
    # the split's image first, the split itself last
    assert [i.shape for i in images] == [(200, 200), (100, 100), (40, 200)]
    assert [lab.shape for lab in labels] == [(200, 200), (100, 100), (40, 200)]
    assert desc == ("2 whole training image(s) (1 left out: over 50000 px), and the crop on "
                    "its own")
    assert notes[-1].startswith(f"calibrating on {desc}")
    monkeypatch.setattr(loop, "CALIBRATION_PIXELS", 100 * 100)  # the split's image is too big
    (images, _), desc = loop._calibration_data(val, raw, "the crop", [])
    assert [i.shape for i in images] == [(100, 100), (40, 200)]
    assert desc.endswith(", and the crop on its own")
    monkeypatch.setattr(loop, "CALIBRATION_PIXELS", 10)
    assert loop._calibration_data(val, raw, "the crop", []) == (val, "the crop")
