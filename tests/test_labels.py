"""Label helpers: checks, renumbering, size filters, IDs in several pieces."""

import numpy as np
import pytest

from napari_shift_equivariance import data
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.labels import (
    check_labels,
    foreground,
    instance_ids,
    instance_sizes,
    relabel_sequential,
    relative_size_threshold,
    remove_relative,
    remove_small,
    split_instances,
    split_message,
)


def test_relabel_sequential_keeps_order_and_starts_where_asked():
    lab = np.array([[0, 7, 7], [3, 0, 9]])
    out, k = relabel_sequential(lab, start=5)
    assert k == 3 and out.dtype == np.uint32
    np.testing.assert_array_equal(out, [[0, 6, 6], [5, 0, 7]])
    empty, k = relabel_sequential(np.zeros((2, 2), int))
    assert k == 0 and not empty.any()
    assert data.relabel_sequential is relabel_sequential  # the old import path still works


def test_remove_small_drops_and_renumbers_without_touching_the_input():
    lab = np.zeros((10, 10), np.int32)
    lab[0, :3] = 4      # 3 px
    lab[5:9, 5:9] = 9   # 16 px
    lab[2, 2] = 2       # 1 px
    before = lab.copy()
    out = remove_small(lab, 3)
    np.testing.assert_array_equal(lab, before)
    assert instance_sizes(out) == {1: 3, 2: 16}
    assert instance_sizes(remove_small(lab, 0)) == {1: 1, 2: 3, 3: 16}
    with pytest.raises(NSEError, match="non-negative"):
        remove_small(-lab, 2)


def test_split_instances_counts_pieces_2d_and_3d():
    lab = np.zeros((12, 12), np.int32)
    lab[0:2, 0:2] = 5
    lab[6:8, 6:8] = 5       # ID 5: two pieces
    lab[10, 0] = lab[10, 5] = lab[10, 10] = 3  # ID 3: three pieces
    lab[3:5, 8:10] = 1      # one piece
    lab[5, 5] = 1           # ID 1: a second piece, apart from the first
    assert split_instances(lab) == {5: 2, 3: 3, 1: 2}
    diag = np.zeros((4, 4), np.int32)
    diag[0, 0] = diag[1, 1] = 2
    assert split_instances(diag) == {}                 # touching diagonally: one object
    assert split_instances(diag, connectivity=1) == {2: 2}
    vol = np.zeros((5, 6, 6), np.int32)
    vol[0, :2, :2] = 4
    vol[4, :2, :2] = 4
    assert split_instances(vol) == {4: 2}
    msg = split_message({5: 2, 3: 3}, "labels 1")
    assert "2 instance ID(s)" in msg and "ID 3: 3 pieces" in msg


def test_ignored_pixels_are_not_instances():
    lab = np.array([[0, -1, 2], [-1, 2, 0], [5, 0, -1]])
    assert instance_ids(lab, -1).tolist() == [2, 5]
    assert foreground(lab, -1).sum() == 3
    assert split_instances(lab, ignore_index=-1) == {}


def test_check_labels_errors():
    with pytest.raises(NSEError, match="integers"):
        check_labels(np.zeros((3, 3), np.float32))
    with pytest.raises(NSEError, match="ignore_index"):
        check_labels(np.array([[-2, 0], [1, 1]]))
    assert check_labels(np.array([[-2, 0], [1, 1]]), ignore_index=-2).shape == (2, 2)


def test_touching_borders_and_the_boundary_gap():
    from napari_shift_equivariance.labels import touching_borders, with_boundary_gap

    lab = np.zeros((6, 10), np.int64)
    lab[1:5, 1:5], lab[1:5, 5:9] = 1, 2  # touching along columns 4 | 5
    lab[0, 0] = 7  # the ignore value: nobody's, it never makes a border
    border = touching_borders(lab, ignore_index=7)
    assert border[1:5, 4].all() and border[1:5, 5].all()
    assert border.sum() == 8 and not border[:, :4].any() and not border[:, 6:].any()
    gap = with_boundary_gap(lab, ignore_index=7)
    assert (gap[1:5, 4:6] == 0).all() and gap[0, 0] == 7 and lab[1, 4] == 1  # a copy
    assert not touching_borders(np.where(lab == 2, 0, lab), 7).any()  # alone: no border


def test_relative_size_threshold_is_a_fraction_of_the_median():
    assert relative_size_threshold([10, 100, 200], 0.3) == 30
    assert relative_size_threshold([10, 100, 200], 0.25) == 25
    assert relative_size_threshold([7, 9], 0.5) == 4  # median 8
    assert relative_size_threshold([], 0.3) == 0 and relative_size_threshold([5], 0) == 0


def test_remove_relative_drops_fragments_of_each_images_own_scale():
    big = np.zeros((40, 40), np.uint16)
    big[0:10, 0:10], big[20:30, 0:10], big[0:10, 20:30] = 3, 5, 7  # 100 px each
    big[35:37, 35:37] = 9  # a 4 px fragment
    out, threshold = remove_relative(big, 0.2)
    assert threshold == 20 and out.dtype == np.uint32
    assert sorted(instance_sizes(out).values()) == [100, 100, 100]
    assert np.array_equal(np.unique(out), [0, 1, 2, 3])
    small = (big // 10).astype(np.uint16)  # nothing: all zero
    assert remove_relative(small, 0.2)[1] == 0
    tiny = np.zeros((8, 8), np.uint8)
    tiny[0:2, 0:2], tiny[4:6, 4:6], tiny[7, 7] = 1, 2, 3  # 4, 4, 1 px: the scale is the image's
    out, threshold = remove_relative(tiny, 0.5)
    assert threshold == 2 and sorted(instance_sizes(out).values()) == [4, 4]
    assert remove_relative(tiny, 0.0)[0] is not None and tiny.max() == 3  # input unchanged
