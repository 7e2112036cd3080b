"""Formats and metadata. OME-TIFF is tested for real (written by tifffile with OME metadata);
czi, nd2 and lif files cannot be made here (their writers are proprietary), so for them only
the missing-reader error is tested."""

import sys

import numpy as np
import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.formats import (
    EXTRA,
    LazyImage,
    format_of,
    image_metadata,
    open_image,
    spatial_scale,
)
from napari_shift_equivariance.io import read_image, write_labels


@pytest.fixture
def ome_tiff(tmp_path):
    """Two scenes (series), CZYX, physical sizes and channel names, as microscopes write."""
    pytest.importorskip("bioio_ome_tiff")
    import tifffile

    rng = np.random.default_rng(0)
    data = [rng.integers(0, 4000, (2, 3, 40, 56)).astype(np.uint16),
            rng.integers(0, 4000, (2, 3, 20, 24)).astype(np.uint16)]
    path = tmp_path / "cells.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for i, d in enumerate(data):
            tw.write(d, metadata={"axes": "CZYX", "Name": f"pos{i}",
                                  "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325,
                                  "PhysicalSizeZ": 2.0, "Channel": {"Name": ["dapi", "gfp"]}})
    return path, data


def test_ome_tiff_axes_scale_channels(ome_tiff):
    path, data = ome_tiff
    assert format_of(path) == "ome-tiff"
    arr, meta = open_image(path)
    assert isinstance(arr, LazyImage) and arr.shape == data[0].shape
    np.testing.assert_array_equal(arr[1, 2], data[0][1, 2])  # indexing reads numpy
    assert meta["axes"] == ["c", "z", "y", "x"]
    assert meta["scale"] == pytest.approx([1.0, 2.0, 0.325, 0.325])
    assert meta["units"] == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert meta["channel_names"] == ["dapi", "gfp"] and len(meta["scenes"]) == 2
    np.testing.assert_array_equal(read_image(path, channel="gfp")[...], data[0][1])
    np.testing.assert_array_equal(read_image(path, channel=0, lazy=False), data[0][0])
    assert image_metadata(path, channel=1)["axes"] == ["z", "y", "x"]
    assert spatial_scale(meta, 2) == pytest.approx((0.325, 0.325))


def test_ome_tiff_reads_without_the_readers_own_warnings(ome_tiff):
    # bioio-ome-tiff warns about its ome-types call on every file: not the user's business
    import warnings

    path, data = ome_tiff
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arr, meta = open_image(path, lazy=False)
    np.testing.assert_array_equal(arr, data[0])
    assert meta["channel_names"] == ["dapi", "gfp"]


def test_ome_tiff_scene_choice(ome_tiff):
    path, data = ome_tiff
    second = read_image(path, scene=1, channel="dapi", lazy=False)
    np.testing.assert_array_equal(second, data[1][0])
    name = image_metadata(path)["scenes"][1]
    assert read_image(path, scene=name).shape == data[1].shape
    with pytest.raises(NSEError, match="2 scene"):
        read_image(path, scene=2)
    with pytest.raises(NSEError, match="no scene 'nope'"):
        read_image(path, scene="nope")
    with pytest.raises(NSEError, match="no channel 'rfp'.*dapi, gfp"):
        read_image(path, channel="rfp")


