import numpy as np
import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.omezarr import (
    create_omezarr_labels,
    finish_omezarr_labels,
    is_omezarr,
    list_labels,
    omezarr_labels_complete,
    omezarr_levels,
    read_omezarr,
    write_omezarr_labels,
)


def make_image(path, data, axes, version="0.5", scale=None):
    """An OME-Zarr image written by the ome-zarr package itself (a 2× pyramid)."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    kwargs = {} if scale is None else {"scale": dict(zip(axes, scale))}
    write_image(data, group, axes=axes, fmt=fmt, scale_factors=(2, 4), **kwargs)
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_levels_axes_scale(tmp_path, version):
    data = np.random.default_rng(0).random((3, 64, 48)).astype(np.float32)
    path = make_image(tmp_path / "img.zarr", data, "zyx", version, scale=(2.0, 0.25, 0.25))
    assert is_omezarr(path)
    arr, meta = read_omezarr(path)
    assert not isinstance(arr, np.ndarray)  # lazy zarr array
    np.testing.assert_array_equal(arr[...], data)
    assert meta["axes"] == ["z", "y", "x"]
    assert meta["scale"] == [2.0, 0.25, 0.25]
    assert meta["n_levels"] == 3 and meta["version"] == version
    arr1, meta1 = read_omezarr(path, level=1)
    assert arr1.shape == (3, 32, 24) and meta1["scale"] == [2.0, 0.5, 0.5]
    levels, _ = omezarr_levels(path)
    assert [a.shape for a in levels] == meta["shapes"]
    with pytest.raises(NSEError, match="3 resolution level"):
        read_omezarr(path, level=3)


def test_not_omezarr(tmp_path):
    import zarr

    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(4, 4), dtype="f4")
    assert not is_omezarr(tmp_path / "plain.zarr")
    assert not is_omezarr(tmp_path / "missing.zarr")
    with pytest.raises(NSEError, match="not"):
        read_omezarr(tmp_path / "plain.zarr")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_labels_into_image_chunkwise(tmp_path, version):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    data = np.zeros((2, 64, 64), np.uint16)
    path = make_image(tmp_path / "img.zarr", data, "zyx", version, scale=(3.0, 0.5, 0.5))
    labels = np.random.default_rng(1).integers(0, 9, (2, 64, 64)).astype(np.uint32)
    arr = create_omezarr_labels(path, labels.shape, (1, 32, 32), name="cells")
    assert arr.chunks == (1, 32, 32) and arr.dtype == np.uint32
    # not listed until finished: nothing incomplete looks complete
    assert not omezarr_labels_complete(path, "cells") and list_labels(path) == []
    for z in range(2):  # chunk by chunk, as a blockwise writer does
        for y in (0, 32):
            for x in (0, 32):
                arr[z, y:y + 32, x:x + 32] = labels[z, y:y + 32, x:x + 32]
    finish_omezarr_labels(path, "cells", levels=3)
    assert omezarr_labels_complete(path, "cells") and list_labels(path) == ["cells"]
    out, meta = read_omezarr(path / "labels" / "cells")
    np.testing.assert_array_equal(out[...], labels)
    assert meta["is_labels"] and meta["axes"] == ["z", "y", "x"]
    assert meta["scale"] == [3.0, 0.5, 0.5]  # taken from the image
    low, meta1 = read_omezarr(path / "labels" / "cells", level=1)
    np.testing.assert_array_equal(low[...], labels[:, ::2, ::2])
    assert meta1["scale"] == [3.0, 1.0, 1.0]
    # the reference OME-Zarr reader finds them as labels of the image
    nodes = list(Reader(parse_url(str(path)))())
    found = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert [n.metadata["name"] for n in found] == ["cells"]
    assert found[0].data[0].shape == labels.shape
    # never overwritten silently; overwrite replaces and keeps one listing
    with pytest.raises(NSEError, match="already has labels 'cells'"):
        create_omezarr_labels(path, labels.shape, name="cells")
    write_omezarr_labels(path, labels + 1, name="cells", overwrite=True)
    write_omezarr_labels(path, labels, name="other")
    assert list_labels(path) == ["cells", "other"]
    np.testing.assert_array_equal(read_omezarr(path / "labels" / "cells")[0][...], labels + 1)
    assert read_omezarr(path)[1]["labels"] == ["cells", "other"]


def test_labels_drop_the_image_channel_axis(tmp_path):
    path = make_image(tmp_path / "img.zarr", np.zeros((2, 32, 32), np.float32), "cyx")
    arr = create_omezarr_labels(path, (32, 32))
    finish_omezarr_labels(path)
    assert read_omezarr(path / "labels" / "labels")[1]["axes"] == ["y", "x"]
    assert arr.shape == (32, 32)
    with pytest.raises(NSEError, match="axes"):
        create_omezarr_labels(path, (4, 32, 32, 2, 2), name="bad")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_new_labels_store(tmp_path, version):
    labels = np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) % 7
    path = tmp_path / "labels.zarr"
    write_omezarr_labels(path, labels, scale=(0.2, 0.2), units={"y": "micrometer",
                                                                "x": "micrometer"},
                         version=version, levels=2)
    assert not (tmp_path / "labels.zarr.partial").exists()
    arr, meta = read_omezarr(path)
    np.testing.assert_array_equal(arr[...], labels)
    assert meta["is_labels"] and meta["version"] == version and meta["n_levels"] == 2
    assert meta["scale"] == [0.2, 0.2] and meta["units"] == {"y": "micrometer", "x": "micrometer"}
    assert omezarr_labels_complete(path)
    with pytest.raises(NSEError, match="exists"):
        write_omezarr_labels(path, labels)
    with pytest.raises(NSEError, match="exists"):
        create_omezarr_labels(path, labels.shape)
    with pytest.raises(NSEError, match="integers"):
        write_omezarr_labels(tmp_path / "f.zarr", labels.astype(float))
    with pytest.raises(NSEError, match="positive"):
        create_omezarr_labels(tmp_path / "s.zarr", (4, 4), scale=(1.0, -1.0))


def test_create_new_store_incomplete_until_finished(tmp_path):
    path = tmp_path / "out.zarr"
    arr = create_omezarr_labels(path, (3, 40, 40), (1, 20, 20), axes="zyx", scale=(2, 1, 1))
    arr[0, :20, :20] = 4
    assert not omezarr_labels_complete(path)
    finish_omezarr_labels(path)
    assert omezarr_labels_complete(path)
    assert read_omezarr(path)[0][0, 0, 0] == 4
