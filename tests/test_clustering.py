"""Tests of mean-shift and image clustering (napari_shift_equivariance.clustering)."""

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from napari_shift_equivariance.clustering import (
    cluster_embeddings,
    estimate_bandwidth_from_margins,
    mean_shift,
)
from napari_shift_equivariance.errors import Cancelled, NSEError


def blobs(n, d, k, gap, seed):
    """``n`` points of ``k`` unit Gaussian blobs in ``d`` dims, centres at least ``gap`` apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    closest = min(np.linalg.norm(centres[i] - centres[j]) for i in range(k) for j in range(i))
    centres *= gap / closest
    truth = rng.integers(0, k, n)
    return centres[truth] + rng.normal(size=(n, d)), truth


def sklearn_labels(x, bandwidth):
    # scikit-learn's radius queries use OpenMP, very slow on a busy 2-core machine
    with threadpool_limits(1):
        return MeanShift(bandwidth=bandwidth, bin_seeding=True).fit(x).labels_


# ---------------------------------------------------------------------------------- mean_shift


@pytest.mark.parametrize("d,n,bandwidth", [(2, 800, 1.5), (8, 400, 3.5), (16, 300, 5.0)])
@pytest.mark.parametrize("spacing", [4.0, 1.6], ids=["separated", "overlapping"])
def test_agrees_with_sklearn(d, n, bandwidth, spacing):
    x, _ = blobs(n, d, 5, spacing * bandwidth, seed=d)
    ours = mean_shift(x, bandwidth, "cpu")
    assert adjusted_rand_score(sklearn_labels(x, bandwidth), ours) >= 0.99


def test_finds_the_blobs():
    x, truth = blobs(3000, 16, 8, 30.0, seed=1)
    labels = mean_shift(x, 5.0, "cpu")
    assert labels.max() + 1 == 8
    assert adjusted_rand_score(truth, labels) == 1.0


def test_labels_are_sorted_by_size_and_deterministic():
    x, _ = blobs(2000, 8, 6, 14.0, seed=2)
    a = mean_shift(x, 3.5, "cpu")
    b = mean_shift(x.copy(), 3.5, "cpu")
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (2000,)
    sizes = np.bincount(a)
    assert a.min() == 0 and (sizes > 0).all()
    assert (np.diff(sizes) <= 0).all()


def test_chunk_size_does_not_change_the_result():
    x, _ = blobs(1500, 4, 5, 10.0, seed=3)
    a = mean_shift(x, 2.5, "cpu")
    b = mean_shift(x, 2.5, "cpu", chunk_size=500)
    assert adjusted_rand_score(a, b) == 1.0


def test_low_dimensional_many_points_uses_bins_and_agrees():
    # many points per bin: the coarse pass on bins is taken
    x, truth = blobs(50_000, 3, 6, 12.0, seed=4)
    labels = mean_shift(x, 2.0, "cpu")
    assert adjusted_rand_score(truth, labels) > 0.99


def test_groups_never_share_a_cluster():
    x, _ = blobs(600, 4, 3, 12.0, seed=5)
    both = np.concatenate([x, x])
    groups = np.repeat([0, 1], 600)
    labels = mean_shift(both, 2.5, "cpu", groups=groups)
    assert not set(labels[:600]) & set(labels[600:])
    assert adjusted_rand_score(labels[:600], labels[600:]) == 1.0
    assert labels.max() + 1 == 2 * (mean_shift(x, 2.5, "cpu").max() + 1)


def test_a_group_gets_the_clusters_it_would_get_alone():
    # Each group is centred on its own mean and takes its own code paths (the coarse pass on
    # bins at >= 50,000 points, seeding by points when each is alone in a bin), so clustering
    # components in one call or in several gives the same partition of each (blockwise).
    big, _ = blobs(50_000, 3, 6, 12.0, seed=4)  # coarse pass
    small, _ = blobs(400, 3, 3, 12.0, seed=7)
    sparse = np.random.default_rng(8).normal(size=(30, 3)) * 40.0 + 500.0  # one per bin
    parts = [big, small + 300.0, sparse]
    x = np.concatenate(parts)
    groups = np.repeat(np.arange(3), [len(p) for p in parts])
    together = mean_shift(x, 2.0, "cpu", groups=groups)
    for k, part in enumerate(parts):
        alone = mean_shift(part, 2.0, "cpu")
        assert adjusted_rand_score(alone, together[groups == k]) == 1.0, k


def test_groups_are_independent_even_on_a_continuum():
    # A continuum of points cut into many clusters puts points on decision boundaries, where
    # another summation order flips labels: every group must still get exactly the labels it
    # gets alone (the blockwise engine clusters components in other company than segment).
    rng = np.random.default_rng(2)
    sizes = rng.integers(5, 3000, 60)
    x = rng.normal(0, 2, (int(sizes.sum()), 3)).astype(np.float32)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    keep = (groups >= 34) & (groups <= 36)  # a case that once depended on its neighbours
    x, groups = x[keep], groups[keep]
    together = mean_shift(x, 0.8, "cpu", groups=groups)
    for k in np.unique(groups):
        m = groups == k
        alone = mean_shift(x[m], 0.8, "cpu")
        assert adjusted_rand_score(alone, together[m]) == 1.0, k


def test_groups_are_independent_with_tied_coordinates():
    # Tied coordinates leave the k-d order to the bins' order, which must not come from a hash
    # of the group numbers: group 5 here once got other labels alone than with the others.
    rng = np.random.default_rng(2)
    sizes = rng.integers(20, 1500, 30)
    x = (rng.integers(0, 60, (int(sizes.sum()), 3)) * 0.1).astype(np.float32)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    together = mean_shift(x, 0.7, "cpu", groups=groups)
    for k in (4, 5, 6):
        m = groups == k
        assert adjusted_rand_score(mean_shift(x[m], 0.7, "cpu"), together[m]) == 1.0, k


def _threads(n):
    class Threads:
        def __enter__(self):
            self.saved = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.saved)
    return Threads()


def test_groups_in_threads_give_the_same_labels(monkeypatch):
    # With more than one torch thread, runs of groups are clustered in parallel threads; the
    # labels (numbers included) must be those of one call, and progress must still complete.
    from napari_shift_equivariance.clustering import meanshift

    rng = np.random.default_rng(3)
    sizes = rng.integers(20, 800, 40)
    x = rng.normal(0, 2, (int(sizes.sum()), 4)).astype(np.float32)
    groups = np.repeat(rng.permutation(len(sizes)), sizes)  # groups not in order
    with _threads(1):
        one = mean_shift(x, 0.9, "cpu", groups=groups)
    monkeypatch.setattr(meanshift, "_PARALLEL_MIN", 500)
    calls, seen = [], []
    real = meanshift._mean_shift
    monkeypatch.setattr(meanshift, "_mean_shift", lambda *a: calls.append(len(a[0])) or real(*a))
    with _threads(3):
        split = mean_shift(x, 0.9, "cpu", groups=groups,
                           progress=lambda d, t: seen.append(d))
        assert torch.get_num_threads() == 3  # restored
    assert len(calls) == 3 and sum(calls) == len(x)
    np.testing.assert_array_equal(one, split)
    assert seen[-1] == 100 and seen == sorted(seen)


def test_small_inputs_stay_in_one_thread(monkeypatch):
    from napari_shift_equivariance.clustering import meanshift

    assert meanshift._parts(np.repeat(np.arange(10), 100), 4) == []  # too few points
    assert meanshift._parts(np.zeros(200_000, np.int64), 4) == []  # one group
    parts = meanshift._parts(np.repeat(np.arange(8), 25_000), 2)
    assert [len(p) for p in parts] == [100_000, 100_000]


def test_single_point_and_duplicates():
    assert mean_shift(np.zeros((1, 3)), 1.0, "cpu").tolist() == [0]
    assert mean_shift(np.ones((50, 2)), 1.0, "cpu").tolist() == [0] * 50


def test_empty_input_gives_empty_labels():
    out = mean_shift(np.zeros((0, 4)), 1.0, "cpu")
    assert out.shape == (0,) and out.dtype == np.int64


@pytest.mark.parametrize("bandwidth", [0, -1.0, np.nan, np.inf, "wide"])
def test_bad_bandwidth(bandwidth):
    with pytest.raises(NSEError, match="bandwidth"):
        mean_shift(np.zeros((5, 2)), bandwidth, "cpu")


@pytest.mark.parametrize("points", [np.zeros(5), np.zeros((2, 3, 4)), [[0.0, np.nan]],
                                    [[np.inf, 1.0]], np.array([["a", "b"]])])
def test_bad_points(points):
    with pytest.raises(NSEError):
        mean_shift(points, 1.0, "cpu")


def test_bad_options():
    x = np.zeros((5, 2))
    for kwargs in [{"max_iter": 0}, {"min_bin_freq": 0}, {"chunk_size": 0},
                   {"groups": np.zeros(4, int)}, {"groups": -np.ones(5, int)}]:
        with pytest.raises(NSEError):
            mean_shift(x, 1.0, "cpu", **kwargs)


def test_unavailable_device_is_a_clear_error():
    if not torch.cuda.is_available():
        with pytest.raises(NSEError, match="not available"):
            mean_shift(np.zeros((3, 2)), 1.0, "cuda")


def test_min_bin_freq_thins_the_seeds_but_keeps_every_cluster():
    x, truth = blobs(2000, 2, 4, 12.0, seed=6)
    labels = mean_shift(x, 1.5, "cpu", min_bin_freq=20)
    assert adjusted_rand_score(truth, labels) > 0.99


def test_cancel_raises():
    x, _ = blobs(500, 2, 3, 10.0, seed=7)
    with pytest.raises(Cancelled):
        mean_shift(x, 1.5, "cpu", cancel=lambda: True)
    calls = []

    def later():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        mean_shift(x, 1.5, "cpu", cancel=later)


def test_progress_is_monotonic_and_completes():
    x, _ = blobs(800, 4, 3, 10.0, seed=8)
    seen = []
    mean_shift(x, 2.5, "cpu", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (100, 100)
    assert all(a[0] < b[0] for a, b in zip(seen, seen[1:]))


def test_bandwidth_from_margins():
    assert estimate_bandwidth_from_margins(0.5, 1.5) == 1.0  # 2 * delta_v
    assert estimate_bandwidth_from_margins(0.0, 3.0) == 1.5  # delta_d / 2, the paper's margins
    assert estimate_bandwidth_from_margins(1.0, 1.2) == 1.2  # capped at delta_d
    for dv, dd in [(-0.1, 1.0), (1.0, 1.0), (0.5, np.nan), (2.0, 1.0)]:
        with pytest.raises(NSEError):
            estimate_bandwidth_from_margins(dv, dd)


@pytest.mark.gpu
def test_cuda_agrees_with_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x, truth = blobs(20_000, 16, 20, 30.0, seed=9)
    cpu = mean_shift(x, 5.0, "cpu")
    for device in ["cuda", "cuda:0", "auto"]:
        gpu = mean_shift(x, 5.0, device)
        assert adjusted_rand_score(cpu, gpu) >= 0.999
    assert adjusted_rand_score(truth, gpu) >= 0.99
    x, _ = blobs(600, 4, 3, 12.0, seed=10)
    groups = np.repeat([0, 1, 2], 200)
    assert adjusted_rand_score(mean_shift(x, 2.5, "cpu", groups=groups),
                               mean_shift(x, 2.5, "cuda", groups=groups)) >= 0.99


# -------------------------------------------------------------------------- cluster_embeddings


def embedding_image(shape, objects, dim=4, noise=0.05, seed=0):
    """An embedding image: each object (a boolean mask) gets its vector plus a little noise."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(0, noise, (dim, *shape)).astype(np.float32)
    fg = np.zeros(shape, bool)
    for mask, vector in objects:
        emb[:, mask] += np.asarray(vector, np.float32)[:, None]
        fg |= mask
    return emb, fg


