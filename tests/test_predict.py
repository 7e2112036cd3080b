"""Cor. 4 as tests: correct tile-and-stitch equals the whole-image pass; naive does not."""

import threading

import numpy as np
import pytest
import torch

from napari_shift_equivariance.errors import Cancelled, NSEError
from napari_shift_equivariance.model import ModelConfig, build_model
from napari_shift_equivariance.predict import Predictor, axis_layout, predict


def _model(ndim, depth, factor, upsampling="learnt", **kw):
    cfg = ModelConfig(ndim=ndim, depth=depth, factor=factor, upsampling=upsampling,
                      base_channels=kw.pop("base_channels", 4), embedding_dim=3, **kw)
    return build_model(cfg, seed=0)


def _image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


CASES = [
    # ndim, depth, factor, upsampling, image shape (multiples of nothing), tile sizes
    (2, 1, 2, "learnt", (37, 53), [6, 10]),
    (2, 2, 2, "nearest", (61, 45), [4, 12, 20]),
    (2, 3, 2, "learnt", (77, 91), [8, 24, 40]),
    (2, 2, 3, "nearest", (50, 61), [9, 18, 27]),
    (2, 3, 2, "nearest", (77, 91), [16]),
    (3, 1, 2, "nearest", (13, 17, 19), [4, 6]),
    (3, 2, 2, "learnt", (19, 23, 21), [8, 12]),
    (3, 2, (1, 2, 2), "learnt", (7, 23, 21), [(3, 4, 4), (2, 8, 12)]),
]


@pytest.mark.parametrize("ndim, depth, factor, up, shape, tiles", CASES)
def test_correct_equals_whole(ndim, depth, factor, up, shape, tiles):
    model = _model(ndim, depth, factor, up)
    img = _image(shape)
    whole = predict(model, img, "whole", device="cpu")
    assert whole.shape == (4, *shape)
    for tile in tiles:
        tiled = predict(model, img, "correct", tile, device="cpu", batch_size=8)
        assert _rel(tiled, whole) <= 1e-5, tile


@pytest.mark.parametrize("up", ["learnt", "nearest"])
@pytest.mark.parametrize("ndim, depth, shape, tile", [(2, 3, (77, 91), 12), (2, 2, (50, 45), 6),
                                                      (3, 2, (19, 23, 21), 10)])
def test_naive_seams(up, ndim, depth, shape, tile):
    model = _model(ndim, depth, 2, up)
    img = _image(shape, 1)
    whole = predict(model, img, "whole", device="cpu")
    naive = predict(model, img, "naive", tile, device="cpu")
    plan = Predictor(model, "cpu").plan(shape, "naive", tile)
    scale = np.abs(whole).max()
    on, off = [], []
    for t in plan.tiles:
        sl = (slice(None), *t.output_roi.to_slices())
        (on if plan.on_grid(t) else off).append(np.abs(naive[sl] - whole[sl]).max() / scale)
    assert on and off
    assert max(on) <= 1e-5  # tiles whose origin is on the f^l grid are exact
    assert min(off) > 1e-3  # every off-grid tile differs from the whole-image pass


@pytest.mark.parametrize("ndim, depth, factor", [(2, 2, 2), (2, 1, 3), (3, 1, 2)])
def test_periodic_shift_equivariance(ndim, depth, factor):
    model = _model(ndim, depth, factor, normalization={"kind": "none"})
    g = model.config.geometry
    size = g.input_size(3 * g.grid[0])
    img = torch.from_numpy(_image(tuple(size + g.grid)))[None, None]
    with torch.inference_mode():
        base = model(img[(..., *[slice(0, s) for s in size])])
        grid = g.grid
        shifted = model(img[(..., *[slice(gg, gg + s) for gg, s in zip(grid, size)])])
        off_by_one = model(img[(..., *[slice(1, 1 + s) for s in size])])
    # shifting the input by f^l shifts the output by f^l ...
    inner = (..., *[slice(gg, None) for gg in grid])
    inner_s = (..., *[slice(0, -gg) for gg in grid])
    assert torch.allclose(base[inner], shifted[inner_s], atol=1e-5)
    # ... but a shift by 1 is not equivariance: the output functions change
    one = (..., *[slice(1, None)] * ndim)
    one_s = (..., *[slice(0, -1)] * ndim)
    assert not torch.allclose(base[one], off_by_one[one_s], atol=1e-3)


