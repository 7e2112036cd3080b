import numpy as np
import pytest

from napari_shift_equivariance.augment import (
    augment,
    elastic_field,
    smooth_field,
    zoom_field,
)
from napari_shift_equivariance.errors import NSEError

GEOMETRY_ONLY = dict(intensity_scale=None, intensity_offset=None, noise_std=None)


def marker(shape, pos, channels=None):
    image = np.zeros(shape, dtype=np.float32)
    image[pos] = 1.0
    labels = np.zeros(shape, dtype=np.int64)
    labels[pos] = 7
    if channels:
        image = np.stack([image * (c + 1) for c in range(channels)])
    return image, labels


@pytest.mark.parametrize("shape,pos", [((9, 9), (1, 3)), ((6, 6, 6), (0, 1, 4)),
                                       ((7, 5), (2, 1)), ((4, 6, 6), (1, 0, 2))])
def test_marker_moves_identically(shape, pos):
    image, labels = marker(shape, pos)
    seen = set()
    for seed in range(40):
        img, lab = augment(image, labels, np.random.default_rng(seed), **GEOMETRY_ONLY)
        assert img.shape == shape and lab.shape == shape
        assert img.dtype == np.float32 and lab.dtype == labels.dtype
        where_img = np.unravel_index(np.argmax(img), shape)
        assert tuple(np.argwhere(lab == 7)[0]) == where_img
        assert img.sum() == pytest.approx(1.0)
        seen.add(where_img)
    if shape == (9, 9):
        assert len(seen) == 8  # all rotations and reflections of the square occur
    if shape == (7, 5):
        assert len(seen) == 4  # non-square: flips only, axes never exchanged


def test_channel_axis_and_centred_labels():
    image, _ = marker((10, 10), (3, 6), channels=2)
    labels = np.zeros((6, 6), dtype=np.uint32)
    labels[3 - 2, 6 - 2] = 7  # a centred crop with margin 2
    for seed in range(20):
        img, lab = augment(image, labels, np.random.default_rng(seed), channel_axis=0,
                           **GEOMETRY_ONLY)
        assert img.shape == (2, 10, 10) and lab.shape == (6, 6)
        p = np.unravel_index(np.argmax(img[1]), (10, 10))
        assert np.argmax(img[0]) == np.argmax(img[1])
        assert tuple(np.argwhere(lab == 7)[0] + 2) == p
    last, _ = augment(np.moveaxis(image, 0, -1), labels + 0, np.random.default_rng(0),
                      channel_axis=-1, **GEOMETRY_ONLY)
    assert last.shape == (10, 10, 2)
    with pytest.raises(NSEError):
        augment(image, labels, np.random.default_rng(0), channel_axis=0, elastic=True)
    with pytest.raises(NSEError):
        augment(image[0], np.zeros((5, 5), dtype=np.uint32), np.random.default_rng(0))


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    labels = rng.integers(0, 5, (16, 16))
    kw = dict(elastic={"sigma": 3.0}, p_elastic=0.5)
    a = augment(image, labels, np.random.default_rng(3), **kw)
    b = augment(image, labels, np.random.default_rng(3), **kw)
    c = augment(image, labels, np.random.default_rng(4), **kw)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_in_plane_only_for_anisotropic_stacks():
    # every z plane has its own value: z must never be flipped, rotated or deformed
    z_values = np.arange(1, 7, dtype=np.float32)
    image = np.broadcast_to(z_values[:, None, None], (6, 6, 6)).copy()
    image[:, 1, 4] += 10  # in-plane marker
    labels = np.broadcast_to(np.arange(6)[:, None, None], (6, 6, 6)).copy()
    moved = set()
    for seed in range(30):
        img, lab = augment(image, labels, np.random.default_rng(seed), spatial_axes=(-2, -1),
                           elastic={"spacing": 3, "sigma": 1.0}, p_elastic=0.5,
                           **GEOMETRY_ONLY)
        for z in range(6):
            assert np.all(lab[z] == z)
            assert np.allclose(img[z].min(), z_values[z], atol=1e-4)
        moved.add(np.unravel_index(np.argmax(img[0]), (6, 6)))
    assert len(moved) > 4


def test_elastic_keeps_image_and_labels_together_and_label_values():
    rng = np.random.default_rng(1)
    labels = np.zeros((48, 48), dtype=np.int32)
    labels[8:20, 10:30] = 3
    labels[28:40, 20:44] = 9
    labels[:4] = -1  # unannotated
    image = (labels > 0).astype(np.float32)
    img, lab = augment(image, labels, rng, flips=False, rot90=False,
                       elastic={"spacing": 12, "sigma": 3.0}, **GEOMETRY_ONLY)
    assert set(np.unique(lab)) <= {-1, 0, 3, 9}
    assert not np.array_equal(lab, labels)  # it did deform
    agree = np.mean((img > 0.5) == (lab > 0))
    assert agree > 0.97