def box(shape, *slices):
    m = np.zeros(shape, bool)
    m[slices] = True
    return m


def test_component_scope_keeps_apart_what_global_merges():
    shape = (32, 32)
    left, right = box(shape, slice(4, 12), slice(2, 12)), box(shape, slice(4, 12), slice(20, 30))
    same = [1.0, 0.0, 0.0, 0.0]
    emb, fg = embedding_image(shape, [(left, same), (right, same)])
    component = cluster_embeddings(emb, fg, 0.5, scope="component", device="cpu")
    glob = cluster_embeddings(emb, fg, 0.5, scope="global", device="cpu")
    assert component.dtype == np.uint32 and glob.dtype == np.uint32
    assert len(np.unique(component[left])) == 1 and len(np.unique(component[right])) == 1
    assert component[left][0] != component[right][0]
    assert sorted(np.unique(component).tolist()) == [0, 1, 2]
    assert np.unique(glob[fg]).tolist() == [1] and (glob[~fg] == 0).all()


def test_spatial_radius_keeps_apart_far_objects_with_the_same_embedding():
    # the paper's capacity limit: equal-looking objects far apart share an embedding, and the
    # global scope merges them; with positions in the clustering space they stay apart
    shape = (32, 32)
    left, right = box(shape, slice(4, 12), slice(2, 12)), box(shape, slice(4, 12), slice(20, 30))
    emb, fg = embedding_image(shape, [(left, [1.0, 0, 0, 0]), (right, [1.0, 0, 0, 0])])
    glob = cluster_embeddings(emb, fg, 0.5, scope="global", spatial_radius=6.0, device="cpu")
    assert len(np.unique(glob[left])) == 1 and len(np.unique(glob[right])) == 1
    assert glob[left][0] != glob[right][0] and glob.max() == 2
    # a radius far larger than the image: positions barely matter, one cluster again
    wide = cluster_embeddings(emb, fg, 0.5, scope="global", spatial_radius=1e4, device="cpu")
    assert wide.max() == 1


