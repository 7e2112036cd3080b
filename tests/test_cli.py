"""The ``nse`` core commands, run in-process through ``main`` (as a user types them)."""

import json

import numpy as np
import pytest

from napari_shift_equivariance.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_file(tmp_path, capsys):
    path = tmp_path / "m.pt"
    code, _, _ = run(capsys, "init", "--ndim", 2, "--depth", 2, "--factor", 2,
                     "--base-channels", 4, "--out", path)
    assert code == 0
    return path


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "img.npy"
    np.save(path, np.random.default_rng(0).random((45, 50)).astype(np.float32))
    return path


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--ndim", 2, "--depth", 4, "--factor", 2, "--json")
    data = json.loads(out)
    assert code == 0
    assert data["grid"] == [16, 16] and data["capacity"] == 256
    assert data["context"] == [184, 184]
    assert data["valid_output_sizes"][0][:3] == [4, 20, 36]
    assert data["min_input"] == [188, 188]


def test_info_from_model(capsys, model_file):
    code, out, _ = run(capsys, "info", "--model", model_file, "--json")
    assert code == 0 and json.loads(out)["grid"] == [4, 4]


def test_grid_json(capsys, model_file, image_file):
    code, out, _ = run(capsys, "grid", image_file, "--model", model_file, "--tile", 10, "--json")
    plan = json.loads(out)
    assert code == 0 and plan["tile_shape"] == [8, 8]
    assert plan["n_tiles"] == 6 * 7
    assert all(t["output"][0][0] % 4 == 0 for t in plan["tiles"])
    code, out, _ = run(capsys, "grid", image_file, "--model", model_file, "--tile", 10,
                       "--stitch", "naive", "--json")
    assert json.loads(out)["tile_shape"] == [10, 10]


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".zarr"])
def test_predict_tiled_equals_whole(capsys, tmp_path, model_file, image_file, suffix):
    from napari_shift_equivariance.io import read_image

    whole, tiled = tmp_path / f"w{suffix}", tmp_path / f"t{suffix}"
    assert run(capsys, "predict", image_file, "--model", model_file, "--whole",
               "--out", whole, "--quiet")[0] == 0
    code, out, _ = run(capsys, "predict", image_file, "--model", model_file, "--tile", 8,
                       "--out", tiled, "--json", "--quiet")
    assert code == 0 and json.loads(out)["n_tiles"] == 6 * 7
    a, b = np.asarray(read_image(whole)[...]), np.asarray(read_image(tiled)[...])
    assert a.shape == (9, 45, 50)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    if suffix == ".zarr":
        assert read_image(tiled).chunks == (9, 8, 8)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "--ndim", "2", "--depth", "0", "--factor", "2"], "depth"),
        (["info", "--ndim", "2"], "give --model"),
        (["grid", "{img}", "--model", "{model}", "--tile", "3"], "below the grid"),
        (["predict", "{img}", "--model", "{missing}", "--out", "{tmp}/o.npy"], "does not exist"),
        (["predict", "{img}", "--model", "{model}", "--out", "{img}"], "exists"),
        (["predict", "{img}", "--model", "{model}", "--out", "{tmp}/o.png"], "must end in"),
        (["predict", "{nan}", "--model", "{model}", "--out", "{tmp}/o.npy"], "NaN"),
        (["predict", "{img}", "--model", "{junk}", "--out", "{tmp}/o.npy"], "not a readable"),
        (["predict", "{img}", "--model", "{model}", "--whole", "--tile", "8", "--out",
          "{tmp}/o.npy"], "exclude"),
        (["init", "--ndim", "2", "--depth", "2", "--factor", "2", "--out", "{model}"], "exists"),
    ],
)
def test_errors_are_one_line(capsys, tmp_path, model_file, image_file, argv, message):
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((30, 30), np.nan, np.float32))
    junk = tmp_path / "junk.pt"
    junk.write_text("junk")
    fill = dict(img=image_file, model=model_file, missing=tmp_path / "no.pt", tmp=tmp_path,
                nan=nan, junk=junk)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run(capsys, *[a.format(**fill) for a in argv])
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written or lost


def test_interrupted_predict_leaves_no_output(monkeypatch, capsys, tmp_path, model_file,
                                              image_file):
    from napari_shift_equivariance.predict import Predictor

    def boom(self, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Predictor, "_forward", boom)
    out = tmp_path / "o.zarr"
    code, _, err = run(capsys, "predict", image_file, "--model", model_file, "--tile", 8,
                       "--out", out)
    assert code == 130 and "interrupted" in err
    assert not out.exists() and not (tmp_path / "o.zarr.partial").exists()


def test_module_entry_point():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "napari_shift_equivariance", "info", "--ndim",
                          "3", "--depth", "2", "--factor", "1,2,2", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(res.stdout)["grid"] == [1, 4, 4]


def test_segment_carries_the_pixel_size_into_ome_zarr_labels(tmp_path):
    import tifffile

    from napari_shift_equivariance import data
    from napari_shift_equivariance.omezarr import read_omezarr

    image, _ = data.nuclei((64, 72), seed=1)
    src = tmp_path / "a.ome.tif"
    tifffile.imwrite(src, (image * 1000).astype("uint16"), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25})
    out = tmp_path / "labels.ome.zarr"
    assert main(["segment", str(src), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    labels, meta = read_omezarr(out)
    assert labels.shape == (64, 72)
    assert meta["scale"] == [0.25, 0.5]
    # a level that an OME-TIFF does not have is refused in one line, nothing written
    bad = tmp_path / "bad.ome.zarr"
    assert main(["segment", str(src), "--out", str(bad), "--level", "3", "--device", "cpu"]) == 2
    assert not bad.exists()
