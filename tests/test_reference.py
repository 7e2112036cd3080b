"""scikit-learn's MeanShift as a reference backend: the same clusters as our engine."""

import threading

import numpy as np
import pytest
from sklearn.cluster import MeanShift
from sklearn.metrics import adjusted_rand_score

from napari_shift_equivariance.clustering import mean_shift, reference
from napari_shift_equivariance.errors import Cancelled, NSEError


@pytest.fixture(autouse=True)
def _one_thread():
    """scikit-learn's OpenMP radius queries slow down many times on a busy machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _blobs(n=1000, dim=4, clusters=12, spread=10.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (clusters, dim))
    truth = rng.integers(0, clusters, n)
    return (centres[truth] + rng.normal(size=(n, dim))).astype(np.float32), truth


def _same_partition(a, b):
    return adjusted_rand_score(a, b) == 1.0


def test_reference_agrees_with_our_mean_shift_on_blobs():
    x, truth = _blobs()
    bw = 1.25 * np.sqrt(x.shape[1])
    ref = reference.mean_shift(x, bw)
    ours = mean_shift(x, bw, "cpu")
    assert adjusted_rand_score(ref, ours) >= 0.99
    assert adjusted_rand_score(truth, ref) >= 0.99
    # it is scikit-learn's own result, relabelled largest first
    sk = MeanShift(bandwidth=bw, bin_seeding=True).fit(x).labels_
    assert _same_partition(ref, sk)
    sizes = np.bincount(ref)
    assert ref.dtype == np.int64 and ref.min() == 0 and (sizes[:-1] >= sizes[1:]).all()


def test_groups_are_clustered_on_their_own():
    x, _ = _blobs(900, 4, 5, seed=1)
    groups = np.repeat([3, 0, 7], 300)
    x[300:600] = x[:300]  # same points in two groups: never merged
    labels = reference.mean_shift(x, 2.5, groups=groups)
    for g in (3, 0, 7):
        alone = reference.mean_shift(x[groups == g], 2.5)
        assert _same_partition(labels[groups == g], alone)
    assert not set(labels[:300]) & set(labels[300:600])
    ours = mean_shift(x, 2.5, "cpu", groups=groups)
    assert adjusted_rand_score(labels, ours) >= 0.99
    sizes = np.bincount(labels)
    assert (sizes[:-1] >= sizes[1:]).all() and len(sizes) == labels.max() + 1


def test_small_inputs_progress_cancel_and_bad_input():
    assert reference.mean_shift(np.zeros((0, 3), np.float32), 1.0).shape == (0,)
    assert reference.mean_shift(np.ones((1, 3), np.float32), 1.0).tolist() == [0]
    spread = np.arange(10, dtype=np.float32)[:, None] * 100  # every point its own bin
    assert sorted(reference.mean_shift(spread, 1.0, min_bin_freq=5)) == list(range(10))
    x, _ = _blobs(200, 3, 3)
    calls = []
    reference.mean_shift(x, 2.0, groups=np.arange(200) % 4,
                         progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 4) and calls[-1] == (4, 4)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        reference.mean_shift(x, 2.0, cancel=stop)
    for kwargs in ({"bandwidth": 0.0}, {"bandwidth": 1.0, "groups": np.zeros(3, int)},
                   {"bandwidth": 1.0, "groups": -np.ones(200, int)},
                   {"bandwidth": 1.0, "max_iter": 0}):
        with pytest.raises(NSEError):
            reference.mean_shift(x, **kwargs)
    with pytest.raises(NSEError):
        reference.mean_shift(np.full((5, 2), np.nan, np.float32), 1.0)
