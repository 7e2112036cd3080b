import numpy as np
import pytest
from scipy import ndimage

from napari_shift_equivariance.data import (
    NUCLEI_STYLES,
    cantor_image,
    mixed_nuclei_params,
    nuclei,
    periodic_disks,
    periodic_spheres,
    random_nuclei_params,
)
from napari_shift_equivariance.errors import NSEError

DISK_AREA_R5 = 81  # lattice points with dy^2 + dx^2 <= 25
BALL_VOLUME_R5 = 515


def assert_sequential(labels):
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    assert ids[0] == 0
    assert np.array_equal(ids[1:], np.arange(1, labels.max() + 1))


def assert_connected(labels, min_fraction=1.0):
    for i, box in enumerate(ndimage.find_objects(labels)):
        parts, n = ndimage.label(labels[box] == i + 1)
        assert n >= 1
        if n > 1:
            sizes = np.bincount(parts.ravel())[1:]
            assert sizes.max() >= min_fraction * sizes.sum()


def test_disks_on_a_16_lattice():
    image, labels = periodic_disks((128, 128), radius=5, spacing=16)
    assert image.dtype == np.float32
    assert_sequential(labels)
    assert labels.max() == 64
    assert np.all(np.bincount(labels.ravel())[1:] == DISK_AREA_R5)
    assert np.array_equal(image, (labels > 0).astype(np.float32))
    # centres at 8 + 16 k, numbered in raster order
    assert labels[8, 8] == 1 and labels[8, 24] == 2 and labels[24, 8] == 9
    assert np.array_equal(image[16:], image[:-16])
    assert np.array_equal(image[:, 16:], image[:, :-16])


def test_disks_spacing_15_and_offset():
    _, labels = periodic_disks((128, 128), spacing=15)
    # centres at 7 + 15 k, k = 0..8; the last row/column (centre 127) is cut by the border
    assert labels.max() == 81
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() < DISK_AREA_R5 and np.sum(sizes == DISK_AREA_R5) == 64
    image0, _ = periodic_disks((64, 64), spacing=16)
    image3, _ = periodic_disks((64, 64), spacing=16, offset=(3, 5))
    assert np.array_equal(image3[3:, 5:], image0[:-3, :-5])
    # an offset that moves a new column of disks in at the left border
    _, lab = periodic_disks((64, 64), spacing=16, offset=(0, -9))
    assert lab[8, 0] > 0 and lab.max() == 4 * 5
    assert_sequential(lab)


def test_disks_noise_and_elastic():
    image, labels = periodic_disks(noise=0.01, seed=1)
    assert np.var(image - (labels > 0)) == pytest.approx(0.01, rel=0.05)
    _, plain = periodic_disks()
    img_e, lab_e = periodic_disks(elastic=2.0, seed=3)
    # deformation may pull slivers of the disks beyond the border into the image
    assert lab_e.max() >= 64 and not np.array_equal(lab_e, plain)
    assert np.array_equal(img_e, (lab_e > 0).astype(np.float32))
    assert_sequential(lab_e)
    assert_connected(lab_e)
    again = periodic_disks(elastic=2.0, seed=3)
    assert np.array_equal(again[1], lab_e)
    paper, _ = periodic_disks(elastic=True, seed=3)  # sub-pixel jitter: few pixels change
    assert 0 < np.sum(paper != plain.astype(bool)) < 0.05 * plain.size


def test_spheres():
    image, labels = periodic_spheres((64, 64, 64), spacing=16)
    assert image.shape == (64, 64, 64)
    assert labels.max() == 64
    assert np.all(np.bincount(labels.ravel())[1:] == BALL_VOLUME_R5)
    with pytest.raises(NSEError):
        periodic_spheres((64, 64))
    with pytest.raises(NSEError):
        periodic_disks(spacing=10)  # disks would merge


def test_nuclei_2d_properties():
    image, labels = nuclei((192, 192), seed=4)
    assert image.dtype == np.float32 and image.shape == (192, 192)
    assert_sequential(labels)
    assert labels.max() > 20
    assert_connected(labels)
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() >= 4
    assert image[labels > 0].mean() > image[labels == 0].mean() + 0.2
    # varied size and elongation
    assert sizes.max() > 3 * np.median(sizes[sizes > 0]) / 2