def test_intensity_augmentation_ranges():
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    labels = np.zeros((8, 8), dtype=np.uint8)
    for seed in range(10):
        img, _ = augment(image, labels, np.random.default_rng(seed), flips=False, rot90=False,
                         noise_std=None)
        scale = (img[-1, -1] - img[0, 0]) / 1.0
        offset = img[0, 0]
        assert 0.8 <= scale <= 1.2 and -0.1 <= offset <= 0.1
        assert np.allclose(img, image * scale + offset, atol=1e-5)
    noisy, _ = augment(image, labels, np.random.default_rng(0), flips=False, rot90=False,
                       intensity_scale=None, intensity_offset=None, noise_std=(0.1, 0.1))
    assert 0.05 < np.std(noisy - image) < 0.15


def test_smooth_and_elastic_fields():
    rng = np.random.default_rng(0)
    f = smooth_field((50, 70), 20, rng, sigma=2.0, count=3)
    assert f.shape == (3, 50, 70) and f.dtype == np.float32
    assert np.abs(np.diff(f, axis=2)).max() < 1.0  # smooth
    d = elastic_field((10, 30, 30), rng, spacing=10, sigma=1.0, axes=(1, 2))
    assert d.shape == (3, 10, 30, 30) and np.all(d[0] == 0) and np.abs(d[1]).max() > 0


def rotations(array):
    """All arrays reachable from ``array`` by 90° rotations (no reflections)."""
    seen = {array.tobytes(): array}
    todo = [array]
    while todo:
        a = todo.pop()
        for axes in [(0, 1), (1, 2)][: a.ndim - 1]:
            b = np.rot90(a, axes=axes)
            if b.tobytes() not in seen:
                seen[b.tobytes()] = b
                todo.append(b)
    return seen


@pytest.mark.parametrize("shape,n_rot", [((4, 4), 4), ((3, 3, 3), 24)])
def test_rot90_alone_gives_proper_rotations(shape, n_rot):
    labels = np.random.default_rng(0).permutation(np.prod(shape)).reshape(shape)
    allowed = rotations(labels)
    assert len(allowed) == n_rot
    seen = set()
    for seed in range(60):
        _, lab = augment(labels.astype(np.float32), labels, np.random.default_rng(seed),
                         flips=False, **GEOMETRY_ONLY)
        assert lab.tobytes() in allowed  # never a mirror image
        seen.add(lab.tobytes())
    assert len(seen) >= min(n_rot, 12)


def test_blur_softens_the_image_only_and_only_in_plane():
    image = np.zeros((4, 16, 16), dtype=np.float32)
    image[1, 8, 8] = 1.0
    labels = (image > 0).astype(np.int64) * 5
    kw = dict(flips=False, rot90=False, spatial_axes=(-2, -1), **GEOMETRY_ONLY)
    img, lab = augment(image, labels, np.random.default_rng(0), blur_sigma=(1.5, 1.5),
                       p_blur=1.0, **kw)
    assert np.array_equal(lab, labels)  # labels keep their sharp outline
    assert img[1].max() < 0.2 and img[1, 8, 9] > 0.01  # spread in the plane...
    assert np.allclose(img[[0, 2, 3]], 0) and np.isclose(img.sum(), 1.0, atol=1e-4)  # ...not in z


@pytest.mark.parametrize("setting", [{"blur_sigma": (1.0, 2.0)}, {"zoom": (0.5, 2.0)}])
def test_blur_and_zoom_off_draw_no_random_number(setting):
    # a recipe without them keeps its random stream (and so its bundled model) bit-identical
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    labels = rng.integers(0, 5, (16, 16))
    p = "p_blur" if "blur_sigma" in setting else "p_zoom"
    a = augment(image, labels, np.random.default_rng(3))
    b = augment(image, labels, np.random.default_rng(3), **setting, **{p: 0.0})
    c = augment(image, labels, np.random.default_rng(3), **setting, **{p: 1.0})
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_zoom_magnifies_image_and_labels_together_about_the_centre():
    labels = np.zeros((41, 41), dtype=np.int64)
    labels[16:25, 16:25] = 4  # 9 x 9 square in the middle
    labels[:3] = -1
    image = (labels > 0).astype(np.float32)
    img, lab = augment(image, labels, np.random.default_rng(0), flips=False, rot90=False,
                       zoom=(1.6, 1.6), p_zoom=1.0, **GEOMETRY_ONLY)
    assert set(np.unique(lab)) <= {-1, 0, 4}
    assert 180 <= np.sum(lab == 4) <= 240  # 81 px magnified 1.6x per axis: about 207
    bright, square = np.argwhere(img > 0.5), np.argwhere(lab == 4)
    assert np.allclose(bright.mean(0), (20, 20), atol=0.5)  # about the centre...
    assert np.allclose(square.mean(0), (20, 20), atol=0.5)  # ...both of them
    assert abs(len(bright) - len(square)) < 0.15 * len(square)
    field = zoom_field((5, 7), 2.0, axes=[1])
    assert np.allclose(field[0], 0) and np.allclose(field[1][0], [1.5, 1, 0.5, 0, -0.5, -1, -1.5])


def test_zoom_needs_labels_of_the_full_shape():
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    labels = np.zeros((8, 8), dtype=np.int64)
    with pytest.raises(NSEError, match="zoom need labels"):
        augment(image, labels, np.random.default_rng(0), zoom=(0.5, 2.0), p_zoom=1.0)
