import numpy as np
import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.geometry import Roi
from napari_shift_equivariance.io import atomic_path, read_box, read_image, write_array


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".zarr"])
def test_roundtrip(tmp_path, suffix):
    data = np.arange(60, dtype=np.uint32).reshape(6, 10)
    path = write_array(tmp_path / f"a{suffix}", data)
    np.testing.assert_array_equal(np.asarray(read_image(path)[...]), data)
    with pytest.raises(NSEError, match="exists"):
        write_array(path, data)
    write_array(path, data + 1, overwrite=True)
    np.testing.assert_array_equal(np.asarray(read_image(path)[...]), data + 1)


def test_zarr_group_with_one_array(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=(4, 4), dtype="f4")[...] = 1
    assert read_image(tmp_path / "g.zarr").shape == (4, 4)
    g.create_array("other", shape=(2, 2), dtype="f4")
    with pytest.raises(NSEError, match="2 arrays"):
        read_image(tmp_path / "g.zarr")


def test_bad_files(tmp_path):
    with pytest.raises(NSEError, match="does not exist"):
        read_image(tmp_path / "none.tif")
    with pytest.raises(NSEError, match="unsupported"):
        read_image(tmp_path / "x.png")
    (tmp_path / "bad.tif").write_bytes(b"nope")
    with pytest.raises(NSEError, match="cannot read"):
        read_image(tmp_path / "bad.tif")


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert not target.exists() and not tmp.exists()
    # an existing file survives a failed overwrite
    target.write_bytes(b"keep")
    with pytest.raises(RuntimeError), atomic_path(target, overwrite=True) as tmp:
        raise RuntimeError("boom")
    assert target.read_bytes() == b"keep"


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "edge", "zero"])
def test_read_box_matches_numpy_pad(mode):
    img = np.random.default_rng(0).random((7, 9))
    pad = 12  # more than the image: repeated reflection
    np_mode = {"zero": "constant"}.get(mode, mode)
    ref = np.pad(img, pad, mode=np_mode)
    roi = Roi((-pad + 3, -pad), (20, 30))
    block, inside = read_box(img, roi, mode)
    if inside is not None:
        block = block * inside
    np.testing.assert_allclose(block, ref[3:23, 0:30])