def test_spatial_radius_splits_touching_objects_with_the_same_embedding():
    shape = (16, 40)
    a, b = box(shape, slice(4, 12), slice(2, 14)), box(shape, slice(4, 12), slice(14, 26))
    emb, fg = embedding_image(shape, [(a, [1.0, 0, 0, 0]), (b, [1.0, 0, 0, 0])])
    assert cluster_embeddings(emb, fg, 0.5, device="cpu").max() == 1  # one component, merged
    split = cluster_embeddings(emb, fg, 0.5, spatial_radius=6.0, device="cpu")
    major = [np.bincount(split[m]).argmax() for m in (a, b)]
    assert split.max() >= 2 and major[0] != major[1]
    with pytest.raises(NSEError, match="spatial radius"):
        cluster_embeddings(emb, fg, 0.5, spatial_radius=-2, device="cpu")


def centre_offsets(emb, masks, scale):
    """What a model trained with coordinates outputs: each pixel of an object points at the
    object's centre, ``-scale * (position - centre)``, on the first two channels."""
    pos = np.indices(emb.shape[1:]).astype(np.float32)
    for m in masks:
        centre = pos[:, m].mean(1)
        emb[:2, m] -= scale * (pos[:, m] - centre[:, None])
    return emb


def test_coordinates_split_touching_objects_that_point_at_their_own_centres():
    shape = (16, 40)
    a, b = box(shape, slice(4, 12), slice(2, 14)), box(shape, slice(4, 12), slice(14, 26))
    emb, fg = embedding_image(shape, [(a, [1.0, 0, 0, 0]), (b, [1.0, 0, 0, 0])])
    emb = centre_offsets(emb, [a, b], 0.2)
    # as embeddings alone, the offsets spread each object over 2.2 units: one cluster, merged
    assert cluster_embeddings(emb, fg, 1.0, device="cpu").max() == 1
    lab = cluster_embeddings(emb, fg, 1.0, coord_scale=0.2, device="cpu")
    assert lab.max() == 2 and len(np.unique(lab[a])) == 1 and len(np.unique(lab[b])) == 1
    # far apart and the same: told apart in global scope too (no capacity limit)
    glob = cluster_embeddings(emb, fg, 1.0, scope="global", coord_scale=0.2, device="cpu")
    assert adjusted_rand_score(glob.ravel(), lab.ravel()) == 1.0
    with pytest.raises(NSEError, match="coordinate scale"):
        cluster_embeddings(emb, fg, 1.0, coord_scale=-1, device="cpu")