def test_plane_by_plane_and_channels():
    model = _model(2, 2, 2)
    stack = _image((3, 30, 34))
    out = predict(model, stack, "correct", 8, device="cpu")
    assert out.shape == (4, 3, 30, 34)
    # each plane equals predicting that plane on its own with the stack's normalisation
    cfg = ModelConfig(ndim=2, depth=2, factor=2, base_channels=4, embedding_dim=3,
                      in_channels=2)
    m2 = build_model(cfg, seed=0)
    img = _image((2, 30, 34))
    a = predict(m2, img, "whole", device="cpu")
    b = predict(m2, np.moveaxis(img, 0, -1), "whole", device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_foreground_channel_is_probability():
    out = predict(_model(2, 2, 2), _image((30, 30)), "whole", device="cpu")
    assert out[-1].min() >= 0 and out[-1].max() <= 1


def test_lazy_input_reads_and_zarr_output(tmp_path):
    zarr = pytest.importorskip("zarr")
    model = _model(2, 2, 2)
    img = _image((45, 50))
    src = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=img.shape,
                          chunks=(16, 16), dtype="f4")
    src[...] = img
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=(4, 45, 50),
                          chunks=(4, 16, 16), dtype="f4")
    predict(model, src, "correct", 16, device="cpu", out=out)
    whole = predict(model, img, "whole", device="cpu")
    assert _rel(out[...], whole) <= 1e-5


def test_progress_and_cancel():
    model = _model(2, 2, 2)
    img = _image((40, 40))
    calls = []
    predict(model, img, "correct", 8, device="cpu", batch_size=2,
            progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 25) and calls[-1] == (25, 25)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 4:
            stop.set()

    with pytest.raises(Cancelled):
        predict(model, img, "correct", 8, device="cpu", batch_size=2, progress=progress,
                cancel=stop)
    assert max(seen) < 25


@pytest.mark.parametrize(
    "image, match",
    [(np.full((30, 30), np.nan, np.float32), "NaN"),
     (np.zeros((0, 30), np.float32), "empty"),
     (np.array([["a"] * 30] * 30), "dtype"),
     (np.zeros((2, 2, 2, 30, 30), np.float32), "axes"),
     (np.zeros((30,), np.float32), "fewer")],
)
def test_bad_images(image, match):
    with pytest.raises(NSEError, match=match):
        predict(_model(2, 2, 2), image, "correct", 8, device="cpu")


def test_axis_layout():
    lay = axis_layout((5, 2, 30, 40), 2, in_channels=2)
    assert lay.leading == (0,) and lay.channel == 1 and lay.spatial == (2, 3)
    with pytest.raises(NSEError):
        axis_layout((5, 30, 40), 2, in_channels=2)


@pytest.fixture
def strict_fp32():
    """No TF32 (torch's default for cuDNN convolutions on recent GPUs rounds to ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("ndim, depth, factor, up, shape, tiles", [CASES[2], CASES[6]])
def test_cuda_correct_equals_whole(strict_fp32, ndim, depth, factor, up, shape, tiles):
    model = _model(ndim, depth, factor, up)
    img = _image(shape)
    whole = predict(model, img, "whole", device="cuda")
    for tile in tiles:
        assert _rel(predict(model, img, "correct", tile, device="cuda"), whole) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(strict_fp32):
    model = _model(2, 3, 2)
    img = _image((77, 91))
    cpu = predict(model, img, "correct", 16, device="cpu")
    gpu = predict(model, img, "correct", 16, device="cuda")
    assert _rel(gpu, cpu) <= 1e-4
    bf16 = predict(model, img, "correct", 16, device="cuda", amp="bf16")
    assert _rel(bf16, cpu) <= 5e-2


# -- out of memory: halve the batch, then the tile (simulated on the CPU) -------------------
def _oom_when(model, too_big):
    """Make ``model.forward`` raise CUDA's out-of-memory error when ``too_big(x)``."""
    real = model.forward
    calls = {"oom": 0, "ok": 0}

    def forward(x):
        if too_big(x):
            calls["oom"] += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        calls["ok"] += 1
        return real(x)

    model.forward = forward
    return calls


