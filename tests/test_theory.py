"""The paper's constructions: the capacity bound f^(d*l) is reached, and not exceeded."""

import numpy as np
import pytest

from napari_shift_equivariance import theory


def test_cantor_image_is_strictly_increasing_along_the_ordering():
    img = theory.cantor_image((4, 5))
    coords = sorted(np.ndindex(4, 5), key=lambda c: (sum(c), c))
    values = [img[c] for c in coords]
    assert values == sorted(values) and len(set(values)) == img.size


@pytest.mark.parametrize("ndim, depth, factor", [(2, 1, 2), (2, 2, 2), (2, 3, 2), (2, 1, 3),
                                                 (3, 1, 2), (3, 2, 2), (2, 2, (1, 2))])
def test_lemma1_reaches_the_capacity(ndim, depth, factor):
    model = theory.lemma1_unet(ndim, depth, factor)
    capacity = model.config.geometry.capacity
    assert theory.lemma1_count(ndim, depth, factor) == capacity


@pytest.mark.parametrize("ndim, depth, factor", [(2, 1, 2), (2, 2, 2), (2, 1, 3), (3, 1, 2)])
def test_lemma1_no_more_than_capacity_over_two_periods(ndim, depth, factor):
    # shifts by f^l give the same functions back (part II): still exactly f^(d*l)
    model = theory.lemma1_unet(ndim, depth, factor)
    assert theory.lemma1_count(ndim, depth, factor, periods=2) == model.config.geometry.capacity


def test_lemma1_output_is_blockwise_max():
    model = theory.lemma1_unet(2, 2, 2)
    g = model.config.geometry
    img = np.random.default_rng(0).random(tuple(g.input_size(g.grid * 3)))
    out = theory._forward(model, img)
    # piecewise constant on f^l blocks (the max of one input block), whatever the block phase
    for axis in (0, 1):
        line = out[:, 5] if axis == 0 else out[5, :]
        changes = np.flatnonzero(np.diff(line)) + 1
        assert len(changes) >= 2
        assert len({int(c) % 4 for c in changes}) == 1


@pytest.mark.parametrize("ndim, depth, factor", [(2, 1, 2), (2, 2, 2), (2, 3, 2), (2, 2, 3),
                                                 (3, 2, 2)])
def test_cor5_unique_ids_from_a_constant_image(ndim, depth, factor):
    capacity = theory.cor5_unet(ndim, depth, factor).config.geometry.capacity
    assert theory.cor5_count(ndim, depth, factor, "learnt") == capacity
    assert theory.cor5_count(ndim, depth, factor, "nearest") == 1


def test_primes():
    assert theory.first_primes(6) == [2, 3, 5, 7, 11, 13]
