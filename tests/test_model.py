import pytest
import torch

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.model import (
    ModelConfig,
    UNet,
    build_model,
    load_model,
    resolve_device,
    save_model,
)


@pytest.mark.parametrize("ndim, factor", [(2, 2), (3, (1, 2, 2)), (2, 3)])
@pytest.mark.parametrize("upsampling", ["learnt", "nearest"])
def test_output_shape_follows_geometry(ndim, factor, upsampling):
    cfg = ModelConfig(ndim=ndim, depth=2, factor=factor, upsampling=upsampling,
                      base_channels=2, embedding_dim=5)
    model = UNet(cfg)
    g = cfg.geometry
    size = g.input_size(g.grid * 2)
    y = model(torch.zeros(2, 1, *size))
    assert y.shape == (2, 6, *g.output_size(size))


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    cfg = ModelConfig(depth=2, base_channels=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(cfg, seed=7)
    after = torch.rand(1)
    b = build_model(cfg, seed=7)
    assert before == after
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_save_load_roundtrip(tmp_path):
    cfg = ModelConfig(ndim=3, depth=1, factor=(1, 2, 2), base_channels=2, window=(8, 16, 16))
    model = build_model(cfg, seed=1)
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.config == cfg
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(NSEError, match="exists"):
        save_model(model, path)
    assert not (tmp_path / "m.pt.partial").exists()


def test_bad_model_files(tmp_path):
    with pytest.raises(NSEError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(NSEError, match="not a readable model file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(NSEError, match="not a napari-shift-equivariance model"):
        load_model(tmp_path / "foreign.pt")
    good = save_model(build_model(ModelConfig(depth=1, base_channels=2)), tmp_path / "g.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(NSEError, match="not a readable"):
        load_model(tmp_path / "trunc.pt")
    payload = torch.load(good, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(NSEError, match="newer version"):
        load_model(tmp_path / "future.pt")


@pytest.mark.parametrize("kwargs", [dict(upsampling="bilinear"), dict(embedding_dim=0),
                                    dict(depth=0), dict(ndim=2, factor=(2, 2, 2))])
def test_bad_configs(kwargs):
    with pytest.raises(NSEError):
        ModelConfig(**kwargs)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    for bad in ["tpu", "cuda:x", "cuda:99"]:
        with pytest.raises(NSEError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(NSEError, match="not available"):
            resolve_device("cuda:0")
    if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        with pytest.raises(NSEError, match="not available"):
            resolve_device("mps")
