"""Tests of the Otsu + distance-transform watershed baseline (baseline.py)."""

import numpy as np
import pytest

from napari_shift_equivariance.baseline import watershed_baseline
from napari_shift_equivariance.data import nuclei, periodic_disks
from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.metrics import evaluate


def test_separated_disks_are_found_exactly():
    image, labels = periodic_disks((96, 96), radius=5, spacing=16)
    pred = watershed_baseline(image, sigma=0.5)
    assert pred.dtype == np.uint32
    assert evaluate(labels, pred).ap50 == 1.0


def test_touching_pair_is_split():
    yy, xx = np.indices((40, 60))
    a = (yy - 20) ** 2 + (xx - 22) ** 2 <= 64
    b = (yy - 20) ** 2 + (xx - 37) ** 2 <= 64
    gt = (a * 1 + (b & ~a) * 2).astype(np.int32)
    pred = watershed_baseline((gt > 0).astype(np.float32), sigma=0)
    ev = evaluate(gt, pred)
    assert ev.n_pred == 2 and ev.ap50 == 1.0 and ev.false_merges == 0


def test_generated_nuclei_2d_and_3d():
    image, labels = nuclei((128, 128), seed=1, touching=0.0, radius=(6, 9))
    assert evaluate(labels, watershed_baseline(image)).ap50 > 0.7
    image3, labels3 = nuclei((24, 64, 64), seed=2, touching=0.0, radius=(5, 7), n=12)
    pred3 = watershed_baseline(image3, min_distance=4)
    assert pred3.shape == labels3.shape and evaluate(labels3, pred3).ap50 > 0.5


def test_blank_image_and_bad_input():
    assert watershed_baseline(np.zeros((32, 32))).max() == 0
    with pytest.raises(NSEError):
        watershed_baseline(np.zeros((2, 3, 4, 5)))
    with pytest.raises(NSEError):
        watershed_baseline(np.zeros((8, 8)), min_distance=0)
