"""Union-find and face merging: blockwise components equal whole-image components."""

import numpy as np
import pytest
import zarr

from napari_shift_equivariance.blockwise import plan_blocks, segment_blockwise
from napari_shift_equivariance.blockwise.merge import merge_placeholders
from napari_shift_equivariance.clustering import components
from napari_shift_equivariance.clustering.unionfind import UnionFind
from napari_shift_equivariance.model import ModelConfig, build_model
from napari_shift_equivariance.predict import predict
from napari_shift_equivariance.tiling import plan_tiles


def test_union_find_joins_transitively_and_numbers_by_smallest_member():
    uf = UnionFind(6)
    uf.union_pairs(np.array([[4, 5], [1, 4], [2, 2]]))
    assert uf.labels().tolist() == [0, 1, 2, 3, 1, 1]
    assert uf.find(5) == uf.find(1) != uf.find(0)


def _corner_case(second):
    """Two blocks that meet only at a corner (2x2 blocks of 8 on 16x16); one placeholder in
    block 0 at (7, 7), one in block 3 at ``second``."""
    geo = ModelConfig(ndim=2, depth=3, factor=2).geometry  # grid 8
    plan = plan_blocks((), plan_tiles((16, 16), geo, 8), 8)
    layers = {0: np.zeros((8, 8), np.uint32), 3: np.zeros((8, 8), np.uint32)}
    layers[0][7, 7] = 1
    layers[3][second[0] - 8, second[1] - 8] = 1

    def faces(i):
        if i not in layers:
            return {}
        b, out = plan[i], {}
        for a, (lo, hi) in enumerate(plan.internal_faces(b)):
            if lo:
                out[f"lo{a}"] = np.take(layers[i], 0, axis=a)
            if hi:
                out[f"hi{a}"] = np.take(layers[i], -1, axis=a)
        return out

    return merge_placeholders(plan, faces, np.array([0, 1, 1, 1, 2]))


def test_blocks_that_meet_only_at_a_corner_merge_diagonal_neighbours():
    assert _corner_case((8, 8)).tolist() == [0, 0]  # 8-connected across the corner
    assert _corner_case((8, 9)).tolist() == [0, 1]  # two pixels apart: not neighbours


@pytest.mark.parametrize("ndim, shape, block, q", [(2, (37, 45), 8, 0.55),
                                                   (3, (9, 14, 15), (4, 4, 8), 0.8)])
def test_blockwise_components_equal_whole_image_components(tmp_path, ndim, shape, block, q,
                                                           one_torch_thread):
    # a bandwidth far above the embedding spread: every component is one instance, so the
    # labels are exactly the connected components of the foreground
    cfg = ModelConfig(ndim=ndim, depth=1 if ndim == 3 else 2, factor=2, base_channels=4,
                      embedding_dim=2)
    model = build_model(cfg, seed=1)
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict(model, image, "whole", device="cpu")
    thr = float(np.quantile(out[-1], q))  # 26-connectivity percolates: fewer in 3D
    res = segment_blockwise(model, image, tmp_path / "c.zarr", block=block, tile=4,
                            bandwidth=1e6, fg_threshold=thr, min_size=1, device="cpu")
    labels = zarr.open_array(str(tmp_path / "c.zarr"))[:]
    ref = components(out[-1] > thr)
    assert res.info["n_crossing"] > 3
    pairs = np.unique(np.c_[labels.ravel(), ref.ravel()], axis=0)
    assert np.array_equal(labels > 0, ref > 0)
    assert len(pairs) == len(np.unique(labels)) == len(np.unique(ref))


def test_write_failures_read_as_one_line():
    import errno

    from napari_shift_equivariance.blockwise.store import os_error

    assert str(os_error(OSError(errno.ENOSPC, "No space left"), "o.zarr")) == \
        "out of disk space writing o.zarr"
    assert "read-only" in str(os_error(OSError(errno.EROFS, "Read-only"), "o.zarr"))
    assert "permission" in str(os_error(PermissionError(errno.EACCES, "denied"), "o.zarr"))


def test_strided_percentiles_read_in_slabs_are_the_same(tmp_path, monkeypatch):
    from napari_shift_equivariance import normalize

    image = np.random.default_rng(0).gamma(2.0, size=(9, 300, 260)).astype(np.float32)
    z = zarr.open_array(str(tmp_path / "i.zarr"), mode="w", shape=image.shape,
                        dtype="float32", chunks=(1, 128, 128))
    z[...] = image
    want = normalize.percentiles(image, max_samples=100_000)
    monkeypatch.setattr(normalize, "SLAB_BYTES", 300 * 260 * 4 * 2)  # about 2 planes a slab
    assert normalize.percentiles(z, max_samples=100_000) == want
