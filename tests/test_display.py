"""Embeddings as colours: one PCA projection for the docks, figures and experiments."""

import numpy as np
import pytest

from napari_shift_equivariance import display, experiments
from napari_shift_equivariance._widgets import _display


def _clusters(shape=(40, 50), dim=8, seed=0):
    """Four instances with well separated embeddings on a background with another one."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, int)
    labels[5:15, 5:20], labels[20:35, 5:20] = 1, 2
    labels[5:15, 25:45], labels[20:35, 25:45] = 3, 4
    centres = rng.normal(0, 5, (5, dim))
    emb = centres[labels] + rng.normal(0, 0.1, (*shape, dim))
    return np.moveaxis(emb, -1, 0).astype(np.float32), labels


def test_one_function_for_all_callers():
    assert _display.embedding_rgb is display.embedding_rgb
    assert experiments.prediction_rgb is display.prediction_rgb


def test_instances_get_distinct_colours_and_background_is_black():
    emb, labels = _clusters()
    rgb = display.embedding_rgb(emb, labels > 0)
    assert rgb.shape == (*labels.shape, 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[labels == 0] == 0).all()
    means = np.array([rgb[labels == k].mean(0) for k in range(1, 5)])
    spread = np.array([rgb[labels == k].std(0).max() for k in range(1, 5)])
    gaps = [np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 0.2 and spread.max() < 0.05
    # the contrast uses the full range on the foreground
    fg = rgb[labels > 0]
    assert (fg.min(0) <= 0.01).all() and (fg.max(0) >= 0.99).all()


def test_first_component_follows_the_main_direction():
    rng = np.random.default_rng(1)
    t = rng.normal(0, 10, 5000)
    direction = np.array([3.0, -4.0, 0, 0, 0]) / 5
    pts = t[:, None] * direction + rng.normal(0, 0.1, (5000, 5))
    rgb = display.embedding_rgb(pts.T.reshape(5, 50, 100).astype(np.float32))
    assert abs(np.corrcoef(rgb[..., 0].ravel(), t)[0, 1]) > 0.95
    assert (rgb.reshape(-1, 3)[:, 0] > 0).any()  # no mask: nothing is black by force


def test_outliers_do_not_wash_out_the_others():
    """1st-99th percentile contrast: one far pixel clips, the rest keep their range."""
    emb, labels = _clusters()
    emb[:, 10, 10] = 1e4  # one pixel of instance 1 far away
    rgb = display.embedding_rgb(emb, labels > 0)
    others = (labels > 0) & ~np.pad(np.ones((1, 1), bool), ((10, 29), (10, 39)))
    assert (rgb[10, 10] == np.clip(rgb[10, 10], 0, 1)).all()
    assert rgb[others].std(0).min() > 0.2  # a min-max stretch would squash them near one value


def test_deterministic_small_and_degenerate_inputs():
    emb, labels = _clusters()
    a = display.embedding_rgb(emb, labels > 0, max_samples=300)
    b = display.embedding_rgb(emb, labels > 0, max_samples=300)
    np.testing.assert_array_equal(a, b)
    two = display.embedding_rgb(emb[:2], labels > 0)
    assert (two[..., 2] == 0).all() and two[..., :2].max() > 0.9
    empty = display.embedding_rgb(emb, np.zeros(labels.shape, bool))  # fitted on all pixels
    assert empty.max() > 0.9 and (empty[labels == 0] > 0).any()
    assert display.embedding_rgb(np.ones((3, 4, 4), np.float32)).max() == 0  # no variance
    with pytest.raises(ValueError, match="does not match"):
        display.embedding_rgb(emb, labels[:10] > 0)


def test_prediction_rgb_masks_by_labels_or_probability():
    emb, labels = _clusters((20, 30), dim=3)
    prob = (labels > 0).astype(np.float32) * 0.9
    pred = np.concatenate([emb, prob[None]])
    by_prob = display.prediction_rgb(pred)
    by_labels = display.prediction_rgb(pred, labels)
    np.testing.assert_array_equal(by_prob, by_labels)
    assert (by_prob[labels == 0] == 0).all()
    assert (display.prediction_rgb(pred, fg_threshold=0.95) > 0).any()  # empty mask: all
