"""The npe2 reader and writer, through napari's own open/save calls on a real viewer."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from napari_shift_equivariance import _reader
from napari_shift_equivariance.omezarr import list_labels, read_omezarr, write_omezarr_labels

pytestmark = pytest.mark.napari
PLUGIN = "napari-shift-equivariance"


def omezarr_image(path, data, axes, scale, levels=3):
    import zarr
    from ome_zarr.writer import write_image

    factors = tuple(2 ** k for k in range(1, levels))
    write_image(data, zarr.open_group(str(path), mode="w"), axes=axes,
                scale=dict(zip(axes, scale)), scale_factors=factors)
    return path


def test_manifest_lists_reader_and_writer():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    reader = manifest.contributions.readers[0]
    assert reader.accepts_directories and "*.zarr" in reader.filename_patterns
    assert {"*.czi", "*.nd2", "*.lif", "*.ome.tif"} <= set(reader.filename_patterns)
    writer = manifest.contributions.writers[0]
    assert [str(t) for t in writer.layer_types] == ["labels"]
    assert {".zarr", ".tif"} <= set(writer.filename_extensions)


def test_open_multiscale_omezarr_with_labels(make_napari_viewer, tmp_path):
    data = np.random.default_rng(0).random((3, 128, 96)).astype(np.float32)
    path = omezarr_image(tmp_path / "img.zarr", data, "zyx", (2.0, 0.5, 0.5))
    labels = (data > 0.5).astype(np.uint32)
    write_omezarr_labels(path, labels, name="cells", levels=2)
    viewer = make_napari_viewer()
    from napari.plugins._npe2 import get_readers

    assert PLUGIN in get_readers(str(path))  # offered for File > Open / drag-and-drop
    layers = viewer.open(path, plugin=PLUGIN)
    image, cells = layers
    assert image.multiscale and len(image.data) == 3
    np.testing.assert_array_equal(np.asarray(image.data[0]), data)
    np.testing.assert_allclose(image.scale, [2.0, 0.5, 0.5])
    assert list(image.axis_labels) == ["z", "y", "x"]
    assert cells.__class__.__name__ == "Labels" and cells.name == "cells"
    np.testing.assert_allclose(cells.scale, [2.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.asarray(cells.data[0]), labels)
    # single level: a plain (non-multiscale) layer; channels split into layers
    two = omezarr_image(tmp_path / "c.zarr", np.zeros((2, 32, 32), np.float32), "cyx",
                        (1.0, 0.25, 0.25), levels=1)
    layers = viewer.open(two, plugin=PLUGIN)
    assert len(layers) == 2 and not layers[0].multiscale
    np.testing.assert_allclose(layers[0].scale, [0.25, 0.25])


def test_open_ome_tiff_with_scale(make_napari_viewer, tmp_path):
    pytest.importorskip("bioio_ome_tiff")
    import tifffile

    data = np.random.default_rng(1).integers(0, 999, (2, 4, 30, 40)).astype(np.uint16)
    path = tmp_path / "scan.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.0,
        "Channel": {"Name": ["dapi", "actin"]}})
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert [layer.name for layer in layers] == ["scan dapi", "scan actin"]
    np.testing.assert_allclose(layers[1].scale, [1.0, 0.2, 0.2])
    np.testing.assert_array_equal(np.asarray(layers[1].data), data[1])


def test_missing_reader_error_reaches_the_user(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bioio_czi", None)
    path = tmp_path / "scan.czi"
    path.write_bytes(b"\0" * 64)
    assert _reader.get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as err:
        viewer.open(path, plugin=None)  # inferred, as for drag-and-drop: only we claim .czi
    text = repr(err.value) + repr(err.value.__cause__)
    assert PLUGIN in text and "bioio-czi" in text
    assert "napari-shift-equivariance[formats]" in text


def test_reader_declines_what_it_does_not_read(tmp_path):
    assert _reader.get_reader(str(tmp_path / "a.png")) is None
    assert _reader.get_reader([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]) is None
    assert _reader.get_reader(str(tmp_path / "missing.zarr")) is None
    import zarr

    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(5, 6), dtype="u2")
    ((data, kwargs, kind),) = _reader.get_reader(str(tmp_path / "plain.zarr"))(
        str(tmp_path / "plain.zarr"))
    assert kind == "image" and data.shape == (5, 6) and kwargs["name"] == "plain"


def test_save_labels_to_omezarr_and_tif(make_napari_viewer, tmp_path):
    import napari

    from napari_shift_equivariance.formats import open_image

    viewer = make_napari_viewer()
    labels = np.zeros((2, 64, 80), np.int32)
    labels[:, 10:20, 10:30] = 3
    layer = viewer.add_labels(labels, scale=(3.0, 0.4, 0.4), name="nuclei")
    out = tmp_path / "nuclei.zarr"
    assert layer.save(str(out), plugin=PLUGIN)
    arr, meta = read_omezarr(out)
    np.testing.assert_array_equal(arr[...], labels)
    assert arr.dtype == np.uint32 and meta["is_labels"]
    assert meta["scale"] == pytest.approx([3.0, 0.4, 0.4]) and meta["axes"] == ["z", "y", "x"]
    assert not (tmp_path / "nuclei.zarr.partial").exists()
    # the saved file opens again as a Labels layer with its scale
    (back,) = viewer.open(out, plugin=PLUGIN)
    assert back.__class__.__name__ == "Labels"
    np.testing.assert_allclose(back.scale, [3.0, 0.4, 0.4])
    # tif through napari.save_layers, scale as OME physical pixel size
    tif = tmp_path / "nuclei.tif"
    napari.save_layers(str(tif), [layer], plugin=PLUGIN)
    back_tif, tif_meta = open_image(tif)
    np.testing.assert_array_equal(np.asarray(back_tif[...]), labels)
    assert tif_meta["scale"] == pytest.approx([3.0, 0.4, 0.4])
    # never overwritten silently
    before = out.stat().st_mtime_ns, tif.read_bytes()
    labels[:] = 7
    layer.data = labels
    for target in (out, tif):
        with pytest.raises(Exception, match="exists"):
            layer.save(str(target), plugin=PLUGIN)
    assert out.stat().st_mtime_ns == before[0] and tif.read_bytes() == before[1]
    assert read_omezarr(out)[0][0, 0, 0] == 0


def test_save_labels_into_an_omezarr_image(make_napari_viewer, tmp_path):
    image = omezarr_image(tmp_path / "img.zarr", np.zeros((48, 48), np.float32), "yx",
                          (0.5, 0.5), levels=2)
    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.ones((48, 48), np.uint8), scale=(0.5, 0.5))
    # napari appends .zarr to the extension-less name; the label is still called "mine"
    written = layer.save(str(image / "labels" / "mine"), plugin=PLUGIN)
    assert list_labels(image) == ["mine"] and written == [str(image / "labels" / "mine")]
    arr, meta = read_omezarr(image / "labels" / "mine")
    assert arr[...].sum() == 48 * 48 and meta["scale"] == [0.5, 0.5]
    with pytest.raises(Exception, match="already has labels 'mine'"):
        layer.save(str(image / "labels" / "mine"), plugin=PLUGIN)
    (img_layer, mine) = viewer.open(image, plugin=PLUGIN)
    assert mine.name == "mine" and img_layer.multiscale