def test_nuclei_deterministic_and_seed_dependent():
    a = nuclei((96, 96), seed=7)
    b = nuclei((96, 96), seed=7)
    c = nuclei((96, 96), seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_nuclei_touching_controls_contact():
    def contacts(labels):
        # pairs of different labels that are 4-neighbours
        n = 0
        for ax in range(labels.ndim):
            a = np.moveaxis(labels, ax, 0)
            x, y = a[1:], a[:-1]
            n += np.sum((x != y) & (x > 0) & (y > 0))
        return n

    _, apart = nuclei((160, 160), touching=0.0, seed=2)
    _, touch = nuclei((160, 160), touching=0.8, seed=2)
    assert contacts(apart) == 0
    assert contacts(touch) > 20
    assert_connected(touch)


def test_nuclei_count_and_no_noise():
    image, labels = nuclei((128, 128), n=10, radius=(5, 6), poisson=None, gaussian=0,
                           background=0.0, blur=0, texture=0.0, seed=1)
    assert labels.max() == 10
    assert image.min() >= 0 and np.all(image[labels == 0] == 0)


def test_nuclei_3d_anisotropic():
    image, labels = nuclei((24, 64, 64), anisotropy=3.0, radius=(6, 8), seed=0)
    assert image.shape == labels.shape == (24, 64, 64)
    assert_sequential(labels)
    assert_connected(labels)
    extents = np.array([[s.stop - s.start for s in box]
                        for box in ndimage.find_objects(labels)])
    # physical size is isotropic-ish, so z extents are about a third of the in-plane ones
    ratio = np.median(extents[:, 0]) / np.median(extents[:, 1:])
    assert 0.2 < ratio < 0.55


def test_nuclei_varied_style():
    p = random_nuclei_params(np.random.default_rng(0))
    assert set(p) >= {"radius", "brightness", "blur", "background", "poisson", "gaussian"}
    runs = [nuclei((96, 96), style="varied", seed=s) for s in range(3)]
    counts = {int(lab.max()) for _, lab in runs}
    assert len(counts) == 3
    for _, lab in runs:
        assert_sequential(lab)
    with pytest.raises(NSEError):
        nuclei((32, 32), style="fancy")
    with pytest.raises(NSEError):
        nuclei((32, 32), radius=(5, 2))
    with pytest.raises(NSEError):
        nuclei((32, 32), anisotropy=2.0)


def _mean_radius(labels):
    return np.sqrt(np.bincount(labels.ravel())[1:].mean() / np.pi)


def _touching_fraction(labels):
    """Fraction of objects that touch another one (8-neighbourhood)."""
    grown = ndimage.grey_dilation(labels, size=3)
    touch = (labels > 0) & (grown != labels) & (grown > 0)
    return len(np.unique(labels[touch])) / max(int(labels.max()), 1)


@pytest.mark.parametrize("style", [*NUCLEI_STYLES, "mixed", "mixed-halo"])
def test_nuclei_styles_2d_and_3d(style):
    for shape, aniso in (((128, 128), None), ((24, 64, 64), None), ((16, 64, 64), 2.5)):
        a = nuclei(shape, seed=4, style=style, anisotropy=aniso)
        b = nuclei(shape, seed=4, style=style, anisotropy=aniso)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert a[0].dtype == np.float32 and a[0].shape == shape
        assert a[1].max() >= (2 if len(shape) == 2 else 1)
        assert_sequential(a[1])
        assert_connected(a[1], 0.9)


def test_nuclei_styles_differ_as_named():
    looks = {s: nuclei((256, 256), seed=0, style=s) for s in NUCLEI_STYLES}
    count = {s: int(lab.max()) for s, (_, lab) in looks.items()}
    radius = {s: _mean_radius(lab) for s, (_, lab) in looks.items()}
    assert count["dense"] > 3 * count["sparse"]
    assert radius["large"] > 1.5 * radius["dense"]
    assert _touching_fraction(looks["dense"][1]) > 2 * _touching_fraction(looks["sparse"][1])

    def snr(image, labels):  # nucleus median over background spread
        bg = image[ndimage.binary_dilation(labels > 0, iterations=3) == 0]
        return (np.median(image[labels > 0]) - np.median(bg)) / bg.std()

    assert snr(*looks["dim"]) < 0.5 * snr(*looks["sparse"])


def test_new_appearance_options():
    base = dict(shape=(128, 128), seed=2, n=20, poisson=None, gaussian=0.0, blur=0.0)
    flat, lab = nuclei(**base)
    ramp, lab2 = nuclei(**base, gradient=0.5)
    assert np.array_equal(lab, lab2)  # same objects, brighter on one side
    diff = ramp - flat
    assert diff.min() >= -1e-6 and 0.45 < diff.max() <= 0.5 + 1e-5
    bright, lab3 = nuclei(**base, bright_fraction=1.0, bright=(5.0, 5.0), texture=0.0)
    assert bright[lab3 > 0].max() > 3 * flat[lab > 0].max()
    spread = nuclei(shape=(256, 256), seed=3, n=40, touching=0.0)[1]
    clumped = nuclei(shape=(256, 256), seed=3, n=40, touching=0.0, clumps=1.0)[1]

    def nn_distance(labels):
        c = np.array(ndimage.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        return np.median(d.min(1))

    assert nn_distance(clumped) < 0.8 * nn_distance(spread)
    p = mixed_nuclei_params(np.random.default_rng(0))
    assert set(p) >= set(NUCLEI_STYLES["dsb"])
    for bad in ({"gradient": -1}, {"clumps": 2.0}, {"bright_fraction": -0.1},
                {"bright": (2.0, 1.0)}):
        with pytest.raises(NSEError):
            nuclei((32, 32), **bad)


def test_glow_is_a_halo_beyond_the_outline():
    base = dict(shape=(128, 128), seed=5, n=12, poisson=None, gaussian=0.0, touching=0.0,
                background=0.0, texture=0.0)
    sharp, lab = nuclei(**base)
    halo, lab2 = nuclei(**base, glow=1.5, glow_sigma=6.0)
    assert np.array_equal(lab, lab2)  # the outlines stay where they were
    inside = lab > 0
    ring = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(inside)
    peak = lambda x: np.median(x[ndimage.binary_erosion(inside, iterations=2)])  # noqa: E731
    assert np.mean(halo[ring]) / peak(halo) > 2 * np.mean(sharp[ring]) / peak(sharp)
    assert np.array_equal(nuclei(**base, glow=0.0)[0], sharp)
    plain = mixed_nuclei_params(np.random.default_rng(1))
    with_halo = mixed_nuclei_params(np.random.default_rng(1), halo=1.0)
    assert "glow" not in plain
    assert 0 <= with_halo["glow"] <= 2.5 and 4 <= with_halo["glow_sigma"] <= 10
    assert {k: v for k, v in with_halo.items() if not k.startswith("glow")} == plain
    mixed = nuclei((96, 96), seed=6, style="mixed")[0]
    assert not np.array_equal(mixed, nuclei((96, 96), seed=6, style="mixed-halo")[0])
    for bad in ({"glow": -0.1}, {"glow_sigma": 0.0}):
        with pytest.raises(NSEError):
            nuclei((32, 32), **bad)
    with pytest.raises(NSEError, match="halo"):
        mixed_nuclei_params(np.random.default_rng(0), halo=1.5)


def test_cantor_image_order():
    assert np.array_equal(cantor_image((3, 3)), [[0, 1, 3], [2, 4, 6], [5, 7, 8]])
    img = cantor_image((4, 3, 5))
    assert img.dtype == np.float64
    assert np.array_equal(np.sort(img.ravel()), np.arange(60))
    pos = np.indices(img.shape).reshape(3, -1).T
    keys = sorted(map(tuple, pos), key=lambda p: (sum(p), p))
    values = [img[k] for k in keys]
    assert np.all(np.diff(values) > 0)
