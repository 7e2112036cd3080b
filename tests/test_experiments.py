"""The paper's findings, small and fast: Fig. 2 (periodic disks) and Fig. 4 (seams)."""

import numpy as np
import pytest

from napari_shift_equivariance import experiments as ex
from napari_shift_equivariance.cli import main
from napari_shift_equivariance.data import periodic_disks
from napari_shift_equivariance.metrics import embedding_seam_statistic
from napari_shift_equivariance.model import build_model
from napari_shift_equivariance.predict import predict
from napari_shift_equivariance.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_net(seed, upsampling="learnt"):
    config = ex._model_config(4, 4, upsampling=upsampling, normalization={"kind": "none"})
    return build_model(config, seed=seed)


def centre_embeddings(model, spacing, shape=(232, 232)):
    image, labels = periodic_disks(shape, radius=5, spacing=spacing)
    centres = ex.disk_centres(labels)
    keep = ex.interior(centres, shape, int(model.config.geometry.half_context[0]))
    emb = ex.centre_embeddings(predict(model, image, "whole", device="cpu"), centres[keep])
    return emb


@pytest.mark.parametrize("seed, upsampling", [(0, "learnt"), (1, "nearest"), (2, "learnt")])
def test_spacing_n_fl_gives_every_disk_the_same_embedding_for_any_weights(seed, upsampling):
    emb = centre_embeddings(random_net(seed, upsampling), spacing=16)
    assert len(emb) >= 64
    assert np.abs(emb - emb[0]).max() <= 1e-5
    assert ex.count_groups(emb, 1e-4) == 1


@pytest.mark.parametrize("seed", [0, 2])
def test_coprime_spacing_reaches_the_capacity_f_dl(seed):
    emb = centre_embeddings(random_net(seed), spacing=15)
    # 100 interior disks on 8 x 8 phases of the f^l grid: exactly 64 distinct embeddings
    assert len(emb) == 100
    assert ex.count_groups(emb, 1e-4) == ex.GRID**2


def test_count_groups_links_by_distance():
    pts = np.array([[0.0, 0], [0.5, 0], [5, 0], [5, 0.4], [10, 10]])
    assert ex.count_groups(pts, 1.0) == 3
    assert ex.count_groups(pts, 0.1) == 5


def test_training_window_fl_makes_grid_seams_a_larger_window_does_not():
    """Short runs, tiny nets: the direction of Fig. 4(a) vs 4(b-c) (robust over seeds 0-2)."""
    train_image, train_labels = periodic_disks((128, 128), radius=4, spacing=13, noise=0.01)
    image, labels = periodic_disks((96, 96), radius=4, spacing=13, offset=5, noise=0.01, seed=1)
    ratio = {}
    for window in (ex.GRID, 36):
        cfg = ex._train_config(True, 0, window=window, allow_small_window=window <= ex.GRID,
                               iterations=40)
        model = train([train_image], [train_labels], cfg).model
        prediction = predict(model, image, "whole", device="cpu")
        ratio[window] = embedding_seam_statistic(
            prediction[:-1], labels > 0, ex.grid_lines(image.shape, ex.GRID))["ratio"]
        if window > ex.GRID:
            naive = predict(model, image, "naive", 20, device="cpu")
            correct = predict(model, image, "correct", 16, device="cpu")
            assert np.abs(correct - prediction).max() < 1e-4
            assert np.abs(naive - prediction).max() > 1e-2
    assert ratio[ex.GRID] > ratio[36]


def test_experiment_cli_rejects_unknown_names_and_existing_files(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "fig3"])
    (tmp_path / "exp_fig2.png").write_bytes(b"keep")
    assert main(["experiment", "fig2", "--quick", "--out", str(tmp_path)]) == 2
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "exp_fig2.png").read_bytes() == b"keep"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fig2", "fig4"])
def test_quick_experiments_write_figures_and_numbers(tmp_path, name, capsys):
    assert main(["experiment", name, "--quick", "--out", str(tmp_path), "--json",
                 "--quiet"]) == 0
    import json

    result = json.loads(capsys.readouterr().out)
    assert (tmp_path / f"exp_{name}.png").stat().st_size > 10_000
    assert json.loads((tmp_path / f"exp_{name}.json").read_text()) == result
    if name == "fig2":
        s16, s15 = result["spacings"]["16"], result["spacings"]["15"]
        assert s16["random_weights"]["distinct"] == 1 and s16["trained"]["distinct"] == 1
        assert s15["random_weights"]["distinct"] == 64
    else:
        runs = result["runs"]
        assert result["correct_equals_whole"] < 1e-4
        assert runs["window>f^l, naive"]["jump"]["ratio"] > runs["window>f^l, correct"][
            "jump"]["ratio"]
