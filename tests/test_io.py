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
    assert read_image(tmp_path / "g.zarr" / "other").shape == (2, 2)  # as the error suggests


def test_bad_files(tmp_path):
    with pytest.raises(NSEError, match="does not exist"):
        read_image(tmp_path / "none.tif")
    with pytest.raises(NSEError, match="unsupported"):
        read_image(tmp_path / "x.png")
    (tmp_path / "bad.tif").write_bytes(b"nope")
    with pytest.raises(NSEError, match="bad.tif is corrupt or not a TIFF"):
        read_image(tmp_path / "bad.tif")


def test_corrupt_tif_says_so(tmp_path, caplog):
    import tifffile

    # a TIFF header with no image in it: tifffile itself returns shape (0,)
    (tmp_path / "empty.tif").write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(NSEError, match="empty.tif is not a readable TIFF.*corrupt"):
        read_image(tmp_path / "empty.tif")
    (tmp_path / "empty_be.tif").write_bytes(b"MM\x00*" + bytes(100))  # big-endian
    with pytest.raises(NSEError, match="empty_be.tif is not a readable TIFF"):
        read_image(tmp_path / "empty_be.tif")
    tifffile.imwrite(tmp_path / "good.tif", np.zeros((64, 64), np.uint16))
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(NSEError, match="cut.tif is corrupt"):
        read_image(tmp_path / "cut.tif")
    assert not caplog.records  # one line from us, no tifffile warning on top


@pytest.mark.parametrize("values, what", [(["a", "b"], "text"), ([b"a", b"b"], "bytes")])
def test_non_numeric_npy_says_what_it_holds(tmp_path, values, what):
    np.save(tmp_path / "s.npy", np.array([values, values]))
    with pytest.raises(NSEError, match=f"s.npy holds {what}"):
        read_image(tmp_path / "s.npy")
    np.save(tmp_path / "o.npy", np.array([{}, 1], dtype=object), allow_pickle=True)
    with pytest.raises(NSEError, match="o.npy holds Python objects"):
        read_image(tmp_path / "o.npy")


def test_outputs_only_in_writable_formats(tmp_path):
    with pytest.raises(NSEError, match="unsupported output type .czi"):
        write_array(tmp_path / "x.czi", np.zeros((2, 2)))


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


def test_an_uncompressed_tif_is_memory_mapped_a_compressed_one_read(tmp_path):
    # blockwise workers then read one box per tile from an uncompressed tif, not the file
    import tifffile

    a = np.random.default_rng(0).random((3, 40, 50)).astype(np.float32)
    tifffile.imwrite(tmp_path / "u.tif", a)
    tifffile.imwrite(tmp_path / "c.tif", a, compression="zlib")
    lazy = read_image(tmp_path / "u.tif")
    assert isinstance(lazy, np.memmap) and np.array_equal(lazy, a)
    assert not isinstance(read_image(tmp_path / "u.tif", lazy=False), np.memmap)
    whole = read_image(tmp_path / "c.tif")
    assert not isinstance(whole, np.memmap) and np.array_equal(whole, a)