def test_plain_tif_keeps_tifffile_and_imagej_scale(tmp_path):
    import tifffile

    data = np.zeros((4, 30, 20), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    assert format_of(tmp_path / "ij.tif") == "tif"
    arr, meta = open_image(tmp_path / "ij.tif")
    assert isinstance(arr, np.ndarray) and arr.shape == data.shape
    assert meta["axes"] == ["z", "y", "x"] and meta["scale"] == pytest.approx([3.0, 0.5, 0.5])
    assert meta["units"]["x"] == "micrometer"
    assert image_metadata(tmp_path / "ij.tif") == meta  # without reading the pixels
    with pytest.raises(NSEError, match="no scenes"):
        read_image(tmp_path / "ij.tif", scene=0)
    np.save(tmp_path / "a.npy", data)
    assert image_metadata(tmp_path / "a.npy")["scale"] == [1.0, 1.0, 1.0]
    with pytest.raises(NSEError, match="no known channel axis"):
        read_image(tmp_path / "a.npy", channel=0)


def test_labels_carry_the_physical_pixel_size(ome_tiff, tmp_path):
    path, data = ome_tiff
    meta = image_metadata(path)
    labels = np.arange(3 * 40 * 56, dtype=np.uint32).reshape(3, 40, 56) % 5
    out = write_labels(tmp_path / "labels.tif", labels, metadata=meta)  # channel axis dropped
    back, back_meta = open_image(out)
    np.testing.assert_array_equal(back[...], labels)
    assert back_meta["axes"] == ["z", "y", "x"]
    assert back_meta["scale"] == pytest.approx([2.0, 0.325, 0.325])
    with pytest.raises(NSEError, match="exists"):
        write_labels(out, labels, metadata=meta)
    ome = write_labels(tmp_path / "labels.ome.zarr", labels, metadata=meta)
    arr, zmeta = open_image(ome)
    np.testing.assert_array_equal(arr[...], labels)
    assert zmeta["format"] == "ome-zarr" and zmeta["scale"] == pytest.approx([2.0, 0.325, 0.325])
    assert zmeta["units"]["z"] == "micrometer"


def test_labels_into_an_omezarr_image(tmp_path):
    import zarr
    from ome_zarr.writer import write_image

    from napari_shift_equivariance.omezarr import list_labels

    image = tmp_path / "raw.zarr"
    write_image(np.zeros((30, 30), np.float32), zarr.open_group(str(image), mode="w"),
                axes="yx", scale={"y": 0.5, "x": 0.5}, scale_factors=())
    labels = np.ones((30, 30), np.uint32)
    write_labels(image / "labels" / "nuclei", labels, metadata=image_metadata(image))
    assert list_labels(image) == ["nuclei"]
    arr, meta = open_image(image / "labels" / "nuclei")
    np.testing.assert_array_equal(arr[...], labels)
    assert meta["scale"] == [0.5, 0.5]


def test_omezarr_channel_and_level(tmp_path):
    import zarr
    from ome_zarr.writer import write_image

    data = np.random.default_rng(2).random((2, 64, 64)).astype(np.float32)
    path = tmp_path / "c.zarr"
    write_image(data, zarr.open_group(str(path), mode="w"), axes="cyx", scale_factors=(2,))
    np.testing.assert_array_equal(read_image(path, channel=1)[...], data[1])
    assert read_image(path, level=1).shape == (2, 32, 32)
    with pytest.raises(NSEError, match="level 2 does not exist"):
        read_image(path, level=2)
    with pytest.raises(NSEError, match="one resolution level"):
        read_image(tmp_path / "c.zarr" / "s0", level=1)


@pytest.mark.parametrize("suffix, dist", [(".czi", "bioio-czi"), (".nd2", "bioio-nd2"),
                                          (".lif", "bioio-lif")])
def test_missing_reader_names_the_extra(tmp_path, monkeypatch, suffix, dist):
    module = dist.replace("-", "_")
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed, whatever is
    path = tmp_path / f"scan{suffix}"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(NSEError) as err:
        read_image(path)
    message = str(err.value)
    assert dist in message and EXTRA in message and "\n" not in message


def test_ome_tiff_without_its_reader(ome_tiff, monkeypatch):
    path, data = ome_tiff
    monkeypatch.setitem(sys.modules, "bioio_ome_tiff", None)
    # the pixels still open through tifffile ...
    assert np.asarray(read_image(path)).shape == data[0].shape
    # ... but choosing a channel or scene needs the plugin, and the error says how to get it
    with pytest.raises(NSEError, match=r"bioio-ome-tiff.*\[formats\]"):
        read_image(path, channel=0)