def test_coordinate_image_adds_positions_on_the_spatial_axes():
    from napari_shift_equivariance.clustering.components import with_coordinate_image

    emb = np.zeros((3, 2, 4, 5), np.float32)  # E=3 over a stack of two 4 x 5 planes
    got = with_coordinate_image(emb, 0.5, 2)
    np.testing.assert_allclose(got[0, 1, :, 0], [0, 0.5, 1, 1.5])
    np.testing.assert_allclose(got[1, 0, 2], [0, 0.5, 1, 1.5, 2])
    assert (got[2] == 0).all() and (emb == 0).all()
    assert with_coordinate_image(emb, 0.0, 2) is emb


def test_positions_add_then_append():
    from napari_shift_equivariance.clustering import NO_POSITIONS, Positions, with_positions

    pts = np.zeros((2, 3), np.float32)
    index = (np.array([0, 2]), np.array([1, 3]))
    assert with_positions(pts, index, NO_POSITIONS) is pts
    got = with_positions(pts, index, Positions(add=0.5, append=2.0), origin=(10, 0))
    np.testing.assert_allclose(got, [[5, 0.5, 0, 20, 2], [6, 1.5, 0, 24, 6]])
    assert (pts == 0).all()  # the caller's points are not changed
    assert Positions.of(2.0, spatial_radius=4.0, coord_scale=0.1) == Positions(0.1, 0.5)
    with pytest.raises(NSEError, match="coordinates need at least 2"):
        with_positions(np.zeros((2, 1), np.float32), index, Positions(add=1.0))


