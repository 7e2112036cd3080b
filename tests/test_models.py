"""The bundled models (``models/default_2d.pt``, ``models/default_3d.pt``)."""

import numpy as np
import pytest

from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.model import default_model_path, load_model
from napari_shift_equivariance.segment import segment


@pytest.mark.parametrize("spec, ndim", [("default", 2), ("default2d", 2), ("default3d", 3)])
def test_bundled_models_load_with_their_calibration(spec, ndim):
    if not default_model_path(ndim).exists():
        pytest.skip("no bundled model")
    model = load_model(spec)
    assert model.config.ndim == ndim
    extra = model.config.extra
    for key in ("bandwidth", "fg_threshold", "min_size"):
        assert key in extra, key
    assert 0 < extra["fg_threshold"] < 1 and extra["bandwidth"] > 0
    assert default_model_path(ndim).stat().st_size < 2_000_000  # small enough to ship


@pytest.mark.skipif(not default_model_path(3).exists(), reason="no bundled 3D model")
def test_default3d_segments_a_stack_and_tiles_exactly(one_torch_thread):
    image, _ = nuclei((20, 40, 40), seed=1, style="sparse", anisotropy=2.0)
    model = load_model("default3d")
    whole = segment(model, image, "whole", device="cpu")
    tiled = segment(model, image, "correct", 12, device="cpu")
    assert whole.labels.shape == image.shape and whole.info["fg_threshold"] == \
        model.config.extra["fg_threshold"]
    assert len(tiled.plan) > 1 and whole.n_instances >= 2
    np.testing.assert_array_equal(whole.labels, tiled.labels)
