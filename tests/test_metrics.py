"""Tests of the segmentation metrics (napari_shift_equivariance.metrics)."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.metrics import (
    average_precision,
    embedding_seam_statistic,
    evaluate,
    match,
    pool,
    seam_splits,
    splits_and_merges,
)


def image(shape, *objects):
    """A label image; each object is ``(label, slices)``."""
    out = np.zeros(shape, np.int32)
    for label, slices in objects:
        out[slices] = label
    return out


S = np.s_


def brute_force_match(gt, pred, thresh):
    """Reference: IoU by looping over object pairs, then a dense assignment (most matches,
    then the largest IoU sum)."""
    g_ids = [i for i in np.unique(gt) if i]
    p_ids = [j for j in np.unique(pred) if j]
    iou = np.zeros((len(g_ids), len(p_ids)))
    for a, g in enumerate(g_ids):
        for b, p in enumerate(p_ids):
            inter = np.sum((gt == g) & (pred == p))
            iou[a, b] = inter / np.sum((gt == g) | (pred == p))
    ok = iou >= thresh
    rows, cols = linear_sum_assignment(ok + iou * ok / (2 * max(1, min(iou.shape))),
                                       maximize=True)
    good = ok[rows, cols]
    return int(good.sum()), iou[rows, cols][good], len(g_ids), len(p_ids)


def random_labels(rng, shape=(40, 40), n=12):
    """Random rectangles painted over each other, then relabelled by connected component."""
    out = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 12, 2)
        out[y:y + h, x:x + w] = k
    return out


# --------------------------------------------------------------------------------------- match


def test_perfect_match():
    gt = image((20, 20), (1, S[1:5, 1:5]), (2, S[8:12, 2:9]), (7, S[14:19, 10:19]))
    m = match(gt, gt.copy())
    assert (m["tp"], m["fp"], m["fn"]) == (3, 0, 0)
    assert m["precision"] == m["recall"] == m["f1"] == m["ap"] == m["accuracy"] == 1.0
    assert m["mean_matched_iou"] == 1.0 and m["n_true"] == m["n_pred"] == 3


def test_ids_need_not_agree():
    gt = image((20, 20), (1, S[1:5, 1:5]), (2, S[8:12, 2:9]))
    pred = image((20, 20), (2_000_000_000, S[1:5, 1:5]), (5, S[8:12, 2:9]))
    assert match(gt, pred.astype(np.uint32))["tp"] == 2


def test_one_missing_object():
    gt = image((20, 20), (1, S[1:5, 1:5]), (2, S[8:12, 2:9]), (3, S[14:19, 10:19]))
    pred = image((20, 20), (1, S[1:5, 1:5]), (2, S[8:12, 2:9]))
    m = match(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 1)
    assert m["ap"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == 1.0 and m["f1"] == pytest.approx(0.8)


def test_one_split_object():
    gt = image((10, 10), (1, S[0:4, 0:5]))
    pred = image((10, 10), (1, S[0:4, 0:3]), (2, S[0:4, 3:5]))  # IoU 0.6 and 0.4
    m = match(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)
    assert m["mean_matched_iou"] == pytest.approx(0.6)
    sm = splits_and_merges(gt, pred)
    assert sm["false_splits"] == 1 and sm["split_ids"] == [1]
    assert sm["false_merges"] == 0 and sm["merge_ids"] == []


def test_one_merged_object():
    gt = image((10, 10), (4, S[0:4, 0:6]), (9, S[0:4, 6:8]))
    pred = image((10, 10), (3, S[0:4, 0:8]))  # IoU 0.75 with 4, 0.25 with 9
    m = match(gt, pred)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1)
    sm = splits_and_merges(gt, pred)
    assert sm["false_merges"] == 1 and sm["merge_ids"] == [3]
    assert sm["false_splits"] == 0


def test_iou_just_above_and_below_the_threshold():
    gt = image((10, 10), (1, S[:, :]))
    half = image((10, 10), (1, S[:, :5]))  # IoU exactly 0.5
    less = half.copy()
    less[0, 0] = 0  # IoU 0.49
    assert match(gt, half, 0.5)["tp"] == 1
    assert match(gt, half, 0.51)["tp"] == 0
    assert match(gt, less, 0.5)["tp"] == 0
    assert match(gt, less, 0.49)["tp"] == 1


def test_splits_and_merges_use_iou_above_one_tenth():
    gt = image((10, 10), (1, S[:, :]))
    pred = image((10, 10), (1, S[:, :9]), (2, S[:, 9:]))  # IoU 0.9 and exactly 0.1
    assert splits_and_merges(gt, pred)["false_splits"] == 0
    pred[0, 8] = 2  # now 11 pixels: IoU 0.11
    assert splits_and_merges(gt, pred)["false_splits"] == 1
    assert splits_and_merges(gt, pred, iou=0.2)["false_splits"] == 0


def test_empty_images_follow_stardist():
    empty = np.zeros((5, 5), np.uint16)
    some = image((5, 5), (1, S[1:3, 1:3]), (2, S[3:5, 3:5]))
    m = match(empty, empty)
    assert (m["tp"], m["fp"], m["fn"], m["ap"]) == (0, 0, 0, 0.0)
    m = match(empty, some)
    assert (m["fp"], m["n_pred"], m["precision"], m["ap"]) == (2, 2, 0.0, 0.0)
    m = match(some, empty)
    assert (m["fn"], m["recall"]) == (2, 0.0)


@pytest.mark.parametrize("thresh", [0.1, 0.3, 0.5, 0.7])
def test_match_agrees_with_brute_force(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    for _ in range(5):
        gt, pred = random_labels(rng), random_labels(rng)
        tp, ious, n_true, n_pred = brute_force_match(gt, pred, thresh)
        m = match(gt, pred, thresh)
        assert (m["tp"], m["n_true"], m["n_pred"]) == (tp, n_true, n_pred)
        assert m["fp"] == n_pred - tp and m["fn"] == n_true - tp
        assert m["mean_matched_iou"] == pytest.approx(ious.mean() if tp else 0.0)


def test_match_on_3d_and_noisy_labels():
    rng = np.random.default_rng(3)
    gt = ndimage.label(rng.random((12, 30, 30)) > 0.6)[0]
    pred = gt.copy()
    pred[rng.random(gt.shape) < 0.05] = 0
    tp, ious, _, _ = brute_force_match(gt[:4], pred[:4], 0.5)
    assert match(gt[:4], pred[:4])["tp"] == tp
    assert match(gt, pred)["tp"] > 0.5 * gt.max()


def test_bad_label_images():
    a = np.zeros((4, 4), int)
    with pytest.raises(NSEError, match="shape"):
        match(a, np.zeros((4, 5), int))
    with pytest.raises(NSEError, match="integer"):
        match(a, a.astype(float))
    with pytest.raises(NSEError, match="integer"):
        splits_and_merges(a.astype(np.float32), a)
    with pytest.raises(NSEError, match="negative"):
        average_precision(a - 1, a)
    with pytest.raises(NSEError):
        match(a, a, thresh=1.5)


# ----------------------------------------------------------------------------- average_precision


def test_average_precision_over_dsb_thresholds():
    gt = image((10, 10), (1, S[0:4, 0:5]), (2, S[6:10, 6:10]))
    pred = image((10, 10), (1, S[0:4, 0:3]), (2, S[6:10, 6:10]))  # IoU 0.6 and 1.0
    res = average_precision(gt, pred)
    assert res["thresholds"] == pytest.approx(np.arange(0.5, 1.0, 0.05))
    # thresholds 0.5, 0.55, 0.6: both matched; 0.65 ... 0.95: only the exact one
    expected = [1.0] * 3 + [1 / 3] * 7
    assert res["ap"] == pytest.approx(expected)
    assert res["mean"] == pytest.approx(np.mean(expected))
    assert average_precision(gt, gt)["mean"] == 1.0
    assert average_precision(gt, pred, [0.5])["ap"] == [1.0]


# ---------------------------------------------------------------------------------- seam_splits


def test_seam_splits():
    shape = (20, 24)
    border = np.zeros(shape, bool)
    border[:, 11:13] = True  # a tile border between columns 11 and 12
    correct = image(shape, (5, S[2:8, 6:18]),  # crosses the border
                    (6, S[10:16, 8:20]),  # crosses it too
                    (7, S[17:20, 0:8]))  # far from it
    naive = correct.copy()
    naive[2:8, 12:18] = 9  # object 5 cut at the border: two halves
    naive[10:16, 19:20] = 10  # object 6 loses a sliver (1/12 < 0.1): not a seam split
    naive[17:20, 4:8] = 11  # object 7 split, but away from the border
    res = seam_splits(naive, correct, border)
    assert res["count"] == 1 and res["ids"] == [5]
    assert res["map"].dtype == np.uint32
    np.testing.assert_array_equal(res["map"], np.where(correct == 5, 5, 0))
    assert seam_splits(naive, correct, border, min_fraction=0.05)["ids"] == [5, 6]
    assert seam_splits(correct, correct, border)["count"] == 0
    with pytest.raises(NSEError):
        seam_splits(naive, correct, border.astype(int))
    with pytest.raises(NSEError):
        seam_splits(naive, correct[:-1], border)


# ---------------------------------------------------------------------- embedding_seam_statistic


def test_embedding_seam_statistic_smooth_and_seamed():
    yy, xx = np.mgrid[:16, :24].astype(float)
    smooth = np.stack([0.1 * xx, 0.2 * yy])
    res = embedding_seam_statistic(smooth, None, [[8], [8, 16]])
    assert res["ratio"] == pytest.approx(1.0, rel=0.3)
    # pairs across: 24 at row border 8, and 2 * 16 at the column borders
    assert res["n_across"] == 24 + 32
    assert res["n_across"] + res["n_within"] == 15 * 24 + 16 * 23

    seamed = np.zeros((2, 16, 24))
    seamed[0] = 0.01 * xx + (xx >= 8) + (xx >= 16)  # a jump of 1 at each column border
    res = embedding_seam_statistic(seamed, None, [[], [0, 8, 16, 24]])
    assert res["across"] == pytest.approx(1.01)
    assert res["within"] == pytest.approx(0.01 * (16 * 21) / (16 * 21 + 15 * 24))
    assert res["ratio"] > 50


def test_embedding_seam_statistic_foreground_only():
    seamed = np.zeros((1, 4, 10))
    seamed[0, :, 5:] = 1.0
    fg = np.zeros((4, 10), bool)
    fg[:, :5] = True  # nothing on the far side of the border
    res = embedding_seam_statistic(seamed, fg, [[], [5]])
    assert res["n_across"] == 0 and np.isnan(res["across"]) and np.isnan(res["ratio"])
    assert res["within"] == 0.0
    with pytest.raises(NSEError):
        embedding_seam_statistic(seamed, fg[:, :4], [[], [5]])
    with pytest.raises(NSEError):
        embedding_seam_statistic(seamed, fg, [[5]])


# -- evaluate / pool ---------------------------------------------------------------------


def test_evaluate_agrees_with_match_splits_and_ap():
    rng = np.random.default_rng(7)
    for _ in range(5):
        gt, pred = random_labels(rng), random_labels(rng)
        ev = evaluate(gt, pred)
        ap = average_precision(gt, pred)
        assert ev.dsb == pytest.approx(ap["mean"])
        assert list(ev.aps) == pytest.approx(ap["ap"])
        m = match(gt, pred, 0.5)
        assert ev.ap50 == pytest.approx(m["ap"])
        assert (ev.tp[0], ev.fp[0], ev.fn[0]) == (m["tp"], m["fp"], m["fn"])
        sm = splits_and_merges(gt, pred)
        assert (ev.false_splits, ev.false_merges) == (sm["false_splits"], sm["false_merges"])
        d = ev.to_dict()
        assert d["ap50"] == ev.ap50 and d["n_true"] == m["n_true"]


def test_evaluate_split_and_merge_counts():
    gt = image((20, 40), (1, S[2:10, 2:18]), (2, S[2:10, 22:38]), (3, S[12:18, 2:18]))
    # gt 1 split into two halves; gt 3 and gt 4 merged into one prediction
    pred = image((20, 40), (1, S[2:10, 2:10]), (2, S[2:10, 10:18]), (3, S[2:10, 22:38]),
                 (4, S[12:18, 2:38]))
    gt[12:18, 22:38] = 4
    ev = evaluate(gt, pred)
    assert ev.false_splits == 1 and ev.false_merges == 1
    assert ev.n_true == 4 and ev.n_pred == 4
    # gt 2 and one half of gt 1 (IoU exactly 0.5, and a match needs IoU >= 0.5)
    assert ev.tp[0] == 2 and ev.tp[1] == 1
    assert "splits 1 merges 1" in ev.summary()


def test_evaluate_perfect_and_empty():
    gt = image((10, 10), (1, S[1:4, 1:4]), (5, S[6:9, 6:9]))
    ev = evaluate(gt, gt)
    assert ev.ap50 == ev.dsb == 1.0 and ev.fp == (0,) * 10
    empty = evaluate(gt, np.zeros_like(gt))
    assert empty.ap50 == 0.0 and empty.fn[0] == 2 and empty.n_pred == 0
    with pytest.raises(NSEError, match="threshold"):
        ev.ap_at(0.42)
    with pytest.raises(NSEError):
        evaluate(gt, gt[:5])


def test_pool_sums_counts():
    rng = np.random.default_rng(3)
    pairs = [(random_labels(rng), random_labels(rng)) for _ in range(3)]
    evs = [evaluate(g, p) for g, p in pairs]
    pooled = pool(evs)
    assert pooled.n_images == 3
    assert pooled.tp[0] == sum(e.tp[0] for e in evs)
    assert pooled.false_splits == sum(e.false_splits for e in evs)
    # pooling equals evaluating the images side by side
    big_gt = np.concatenate([g + (g > 0) * 1000 * k for k, (g, _) in enumerate(pairs)], 1)
    big_pr = np.concatenate([p + (p > 0) * 1000 * k for k, (_, p) in enumerate(pairs)], 1)
    side = evaluate(big_gt, big_pr)
    assert side.tp == pooled.tp and side.fp == pooled.fp and side.fn == pooled.fn
    with pytest.raises(NSEError):
        pool([])