def test_touching_objects_with_different_embeddings_are_split():
    shape = (20, 20)
    a, b = box(shape, slice(2, 18), slice(2, 10)), box(shape, slice(2, 18), slice(10, 18))
    emb, fg = embedding_image(shape, [(a, [2, 0, 0, 0]), (b, [0, 2, 0, 0])])
    labels = cluster_embeddings(emb, fg, 0.5, device="cpu")
    assert len(np.unique(labels[a])) == 1 and len(np.unique(labels[b])) == 1
    assert labels[a][0] != labels[b][0] and labels.max() == 2


def test_block_scope_merges_an_object_across_blocks():
    shape = (64, 64)
    big = box(shape, slice(5, 50), slice(3, 60))  # spans 4 x 4 blocks of 16
    small = box(shape, slice(52, 62), slice(10, 30))  # touches nothing
    nextdoor = box(shape, slice(50, 62), slice(40, 60))  # touches `big` across a block face
    emb, fg = embedding_image(shape, [(big, [3, 0, 0, 0]), (small, [3, 0, 0, 0]),
                                      (nextdoor, [0, 0, 3, 0])])
    seen = []
    labels = cluster_embeddings(emb, fg, 0.5, scope="block", block_shape=(16, 16), device="cpu",
                                progress=lambda done, total: seen.append((done, total)))
    assert np.unique(labels[big]).size == 1 and labels[big][0] > 0
    assert labels[small][0] != labels[big][0] and labels[nextdoor][0] != labels[big][0]
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]
    assert seen[-1] == (16, 16)
    # without the merge, the big object would be cut into one piece per block
    naive = cluster_embeddings(emb, fg, 0.5, scope="component", device="cpu")
    assert np.unique(naive[big]).size == 1


