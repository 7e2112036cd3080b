"""Folders and globs: expand_inputs, run_batch, the segment/predict tasks, and the CLI."""

import csv
import json
import threading

import numpy as np
import pytest
import tifffile

from napari_shift_equivariance import batch
from napari_shift_equivariance.batch import (
    expand_inputs,
    output_paths,
    pair_by_stem,
    predict_task,
    run_batch,
    segment_task,
)
from napari_shift_equivariance.cli import main
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.errors import Cancelled, NSEError
from napari_shift_equivariance.io import read_image
from napari_shift_equivariance.model import ModelConfig, build_model, save_model
from napari_shift_equivariance.predict import Predictor
from napari_shift_equivariance.segment import segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _touch(path, data=b"x"):
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path):
    """Three small nuclei images, a text .npy, a corrupt tif and files that are no images."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        tifffile.imwrite(d / f"im{i}.tif", nuclei((48, 52), n=3, seed=i)[0])
    np.save(d / "text.npy", np.array(["a", "b"]))
    _touch(d / "corrupt.tif", b"not a tiff at all")
    _touch(d / "notes.txt")
    _touch(d / ".hidden.tif")
    _touch(d / "half.tif.partial")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build_model(ModelConfig(ndim=2, depth=2, factor=2, base_channels=4,
                                    embedding_dim=3), seed=0)
    path = save_model(model, tmp_path_factory.mktemp("model") / "tiny.pt")
    return model, path


def _fake(fail=()):
    """A task that writes the image's shape, failing on names in ``fail``."""
    calls = []

    def task(src, out):
        calls.append(src.name)
        if src.name in fail:
            raise ValueError(f"cannot handle {src.name}\nsecond line")
        out.write_text("done")
        return {"shape": (4, 5), "instances": len(src.name)}

    return task, calls


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- expand_inputs ------------------------------------------------------------------------
def test_one_image_is_no_batch(folder, tmp_path):
    assert expand_inputs(folder / "im0.tif") is None
    assert expand_inputs(tmp_path / "missing.tif") is None  # read_image reports it
    z = tmp_path / "a.zarr"
    z.mkdir()
    assert expand_inputs(z) is None  # a zarr folder is one image
    (z / "raw").mkdir()
    assert expand_inputs(z / "raw") is None  # and so is an array inside a zarr group
    (tmp_path / "b.zarr").mkdir()
    assert [p.name for p in expand_inputs(str(tmp_path / "*.zarr"))] == ["a.zarr", "b.zarr"]


def test_folder_lists_images_only_sorted(folder):
    names = [p.name for p in expand_inputs(folder)]
    assert names == ["corrupt.tif", "im0.tif", "im1.tif", "im2.tif", "text.npy"]


def test_glob_and_recursive_glob(folder):
    assert [p.name for p in expand_inputs(str(folder / "im[12].tif"))] == ["im1.tif",
                                                                           "im2.tif"]
    sub = folder / "sub"
    sub.mkdir()
    tifffile.imwrite(sub / "deep.tif", np.zeros((8, 8), np.uint8))
    found = [p.name for p in expand_inputs(str(folder / "**" / "*.tif"))]
    assert "deep.tif" in found and "notes.txt" not in found


def test_empty_folder_and_no_match_are_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NSEError, match="holds no images"):
        expand_inputs(tmp_path / "empty")
    _touch(tmp_path / "a.txt")
    with pytest.raises(NSEError, match="no images match .*1 other files"):
        expand_inputs(str(tmp_path / "a.*"))


def test_output_names_and_clashes(tmp_path):
    outs = output_paths([tmp_path / "a.ome.tif", tmp_path / "b.npy"], tmp_path / "o", "tif")
    assert [o.name for o in outs] == ["a.tif", "b.tif"]
    with pytest.raises(NSEError, match="a.tif and a.npy would both write a.tif"):
        output_paths([tmp_path / "a.tif", tmp_path / "a.npy"], tmp_path / "o", ".tif")
    with pytest.raises(NSEError, match="would be the file itself"):
        output_paths([tmp_path / "a.tif"], tmp_path, ".tif")


