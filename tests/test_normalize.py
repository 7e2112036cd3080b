import numpy as np
import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.normalize import (
    apply,
    normalization_params,
    percentile_normalize,
    percentiles,
)


def test_percentiles_small_and_subsampled():
    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 2.0, size=(300, 400))
    lo, hi = percentiles(image, 1, 99)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(image, [1, 99])))
    lo2, hi2 = percentiles(image, 1, 99, max_samples=5000, rng=np.random.default_rng(1))
    assert lo2 == pytest.approx(lo, abs=0.3) and hi2 == pytest.approx(hi, abs=0.3)
    with pytest.raises(NSEError):
        percentiles(image, 99, 1)


def test_percentiles_reads_only_a_subsample_of_lazy_arrays():
    class Lazy:
        shape = (1000, 1000, 100)
        dtype = np.dtype(np.float32)

        def __init__(self):
            self.read = 0

        def __getitem__(self, index):
            # value = first index modulo 10; only the requested (strided) pixels are made
            z, y, x = (np.arange(s)[sl] for s, sl in zip(self.shape, index))
            out = np.broadcast_to((z % 10)[:, None, None], (z.size, y.size, x.size))
            self.read += out.size
            return out.astype(np.float32)

    lazy = Lazy()
    lo, hi = percentiles(lazy, 0, 100, max_samples=100_000)
    assert 0 < lazy.read <= 100_000
    assert lo == 0 and hi == 9


def test_percentile_normalize():
    image = np.arange(1001, dtype=np.uint16).reshape(7, 11, 13)
    out = percentile_normalize(image, 10, 90)
    assert out.dtype == np.float32
    lo, hi = np.percentile(image, [10, 90])
    assert out.flat[0] == pytest.approx(-lo / (hi - lo), rel=1e-5)
    assert np.percentile(out, 10) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(out, 90) == pytest.approx(1.0, abs=1e-5)


def test_normalization_params_kinds():
    img = np.linspace(0, 10, 1000, dtype=np.float32).reshape(10, 100)
    offset, scale = normalization_params(img, {"kind": "percentile", "low": 0, "high": 100})
    assert (offset, scale) == (0.0, 10.0)
    assert normalization_params(img, {"kind": "none"}) == (0.0, 1.0)
    assert normalization_params(img, {"kind": "fixed", "offset": 2, "scale": 4}) == (2.0, 4.0)
    np.testing.assert_allclose(apply(img, 0.0, 10.0).max(), 1.0)
    with pytest.raises(NSEError):
        normalization_params(img, {"kind": "zscore"})
