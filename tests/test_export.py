"""bioimage.io export: the package validates, test-runs offline and reproduces nse predict."""

import json
import os
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")

from bioimageio.spec import load_description  # noqa: E402
from bioimageio.spec.model.v0_5 import (  # noqa: E402
    ModelDescr,
    ParameterizedSize,
    ScaleLinearDescr,
    ScaleRangeDescr,
    SizeReference,
)

from napari_shift_equivariance import export as ex  # noqa: E402
from napari_shift_equivariance.cli import main  # noqa: E402
from napari_shift_equivariance.errors import NSEError  # noqa: E402
from napari_shift_equivariance.model import ModelConfig, build_model, save_model  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # bioimageio.core loads TorchScript weights, which torch now marks deprecated
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_PERFORM_IO_CHECKS", "false")


def _tiny(ndim=2, **kw):
    cfg = {"ndim": ndim, "depth": 2 if ndim == 2 else 1, "factor": 2, "base_channels": 4,
           "embedding_dim": 3, **kw}
    return build_model(ModelConfig(**cfg), seed=1)


@pytest.fixture(scope="module")
def package2d(tmp_path_factory):
    model = _tiny()
    path = ex.export_bioimageio(model, tmp_path_factory.mktemp("bmz") / "m2d.zip",
                                authors=["A. Tester"])
    return model, path


@pytest.fixture(scope="module")
def package3d(tmp_path_factory):
    model = _tiny(3, factor=(1, 2, 2))
    path = ex.export_bioimageio(model, tmp_path_factory.mktemp("bmz") / "m3d.zip")
    return model, path


def _descr(path):
    descr = load_description(path, perform_io_checks=False)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    return descr


def _main(*argv):
    return main([str(a) for a in argv])


def _steps(tensor):
    """Preprocessing steps other than the dtype casts the spec adds by itself."""
    return [p for p in tensor.preprocessing if p.id != "ensure_dtype"]


def _npy(path, name):
    with zipfile.ZipFile(path) as z, z.open(name) as fh:
        return np.load(fh)


@pytest.mark.parametrize("which", ["package2d", "package3d"])
def test_package_validates_with_exact_tiling_axes(which, request):
    model, path = request.getfixturevalue(which)
    descr = _descr(path)
    assert descr.validation_summary.status == "valid-format"
    assert descr.format_version.startswith("0.5")
    g = model.config.geometry
    (inp,), (out,) = descr.inputs, descr.outputs
    spatial_in = [a for a in inp.axes if a.type == "space"]
    spatial_out = [a for a in out.axes if a.type == "space"]
    assert [str(a.id) for a in spatial_in] == list(ex.SPATIAL_AXES[model.config.ndim])
    for a, m, step in zip(spatial_in, g.min_input, g.grid):
        assert isinstance(a.size, ParameterizedSize)
        assert (a.size.min, a.size.step) == (m, step)
    for a, c in zip(spatial_out, g.context):
        assert isinstance(a.size, SizeReference) and a.size.offset == -c
        assert str(a.size.tensor_id) == "input" and a.size.axis_id == a.id
    channels = next(a for a in out.axes if a.type == "channel").channel_names
    assert len(channels) == model.config.out_channels and channels[-1] == "foreground"
    assert descr.weights.pytorch_state_dict is not None and descr.weights.torchscript is not None
    arch = descr.weights.pytorch_state_dict.architecture
    assert (arch.callable, arch.import_from) == ("BioimageioUNet",
                                                 "napari_shift_equivariance.export")
    (pre,) = _steps(inp)
    assert isinstance(pre, ScaleRangeDescr)
    assert (pre.kwargs.min_percentile, pre.kwargs.max_percentile) == (1.0, 99.8)
    with zipfile.ZipFile(path) as z:
        readme = z.read("README.md").decode()
    assert "mean-shift" in readme and "not instance labels" in readme


def test_readme_says_to_add_the_coordinates_back():
    model = _tiny()
    assert "offsets" not in ex._readme(model.config, "m")
    model.config.loss = {**model.config.loss, "coord_scale": 0.2}
    readme = ex._readme(model.config, "m")
    assert "add 0.2 times each pixel's global position in pixels (y, x)" in readme
    assert "\n        " not in readme  # still dedented