def test_pair_by_stem(folder, tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for i in range(3):
        _touch(gt / f"im{i}.npy")
    images = expand_inputs(str(folder / "im*.tif"))
    pairs = pair_by_stem(images, gt)
    assert [(a.name, b.name) for a, b in pairs] == [(f"im{i}.tif", f"im{i}.npy")
                                                    for i in range(3)]
    (gt / "im2.npy").unlink()
    with pytest.raises(NSEError, match="im2.tif"):
        pair_by_stem(images, gt)


# -- run_batch ----------------------------------------------------------------------------
def test_a_bad_file_is_reported_and_the_rest_go_on(folder, tmp_path):
    task, calls = _fake(fail={"im1.tif"})
    out = tmp_path / "out"
    items = list(run_batch(expand_inputs(folder), out, task))
    assert calls == ["corrupt.tif", "im0.tif", "im1.tif", "im2.tif", "text.npy"]
    status = {i.source.name: i.status for i in items}
    assert status["im1.tif"] == "failed" and status["im2.tif"] == "done"
    bad = next(i for i in items if i.status == "failed")
    assert bad.error == "ValueError: cannot handle im1.tif"  # one line, with the type
    assert not (out / "im1.tif").exists() and (out / "im2.tif").read_text() == "done"
    rows = _rows(out / "summary.csv")
    assert list(rows[0]) == list(batch.COLUMNS)
    assert [r["status"] for r in rows] == [i.status for i in items]
    row = next(r for r in rows if r["file"].endswith("im0.tif"))
    assert row["shape"] == "4x5" and row["instances"] == "7" and float(row["seconds"]) >= 0


def test_existing_outputs_are_skipped_unless_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    sources = expand_inputs(str(folder / "im*.tif"))
    task, calls = _fake()
    list(run_batch(sources, out, task))
    (out / "im1.tif").unlink()
    calls.clear()
    items = list(run_batch(sources, out, task))
    assert calls == ["im1.tif"]
    assert [i.status for i in items] == ["skipped", "done", "skipped"]
    assert (items[0].shape, items[0].instances) == ((4, 5), 7)  # from the earlier summary
    rows = _rows(out / "summary.csv")
    assert rows[0]["status"] == "skipped" and rows[0]["instances"] == "7"  # kept from before
    calls.clear()
    list(run_batch(sources, out, task, overwrite=True))
    assert calls == ["im0.tif", "im1.tif", "im2.tif"]


def test_outputs_inside_the_input_folder_are_never_inputs(folder):
    out = folder / "labels"
    task, _ = _fake()
    list(run_batch(expand_inputs(str(folder / "im*.tif")), out, task))
    again = expand_inputs(str(folder / "**" / "*.tif"))
    assert any(p.parent == out for p in again)
    task2, calls = _fake()
    list(run_batch(again, out, task2, overwrite=True))
    assert all(not c.startswith("labels") for c in calls) and "im0.tif" in calls
    assert len(calls) == len([p for p in again if p.parent != out])


def test_cancel_and_interrupt_stop_the_batch(folder, tmp_path):
    stop = threading.Event()
    task, calls = _fake()
    gen = run_batch(expand_inputs(folder), tmp_path / "out", task, cancel=stop)
    next(gen)
    stop.set()
    with pytest.raises(Cancelled):
        next(gen)
    assert len(calls) == 1

    def interrupt(src, out):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(run_batch(expand_inputs(folder), tmp_path / "out2", interrupt))


def test_out_must_be_a_folder_with_an_existing_parent(folder, tmp_path):
    task, _ = _fake()
    _touch(tmp_path / "file")
    with pytest.raises(NSEError, match="is a file"):
        list(run_batch(expand_inputs(folder), tmp_path / "file", task))
    with pytest.raises(NSEError, match="does not exist"):
        list(run_batch(expand_inputs(folder), tmp_path / "no" / "out", task))


# -- tasks --------------------------------------------------------------------------------
def test_segment_task_equals_segment(folder, tmp_path, tiny):
    model, _ = tiny
    sources = expand_inputs(str(folder / "im*.tif"))
    items = list(run_batch(sources, tmp_path / "out", segment_task(model, "correct", 16,
                                                                   device="cpu")))
    assert all(i.status == "done" for i in items)
    for item in items:
        want = segment(model, tifffile.imread(item.source), "correct", 16, device="cpu")
        got = tifffile.imread(item.out)
        np.testing.assert_array_equal(got, want.labels)
        assert item.instances == want.n_instances and item.shape == want.labels.shape


def test_predict_task_writes_each_format(folder, tmp_path, tiny):
    model, _ = tiny
    src = folder / "im0.tif"
    want = Predictor(model, "cpu").run(tifffile.imread(src), "correct", 16)
    for suffix in (".npy", ".zarr"):
        (item,) = run_batch([src], tmp_path / suffix[1:], predict_task(model, "correct", 16,
                                                                       device="cpu"),
                            suffix=suffix)
        np.testing.assert_allclose(np.asarray(read_image(item.out, lazy=False)), want,
                                   atol=1e-6)
        assert item.shape == want.shape


# -- CLI ----------------------------------------------------------------------------------
def test_cli_segment_folder(folder, tmp_path, tiny, capsys):
    _, model_path = tiny
    out = tmp_path / "out"
    argv = ["segment", str(folder), "--model", str(model_path), "--out", str(out),
            "--tile", "16", "--device", "cpu"]
    code = main(argv + ["--json"])
    captured = capsys.readouterr()
    assert code == 1  # two bad files
    data = json.loads(captured.out)
    assert (data["done"], data["failed"], data["skipped"]) == (3, 2, 0)
    assert "corrupt.tif" in captured.err and "text.npy" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["im0.tif", "im1.tif", "im2.tif",
                                                      "summary.csv"]
    rows = _rows(out / "summary.csv")
    assert {r["status"] for r in rows} == {"done", "failed"}
    (folder / "corrupt.tif").unlink()
    (folder / "text.npy").unlink()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0 and "3 skipped" in captured.out


def test_cli_predict_glob_equals_single_image(folder, tmp_path, tiny, capsys):
    _, model_path = tiny
    single = tmp_path / "one.npy"
    assert main(["predict", str(folder / "im0.tif"), "--model", str(model_path),
                 "--out", str(single), "--tile", "16", "--device", "cpu", "--quiet"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(folder / "im*.tif"), "--model", str(model_path), "--out",
                 str(out), "--suffix", ".npy", "--tile", "16", "--device", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(np.load(out / "im0.npy"), np.load(single))
    assert main(["predict", str(folder / "im*.tif"), "--model", str(model_path), "--out",
                 str(tmp_path / "x.npy")]) == 2
    assert "--out is a folder" in capsys.readouterr().err


def test_cli_evaluate_folder_goes_on_past_a_bad_file(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for i in range(3):
        labels = nuclei((40, 40), n=3, seed=i)[1].astype(np.uint32)
        np.save(gt / f"im{i}.npy", labels)
        np.save(pred / f"im{i}.npy", labels)
    np.save(pred / "im1.npy", np.zeros((7, 7), np.uint32))  # wrong shape
    code = main(["evaluate", str(pred), "--gt", str(gt), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    data = json.loads(captured.out)
    assert [f["pred"] for f in data["failed"]] == [str(pred / "im1.npy")]
    assert "shape" in data["failed"][0]["error"] and "im1.npy" in captured.err
    assert [r["pred"] for r in data["images"]] == [str(pred / "im0.npy"),
                                                   str(pred / "im2.npy")]
    assert all(r["ap50"] == 1.0 for r in data["images"])