def test_block_scope_3d_with_ragged_blocks():
    shape = (10, 24, 24)
    obj = box(shape, slice(1, 9), slice(2, 22), slice(3, 20))
    emb, fg = embedding_image(shape, [(obj, [0, 2, 0, 0])], seed=1)
    labels = cluster_embeddings(emb, fg, 0.5, scope="block", block_shape=(4, 7, 9), device="cpu")
    assert np.unique(labels[obj]).tolist() == [1] and (labels[~obj] == 0).all()


def test_min_size_removes_fragments_and_relabels_sequentially():
    shape = (30, 30)
    a = box(shape, slice(2, 12), slice(2, 12))
    speck = box(shape, slice(5, 7), slice(5, 7))  # 4 pixels with their own embedding, inside a
    b = box(shape, slice(15, 28), slice(15, 28))
    dot = box(shape, slice(20, 22), slice(2, 4))  # a 4-pixel object on its own
    emb, fg = embedding_image(shape, [(a & ~speck, [2, 0, 0, 0]), (speck, [0, 0, 0, 2]),
                                      (b, [0, 2, 0, 0]), (dot, [0, 0, 2, 0])])
    full = cluster_embeddings(emb, fg, 0.5, device="cpu")
    assert full.max() == 4
    kept = cluster_embeddings(emb, fg, 0.5, min_size=5, device="cpu")
    assert sorted(np.unique(kept).tolist()) == [0, 1, 2]
    assert (kept[speck] == 0).all() and (kept[dot] == 0).all()
    assert (kept[a & ~speck] > 0).all() and (kept[b] > 0).all()


def test_empty_foreground_warns_and_returns_zeros():
    emb = np.zeros((3, 8, 9), np.float32)
    with pytest.warns(UserWarning, match="empty foreground"):
        out = cluster_embeddings(emb, np.zeros((8, 9), bool), 1.0, device="cpu")
    assert out.shape == (8, 9) and out.dtype == np.uint32 and not out.any()


def test_cluster_embeddings_bad_input():
    emb, fg = embedding_image((8, 8), [(box((8, 8), slice(1, 5), slice(1, 5)), [1, 0, 0, 0])])
    with pytest.raises(NSEError):
        cluster_embeddings(emb[:, :7], fg, 1.0, device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg[None, None], 1.0, device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg, 1.0, scope="everywhere", device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg, 1.0, scope="block", device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg, 1.0, scope="block", block_shape=(4,), device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg, 1.0, min_size=-1, device="cpu")
    with pytest.raises(NSEError):
        cluster_embeddings(emb, fg, 0.0, device="cpu")
    bad = emb.copy()
    bad[0, 2, 2] = np.nan
    with pytest.raises(NSEError, match="NaN"):
        cluster_embeddings(bad, fg, 1.0, device="cpu")
    bad[0, 2, 2], bad[0, 7, 7] = 0.0, np.nan  # NaN in the background is ignored
    assert cluster_embeddings(bad, fg, 1.0, device="cpu").max() == 1


def test_cancel_in_cluster_embeddings():
    obj = box((16, 16), slice(1, 15), slice(1, 15))
    emb, fg = embedding_image((16, 16), [(obj, [1, 0, 0, 0])])
    for scope in ["component", "global"]:
        with pytest.raises(Cancelled):
            cluster_embeddings(emb, fg, 0.5, scope=scope, device="cpu", cancel=lambda: True)
    with pytest.raises(Cancelled):
        cluster_embeddings(emb, fg, 0.5, scope="block", block_shape=(8, 8), device="cpu",
                           cancel=lambda: True)


def test_many_components_in_one_call():
    # a lattice of 400 small disks, each its own component with the same embedding
    shape = (200, 200)
    yy, xx = np.mgrid[:200, :200]
    disks = ((yy % 10 - 5) ** 2 + (xx % 10 - 5) ** 2) <= 9
    emb, fg = embedding_image(shape, [(disks, [1, 1, 0, 0])])
    labels = cluster_embeddings(emb, fg, 0.5, device="cpu")
    assert labels.max() == 400
    assert cluster_embeddings(emb, fg, 0.5, scope="global", device="cpu").max() == 1