def test_out_of_memory_halves_the_batch(caplog):
    img = _image((77, 91))
    model = _model(2, 3, 2)
    whole = predict(model, img, "whole", device="cpu")
    pred = Predictor(model, "cpu", batch_size=8)
    calls = _oom_when(pred.model, lambda x: x.shape[0] > 2)
    with caplog.at_level("WARNING", logger="napari_shift_equivariance.predict"):
        out = pred.run(img, "correct", 16)
    assert _rel(out, whole) <= 1e-5
    assert pred.info["batch_size"] == 2 and pred.info["out_of_memory"] == 2
    assert pred.info["tile"] == [16, 16]  # the tile is kept while the batch can shrink
    assert calls["oom"] == 2
    assert [n.split(": ")[1] for n in pred.info["notes"]] == ["retrying with batch 4",
                                                               "retrying with batch 2"]
    assert "out of memory" in caplog.text


def test_out_of_memory_halves_the_tile_with_the_same_result():
    img = _image((77, 91))
    model = _model(2, 3, 2)
    whole = predict(model, img, "whole", device="cpu")
    pred = Predictor(model, "cpu", batch_size=2)
    # a network input above that of a 16-pixel output tile does not fit
    fits = pred.plan(img.shape, "correct", 16).net_input[-1]
    _oom_when(pred.model, lambda x: x.shape[-1] > fits)
    out = pred.run(img, "correct", 40)
    assert _rel(out, whole) <= 1e-5
    assert pred.info["tile"] == [16, 16] and pred.info["batch_size"] == 1
    assert "retrying with correct tiles (16, 16)" in pred.info["notes"][-1]
    # the whole-image pass turns into correct tiles: equal by Cor. 4
    pred2 = Predictor(model, "cpu")
    fits = pred2.plan(img.shape, "correct", 40).net_input[-1]
    _oom_when(pred2.model, lambda x: x.shape[-1] > fits)
    out2 = pred2.run(img, "whole")
    assert _rel(out2, whole) <= 1e-5
    assert "the whole-image pass" in pred2.info["notes"][0]
    assert pred2.info["mode"] == "whole" and pred2.info["n_tiles"] > 1


def test_out_of_memory_that_cannot_be_avoided():
    img = _image((40, 40))
    model = _model(2, 2, 2)
    pred = Predictor(model, "cpu", batch_size=4)
    _oom_when(pred.model, lambda x: True)
    with pytest.raises(NSEError, match="even with one tile of the grid"):
        pred.run(img, "correct", 16)
    # a smaller naive tile would change the result: say so instead of retrying
    with pytest.raises(NSEError, match="naive"):
        pred.run(img, "naive", 12)
    # other runtime errors are not taken for memory
    pred.model.forward = lambda x: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        pred.run(img, "correct", 16)


def test_default_tile_follows_the_device():
    model = _model(2, 2, 2)
    img = _image((40, 40))
    pred = Predictor(model, "cpu")
    pred.run(img)
    assert pred.info["tile"] == [40, 40]  # balanced: one tile covers a small image
    assert pred.plan((3000, 3000)).tile_shape == (500, 500)  # 6 x 500 px, not 5 x 512 + 440


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_out_of_memory_falls_back_to_smaller_tiles():
    """A real CUDA out-of-memory error: a memory cap the whole-image pass does not fit."""
    model = _model(2, 3, 2, base_channels=16)
    img = _image((2048, 2048))
    reference = predict(model, img, "correct", 256, device="cuda")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 600 * 2**20 / total))
    try:
        pred = Predictor(model, "cuda")
        out = pred.run(img, "whole")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert pred.info["out_of_memory"] >= 1 and pred.info["notes"]
    assert _rel(out, reference) <= 1e-2  # TF32 convolutions: not bit-equal across sizes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_default_tile_is_large():
    model = _model(2, 4, 2)
    pred = Predictor(model, "cuda")
    assert pred.plan((4096, 4096)).tile_shape == (2048, 2048)


def test_segment_reports_an_out_of_memory_retry():
    from napari_shift_equivariance.segment import segment

    img = _image((40, 44))
    model = _model(2, 2, 2)
    reference = segment(model, img, "correct", 16, device="cpu", min_size=0)
    fits = Predictor(model, "cpu").plan(img.shape, "correct", 8).net_input[-1]
    _oom_when(model, lambda x: x.shape[-1] > fits)
    result = segment(model, img, "correct", 16, device="cpu", min_size=0)
    assert any("retrying with correct tiles (8, 8)" in n for n in result.info["notes"])
    np.testing.assert_array_equal(result.labels, reference.labels)
