import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.geometry import Coordinate, Roi, UNetGeometry, snap_down


def test_coordinate_arithmetic():
    a = Coordinate(4, 6)
    assert a + 1 == (5, 7)
    assert a - (1, 2) == (3, 4)
    assert a * 2 == (8, 12)
    assert a // (2, 4) == (2, 1)
    assert a % 4 == (0, 2)
    assert -a == (-4, -6)
    assert a.prod() == 24
    with pytest.raises(ValueError):
        a + (1, 2, 3)


def test_roi_operations():
    r = Roi((2, 3), (10, 20))
    assert r.end == (12, 23)
    assert r.grow(1, 2) == Roi((1, 2), (13, 23))
    assert r.intersect(Roi((0, 0), (5, 5))) == Roi((2, 3), (3, 2))
    assert r.intersect(Roi((50, 50), (5, 5))).empty()
    assert r.contains(Roi((3, 4), (2, 2)))
    assert not r.contains(Roi((0, 4), (2, 2)))
    assert r.to_slices() == (slice(2, 12), slice(3, 23))
    assert r.to_slices(relative_to=(2, 3)) == (slice(0, 10), slice(0, 20))
    assert r.to_list() == [[2, 12], [3, 23]]
    assert r.shift((1, -1)) == Roi((3, 2), (10, 20))


@pytest.mark.parametrize(
    "depth, inp, out",
    # the paper's notebooks (f=2, two 3x3 convs per block)
    [(4, 204, 20), (4, 236, 52), (4, 284, 100), (3, 220, 132)],
)
def test_sizes_match_the_papers_notebooks(depth, inp, out):
    g = UNetGeometry.create(2, depth, 2)
    assert g.output_size(inp) == (out, out)
    assert g.input_size(out) == (inp, inp)


def test_grid_capacity_context():
    g = UNetGeometry.create(3, 3, 2)
    assert g.grid == (8, 8, 8)
    assert g.capacity == 8**3
    assert g.context == (88, 88, 88)
    a = UNetGeometry.create(3, 2, (1, 2, 2))
    assert a.grid == (1, 4, 4)
    assert a.capacity == 16
    assert a.context[0] == 2 * 4 * 2 + 4  # factor 1: 8 per level + bottom


@pytest.mark.parametrize("f", [2, 3, 4])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_valid_outputs_step_by_grid(depth, f):
    g = UNetGeometry.create(2, depth, f)
    sizes = g.valid_output_sizes(4)[0]
    assert sizes[0] == g.min_output[0] >= 1
    assert all(b - a == f**depth for a, b in zip(sizes, sizes[1:]))
    for s in sizes:
        assert g.is_valid_output(s)
        assert not g.is_valid_output(s + 1)
    # the smallest input really is the smallest: one grid step less is invalid or empty
    assert not g.is_valid_input(g.min_input[0] - f**depth)


def test_invalid_size_error_names_neighbours():
    g = UNetGeometry.create(2, 4, 2)
    with pytest.raises(NSEError, match=r"nearest valid sizes: \(204, 204\) and \(220, 220\)"):
        g.output_size(210)


def test_input_size_rounds_up():
    g = UNetGeometry.create(2, 4, 2)
    assert g.valid_output_above(16) == (20, 20)
    assert g.valid_output_above(20) == (20, 20)
    assert g.valid_output_above(1) == (4, 4)


@pytest.mark.parametrize(
    "kwargs",
    [dict(ndim=4, depth=2, factor=2), dict(ndim=2, depth=0, factor=2),
     dict(ndim=2, depth=9, factor=2), dict(ndim=2, depth=2, factor=1),
     dict(ndim=2, depth=2, factor=(2, 2, 2)), dict(ndim=2, depth=2, factor=20)],
)
def test_out_of_range(kwargs):
    with pytest.raises(NSEError):
        UNetGeometry.create(**kwargs)


def test_snap_down():
    assert snap_down((37, 16, 15), (16, 16, 16)) == (32, 16, 0)