def test_every_valid_size_is_min_plus_n_steps(package3d):
    """The axes' arithmetic against the network itself, including the anisotropic axis."""
    model, _ = package3d
    g = model.config.geometry
    for n in range(3):
        size = tuple(int(m + n * s) for m, s in zip(g.min_input, g.grid))
        with torch.no_grad():
            y = model(torch.zeros((1, 1, *size)))
        assert tuple(y.shape[2:]) == tuple(s - c for s, c in zip(size, g.context))
        assert g.is_valid_input(size)
        assert not g.is_valid_input(tuple(s + 1 if st > 1 else s
                                          for s, st in zip(size, g.grid)))


def test_bioimageio_core_test_model_passes(package2d):
    status, failed = ex.check_package(package2d[1])
    assert status == "passed", failed


@pytest.mark.slow
def test_bioimageio_core_test_model_passes_3d(package3d):
    status, failed = ex.check_package(package3d[1])
    assert status == "passed", failed


@pytest.mark.slow
def test_bundled_default_model_exports_and_passes(tmp_path):
    from napari_shift_equivariance.model import default_model_path

    if not default_model_path(2).exists():
        pytest.skip("no bundled default 2D model in this installation")
    path = ex.export_bioimageio("default", tmp_path / "default.zip")
    status, failed = ex.check_package(path)
    assert status == "passed", failed


@pytest.mark.parametrize("which", ["package2d", "package3d"])
def test_prediction_equals_nse_predict(which, request, tmp_path, capsys):
    """bioimageio.core on the test input == `nse predict` (correct tiles) on the image."""
    from bioimageio.core import predict

    model, path = request.getfixturevalue(which)
    half = model.config.geometry.half_context
    test_in = _npy(path, "test_input.npy")
    image = test_in[(0, 0, *(slice(h, -h) for h in half))]
    model_file = save_model(model, tmp_path / "m.pt")
    np.save(tmp_path / "img.npy", image)
    grid = model.config.geometry.grid
    tile = ",".join(str(2 * g) for g in grid)
    assert _main("predict", tmp_path / "img.npy", "--model", model_file, "--tile", tile,
                 "--out", tmp_path / "pred.npy", "--device", "cpu", "--quiet") == 0
    ours = np.load(tmp_path / "pred.npy")
    sample = predict(model=str(path), inputs=test_in)
    theirs = np.asarray(sample.members["output"].data)[0]
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_npy(path, "test_output.npy")[0], ours, atol=1e-5)
    capsys.readouterr()