def test_seeds_without_neighbours_fall_back_to_points():
    # in 16 dims a bin centre can be further than the bandwidth from every point of its bin;
    # scikit-learn raises here, we seed from the points instead
    x = np.full((3, 16), 0.45) + np.linspace(0, 0.01, 3)[:, None]
    assert mean_shift(x, 1.0, "cpu").tolist() == [0, 0, 0]
    groups = np.array([0, 0, 1])
    assert sorted(mean_shift(x, 1.0, "cpu", groups=groups).tolist()) == [0, 0, 1]


def test_tight_clusters_in_high_dimensions_are_all_found():
    # clusters much tighter than the bin grid: most bin centres have no point within the
    # bandwidth, so scikit-learn's seeds miss two thirds of these clusters; the re-seeding
    # of points far from every mode finds them all
    rng = np.random.default_rng(11)
    centres = rng.normal(0, 3, (100, 16))
    truth = np.repeat(np.arange(100), 20)
    x = centres[truth] + rng.normal(0, 0.1, (2000, 16))
    labels = mean_shift(x, 1.5, "cpu")
    assert adjusted_rand_score(truth, labels) == 1.0


def test_every_group_gets_its_own_labels_in_high_dimensions():
    # 300 tight groups in 16 dims: most bin centres reach no point, so many groups start
    # with no mode at all and must be re-seeded; no label may be shared between groups
    rng = np.random.default_rng(12)
    truth = np.repeat(np.arange(300), 30)
    x = rng.normal(0, 3, (300, 16))[truth] + rng.normal(0, 0.1, (9000, 16))
    labels = mean_shift(x, 1.5, "cpu", groups=truth)
    assert adjusted_rand_score(truth, labels) == 1.0


@pytest.mark.parametrize("scope", ["component", "global"])
def test_the_sklearn_backend_gives_the_same_instances(scope):
    # two touching objects (one component) and a third apart, told apart by embeddings
    fg = np.zeros((24, 30), bool)
    fg[2:12, 2:14] = fg[2:12, 14:26] = fg[15:22, 5:20] = True
    emb = np.zeros((2, *fg.shape), np.float32)
    emb[0][2:12, 14:26] = 6.0
    emb[1][15:22, 5:20] = 6.0
    emb += np.random.default_rng(0).normal(scale=0.1, size=emb.shape).astype(np.float32)
    ours = cluster_embeddings(emb, fg, 1.5, scope=scope, device="cpu")
    ref = cluster_embeddings(emb, fg, 1.5, scope=scope, backend="sklearn", device="cpu")
    assert ours.max() == 3
    assert adjusted_rand_score(ours.ravel(), ref.ravel()) == 1.0


def test_median_diameter_leaves_out_objects_cut_by_the_sample():
    from napari_shift_equivariance.clustering.scale import median_diameter, sample_roi
    from napari_shift_equivariance.geometry import Roi

    lab = np.zeros((20, 30), np.uint32)
    lab[0:2, 5:7] = 1  # cut by the sample's upper face, which lies inside the image
    lab[5:15, 5:15] = 2  # whole: 100 px
    lab[5:15, 18:28] = 3  # whole
    lab[18:20, 0:2] = 4  # on the lower face, which is the image's own border
    inside = Roi((10, 0), (20, 30))
    d = median_diameter(lab, inside, (30, 30))
    assert d == pytest.approx(2 * np.sqrt(100 / np.pi))
    # every face is the image's: all four count (median of 4, 4, 100, 100 px)
    assert median_diameter(lab, Roi((0, 0), (20, 30)), (20, 30)) == pytest.approx(
        2 * np.sqrt(52 / np.pi))
    only_cut = np.zeros_like(lab)
    only_cut[0:2, 5:9] = 1
    assert median_diameter(only_cut, inside, (30, 30)) == pytest.approx(
        2 * np.sqrt(8 / np.pi))  # all cut: they still give a scale
    assert median_diameter(np.zeros_like(lab), inside, (30, 30)) is None
    assert sample_roi((2000, 100)).shape == (512, 100)
    assert sample_roi((300, 300, 300)).begin == (86, 86, 86)