def test_weights_load_with_weights_only_and_torchscript_matches(package2d, tmp_path):
    model, path = package2d
    descr = _descr(path)
    kwargs = descr.weights.pytorch_state_dict.architecture.kwargs
    with zipfile.ZipFile(path) as z:
        z.extract("weights.pt", tmp_path)
        z.extract("weights_torchscript.pt", tmp_path)
    net = ex.BioimageioUNet(**kwargs)
    net.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    net.eval()
    scripted = torch.jit.load(str(tmp_path / "weights_torchscript.pt"))
    g = model.config.geometry
    # another size than the traced test input: the trace must not have frozen the shape
    size = tuple(int(m + 5 * s) for m, s in zip(g.min_input, g.grid))
    x = torch.rand((2, 1, *size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, c = net(x), scripted(x), model(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[:, :-1], c[:, :-1])
    torch.testing.assert_close(a[:, -1], torch.sigmoid(c[:, -1]))


def test_normalisation_kinds(tmp_path):
    fixed = _tiny(normalization={"kind": "fixed", "offset": 10.0, "scale": 4.0})
    path = ex.export_bioimageio(fixed, tmp_path / "fixed.zip", torchscript=False)
    (pre,) = _steps(_descr(path).inputs[0])
    assert isinstance(pre, ScaleLinearDescr)
    assert (pre.kwargs.gain, pre.kwargs.offset) == (0.25, -2.5)
    none = _tiny(normalization={"kind": "none"})
    path = ex.export_bioimageio(none, tmp_path / "none.zip", torchscript=False)
    assert _steps(_descr(path).inputs[0]) == []


def test_two_channel_model_and_sample(tmp_path):
    model = _tiny(in_channels=2)
    sample = np.random.default_rng(0).random((2, 70, 75)).astype(np.float32)
    path = ex.export_bioimageio(model, tmp_path / "c2.zip", sample=sample, torchscript=False)
    descr = _descr(path)
    assert len(next(a for a in descr.inputs[0].axes if a.type == "channel").channel_names) == 2
    # cropped to the largest valid output size inside the sample: 4 + n*4 per axis
    assert _npy(path, "test_output.npy").shape == (1, 4, 68, 72)
    test_in = _npy(path, "test_input.npy")
    assert test_in.shape == (1, 2, 68 + 40, 72 + 40)
    # a central crop, padded by half the context (20), clipped for the normalisation
    inner = test_in[0, :, 20:-20, 20:-20]
    crop = sample[:, 1:69, 1:73]
    lo, hi = inner.min(), inner.max()
    np.testing.assert_array_equal(inner, np.clip(crop, lo, hi))
    big = np.random.default_rng(1).random((2, 600, 300)).astype(np.float32)
    path_big = ex.export_bioimageio(model, tmp_path / "big.zip", sample=big, torchscript=False)
    assert _npy(path_big, "test_output.npy").shape == (1, 4, 256, 256)
    from bioimageio.core import predict

    got = predict(model=str(path), inputs=_npy(path, "test_input.npy")).members["output"].data
    np.testing.assert_allclose(np.asarray(got), _npy(path, "test_output.npy"), atol=1e-5)
    with pytest.raises(NSEError, match="sample image must have shape"):
        ex.export_bioimageio(model, tmp_path / "bad.zip", sample=sample[0])


def test_never_overwrites_and_leaves_nothing_half_written(package2d, tmp_path, monkeypatch):
    model, _ = package2d
    target = tmp_path / "m.zip"
    target.write_bytes(b"precious")
    with pytest.raises(NSEError, match="exists"):
        ex.export_bioimageio(model, target)
    assert target.read_bytes() == b"precious"
    with pytest.raises(NSEError, match=r"\.zip"):
        ex.export_bioimageio(model, tmp_path / "m.tar")

    import bioimageio.spec

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bioimageio.spec, "save_bioimageio_package", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export_bioimageio(model, target, overwrite=True, torchscript=False)
    assert target.read_bytes() == b"precious"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zip"]  # no .partial left


def test_cli_export(package2d, tmp_path, capsys):
    model, _ = package2d
    model_file = save_model(model, tmp_path / "m.pt")
    out = tmp_path / "pkg.zip"
    assert _main("export", model_file, "--format", "bioimageio", "--out", out,
                 "--no-torchscript", "--author", "Me", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["out"] == str(out) and data["bytes"] == os.path.getsize(out)
    descr = _descr(out)
    assert [a.name for a in descr.authors] == ["Me"] and descr.weights.torchscript is None
    assert _main("export", model_file, "--out", out) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert _main("export", tmp_path / "missing.pt", "--out", tmp_path / "x.zip") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _main("export", model_file, "--out", tmp_path / "y.zip", "--license",
                 "NOT-A-LICENCE") == 2
    err = capsys.readouterr().err
    assert "unknown licence 'NOT-A-LICENCE'" in err and "Traceback" not in err
    assert not (tmp_path / "y.zip").exists()


def test_readme_lists_every_stored_calibration_key():
    model = _tiny()
    assert "none stored" in ex._readme(model.config, "m")
    model.config.extra = {**(model.config.extra or {}), "bandwidth": 1.4,
                          "relative_min_size": 0.3, "spatial_radius": 12.0}
    readme = ex._readme(model.config, "m")
    assert "'relative_min_size': 0.3" in readme and "'spatial_radius': 12.0" in readme
    assert "with its bandwidth\n1.4." in readme
