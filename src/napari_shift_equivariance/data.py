"""Synthetic images with instance labels: the demo, tests, sample data and training recipe.

Nothing is downloaded. Every generator takes a ``seed`` and returns the same result for the
same seed; images are float32, labels uint32 with 0 = background and instances 1..K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .augment import elastic_field, smooth_field
from .errors import NSEError
from .labels import relabel_sequential  # also importable as data.relabel_sequential

#: Elastic deformation of the paper's disk experiments: control points every 20 px,
#: jittered by N(0, 0.2) px (a sub-pixel jitter: disks stop being exact copies of each other).
PAPER_ELASTIC = {"spacing": 20.0, "sigma": 0.2}


def _per_axis(value: float | Sequence[float], ndim: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.shape != (ndim,):
        raise NSEError(f"{name} needs 1 or {ndim} values, got {arr.size}")
    return arr


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise NSEError(f"shape must have 2 or 3 positive entries, got {shape}")
    return shape


# -- the paper's disks -----------------------------------------------------------------


def periodic_disks(
    shape: Sequence[int] = (128, 128),
    radius: float = 5.0,
    spacing: int | Sequence[int] = 16,
    offset: int | Sequence[int] = 0,
    noise: float = 0.0,
    elastic: bool | float | dict[str, float] = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Identical binary disks (spheres in 3D) on a square (cubic) lattice (the paper's Fig. 2).

    Parameters
    ----------
    shape
        2 or 3 entries.
    radius
        Disk radius in pixels; a pixel belongs to a disk when its distance to the centre is
        at most ``radius``.
    spacing
        Lattice period per axis (one int for all). 16 = ``n * f^l`` for ``f=2, l<=4``: the
        network cannot tell the disks apart; 15 is co-prime with 8.
    offset
        Shift of the lattice: centres lie at ``offset + spacing // 2 + k * spacing`` for every
        integer ``k`` whose disk touches the image (disks at the borders may be cut).
    noise
        Variance of additive Gaussian noise (the paper used 0.01).
    elastic
        ``True``: the paper's deformation (:data:`PAPER_ELASTIC`); a float: jitter sigma in
        pixels with control points every 20 px; a dict ``{"spacing", "sigma"}`` in pixels.
        Image and labels are deformed together (the disks are rendered at the deformed
        positions, so labels are exact and image = labels > 0 before noise).
    seed
        Seed for the deformation and the noise.

    Returns
    -------
    image, labels
        float32 image (1 inside disks, 0 outside, plus noise) and uint32 labels numbered
        1..K in raster order of the lattice.
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    sp = _per_axis(spacing, ndim, "spacing")
    off = _per_axis(offset, ndim, "offset")
    if radius <= 0:
        raise NSEError(f"radius must be positive, got {radius}")
    if np.any(sp <= 2 * radius):
        raise NSEError(f"spacing {tuple(sp)} must exceed the diameter {2 * radius} (disks merge)")
    if noise < 0:
        raise NSEError(f"noise is a variance and cannot be negative, got {noise}")
    rng = np.random.default_rng(seed)

    coords = np.indices(shape, dtype=np.float32)
    if elastic is not False and elastic is not None:
        params = dict(PAPER_ELASTIC)
        if isinstance(elastic, dict):
            params.update(elastic)
        elif not isinstance(elastic, bool):
            params["sigma"] = float(elastic)
        coords += elastic_field(shape, rng, params["spacing"], params["sigma"])

    first = off + sp // 2
    k_min = np.floor((-radius - first) / sp).astype(int)
    k_max = np.ceil((np.array(shape) - 1 + radius - first) / sp).astype(int)
    inside = np.ones(shape, dtype=bool)
    d2 = np.zeros(shape, dtype=np.float32)
    index = np.zeros(shape, dtype=np.int64)
    for a in range(ndim):
        rel = coords[a] - np.float32(first[a])
        k = np.rint(rel / np.float32(sp[a]))
        d2 += (rel - k * np.float32(sp[a])) ** 2
        k = k.astype(np.int64) - k_min[a]
        inside &= (k >= 0) & (k <= k_max[a] - k_min[a])
        index = index * (k_max[a] - k_min[a] + 1) + np.clip(k, 0, k_max[a] - k_min[a])
    inside &= d2 <= np.float32(radius) ** 2
    labels, _ = relabel_sequential(np.where(inside, index + 1, 0))

    image = inside.astype(np.float32)
    if noise > 0:
        image += rng.normal(0.0, math.sqrt(noise), size=shape).astype(np.float32)
    return image, labels


def periodic_spheres(
    shape: Sequence[int] = (64, 64, 64), radius: float = 5.0, spacing: int | Sequence[int] = 16,
    offset: int | Sequence[int] = 0, noise: float = 0.0,
    elastic: bool | float | dict[str, float] = False, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`periodic_disks` in 3D: spheres on a cubic lattice."""
    if len(shape) != 3:
        raise NSEError(f"periodic_spheres needs a 3D shape, got {tuple(shape)}")
    return periodic_disks(shape, radius, spacing, offset, noise, elastic, seed)


# -- nuclei-like fluorescence ----------------------------------------------------------


def random_nuclei_params(rng: np.random.Generator, ndim: int = 2) -> dict[str, Any]:
    """Widely varied settings for :func:`nuclei` (sizes, density, brightness, blur, SNR).

    Meant for training a model that generalises: each call draws one "microscope and
    sample". Returns keyword arguments for :func:`nuclei`.
    """
    r_lo = rng.uniform(3.0, 9.0) if ndim == 2 else rng.uniform(3.0, 7.0)
    b_lo = rng.uniform(0.1, 0.8)
    return {
        "radius": (r_lo, r_lo * rng.uniform(1.2, 2.2)),
        "elongation": (1.0, rng.uniform(1.05, 2.5)),
        "brightness": (b_lo, rng.uniform(min(b_lo + 0.1, 1.0), 1.0)),
        "touching": rng.uniform(0.0, 0.6),
        "blur": rng.uniform(0.3, 2.5),
        "background": rng.uniform(0.0, 0.3),
        "poisson": 10.0 ** rng.uniform(1.0, 3.0),
        "gaussian": 10.0 ** rng.uniform(-2.5, -1.1),
        "texture": rng.uniform(0.0, 0.6),
        "density": rng.uniform(0.05, 0.35),
    }


#: Named looks of :func:`nuclei` (``style=NAME``): appearance settings only, so every style
#: works in 2D and 3D, isotropic or not. ``dsb`` imitates the 2018 Data Science Bowl
#: fluorescence images: mostly dim, textured nuclei of radius ~8-14 px and a few bright ones.
NUCLEI_STYLES: dict[str, dict[str, Any]] = {
    "sparse": {"radius": (5.0, 9.0), "elongation": (1.0, 1.6), "brightness": (0.4, 1.0),
               "touching": 0.05, "density": 0.06, "blur": 1.0, "background": 0.05,
               "poisson": 200.0, "gaussian": 0.02, "texture": 0.3, "gradient": 0.0,
               "bright_fraction": 0.0, "clumps": 0.0},
    "dense": {"radius": (4.0, 8.0), "elongation": (1.0, 1.8), "brightness": (0.3, 1.0),
              "touching": 0.6, "density": 0.35, "blur": 1.0, "background": 0.05,
              "poisson": 200.0, "gaussian": 0.02, "texture": 0.3, "gradient": 0.1,
              "bright_fraction": 0.0, "clumps": 0.5},
    "dim": {"radius": (5.0, 10.0), "elongation": (1.0, 1.8), "brightness": (0.1, 0.3),
            "touching": 0.25, "density": 0.15, "blur": 1.5, "background": 0.05,
            "poisson": 30.0, "gaussian": 0.03, "texture": 0.3, "gradient": 0.15,
            "bright_fraction": 0.0, "clumps": 0.2},
    "large": {"radius": (12.0, 20.0), "elongation": (1.0, 1.8), "brightness": (0.3, 1.0),
              "touching": 0.3, "density": 0.2, "blur": 1.5, "background": 0.05,
              "poisson": 200.0, "gaussian": 0.02, "texture": 0.5, "gradient": 0.1,
              "bright_fraction": 0.0, "clumps": 0.2},
    "dsb": {"radius": (8.0, 14.0), "elongation": (1.0, 1.8), "brightness": (0.2, 0.45),
            "touching": 0.2, "density": 0.15, "blur": 1.0, "background": 0.03,
            "poisson": 300.0, "gaussian": 0.01, "texture": 0.35, "gradient": 0.03,
            "bright_fraction": 0.05, "bright": (0.8, 1.2), "clumps": 0.3},
}


def mixed_nuclei_params(rng: np.random.Generator, ndim: int = 2,
                        halo: float = 0.0) -> dict[str, Any]:
    """One of :data:`NUCLEI_STYLES` drawn from ``rng``, its sizes, brightness and noise
    jittered: the training mix of the default models (``style="mixed"``).

    ``halo``: the chance of out-of-focus light around the nuclei (``glow`` 0-2.5 of their
    light, ``glow_sigma`` 4-10 px), as real fluorescence images have beyond the annotated
    outlines (``scripts/edge_profile.py``); ``style="mixed-halo"`` gives every image one."""
    if not 0 <= halo <= 1:
        raise NSEError(f"halo is a chance from 0 to 1, got {halo}")
    name = list(NUCLEI_STYLES)[int(rng.integers(len(NUCLEI_STYLES)))]
    p = dict(NUCLEI_STYLES[name])
    size = rng.uniform(0.7, 1.3) * (0.7 if ndim == 3 else 1.0)
    p["radius"] = tuple(r * size for r in p["radius"])
    gain = 10.0 ** rng.uniform(-0.3, 0.3)
    p["brightness"] = tuple(b * gain for b in p["brightness"])
    p["blur"] *= rng.uniform(0.6, 1.5)
    p["poisson"] *= 10.0 ** rng.uniform(-0.5, 0.5)
    p["gaussian"] *= rng.uniform(0.5, 2.0)
    p["texture"] = float(np.clip(p["texture"] + rng.uniform(-0.2, 0.2), 0.0, 0.8))
    p["bright_fraction"] = float(rng.choice([0.0, 0.03, 0.08]))
    p.setdefault("bright", (0.8, 1.2))
    p["gradient"] = float(rng.uniform(0.0, 0.2))
    # a background up to 0.4 of the nuclei's mean brightness: real fluorescence images have
    # a third (the real nuclei's training rows), every named style a tenth or less
    p["background"] = max(p["background"], float(np.mean(p["brightness"]))
                          * float(rng.uniform(0.02, 0.4)))
    if halo > 0 and rng.uniform() < halo:
        p["glow"] = float(rng.uniform(0.0, 2.5))
        p["glow_sigma"] = float(rng.uniform(4.0, 10.0))
    return p


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        t = rng.uniform(0, 2 * np.pi)
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


class _Placer:
    """Places ellipses/ellipsoids one by one, each drawn only inside its bounding box."""

    GAP = 1.5  # free margin (physical px) around an object that may not touch others
    MAX_OVERLAP = 0.12  # a touching object may lose at most this fraction to earlier ones
    WOBBLE = 0.05  # amplitude of each of the three boundary undulations

    def __init__(self, shape: tuple[int, ...], scale: np.ndarray):
        self.shape = shape
        self.ndim = len(shape)
        self.scale = scale
        self.labels = np.zeros(shape, dtype=np.uint32)
        self.image = np.zeros(shape, dtype=np.float32)
        self.centres: list[np.ndarray] = []  # physical units
        self.radii: list[float] = []
        self.count = 0

    def try_place(self, rng: np.random.Generator, p: dict[str, Any]) -> bool:
        ndim, scale = self.ndim, self.scale
        r = rng.uniform(*p["radius"])
        e = rng.uniform(*p["elongation"])
        semi = r * np.array([math.sqrt(e), 1 / math.sqrt(e), rng.uniform(0.8, 1.1)][:ndim])
        touch = self.count > 0 and rng.random() < p["touching"]
        if touch:
            # next to an earlier object: touching pairs as after a division
            j = int(rng.integers(self.count))
            u = rng.normal(size=ndim)
            u /= np.linalg.norm(u)
            dist = (self.radii[j] + semi.min()) * rng.uniform(0.75, 1.0)
            centre = (self.centres[j] + u * dist) / scale
        elif self.count > 0 and p.get("clumps", 0) > 0 and rng.random() < p["clumps"]:
            # near an earlier object but not against it: clusters of cells
            j = int(rng.integers(self.count))
            u = rng.normal(size=ndim)
            u /= np.linalg.norm(u)
            dist = (self.radii[j] + semi.max()) * rng.uniform(1.1, 1.8)
            centre = (self.centres[j] + u * dist) / scale
        else:
            centre = rng.uniform(0, self.shape)
        ci = tuple(int(c) for c in centre)
        if any(not 0 <= c < s for c, s in zip(ci, self.shape)) or self.labels[ci]:
            return False

        rot = _rotation(rng, ndim)
        a_phys = rot @ np.diag(1 / semi**2) @ rot.T
        a_vox = a_phys * np.outer(scale, scale)
        grow = 1 + 3 * self.WOBBLE + self.GAP / semi.min()
        half = np.sqrt(np.diag(rot @ np.diag(semi**2) @ rot.T)) / scale * grow + 1
        lo = np.maximum(np.floor(centre - half).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return False
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        xs = []
        for i in range(ndim):
            x = np.arange(lo[i], hi[i], dtype=np.float32) - np.float32(centre[i])
            xs.append(x.reshape([-1 if k == i else 1 for k in range(ndim)]))
        q = sum(a_vox[i, j] * (1 if i == j else 2) * xs[i] * xs[j]
                for i in range(ndim) for j in range(i, ndim))
        xp = [x * np.float32(s) for x, s in zip(xs, scale)]
        norm = np.sqrt(sum(x * x for x in xp)) + np.float32(1e-6)
        wobble = np.float32(1)
        for _ in range(3):
            u = rng.normal(size=ndim)
            u /= np.linalg.norm(u)
            proj = sum(np.float32(c) * x for c, x in zip(u, xp)) / norm
            amp, freq, phase = rng.uniform(0, self.WOBBLE), rng.integers(1, 4), rng.uniform(0, 7)
            wobble = wobble + np.float32(amp) * np.cos(np.float32(freq * np.pi) * proj + phase)
        d = np.sqrt(q) * wobble
        mask = d < 1
        occupied = self.labels[box] != 0
        if not touch and np.any(occupied & (d < 1 + self.GAP / semi.min())):
            return False
        area = int(mask.sum())
        lost = int(np.count_nonzero(occupied & mask))
        if area == 0 or lost > self.MAX_OVERLAP * area:
            return False
        visible = mask & ~occupied
        full = (math.pi if ndim == 2 else 4 / 3 * math.pi) * np.prod(semi) / np.prod(scale)
        n_visible = area - lost
        if n_visible < max(0.25 * full, 4):  # a sliver cut by the border or by neighbours
            return False
        if lost:
            parts, n_parts = ndimage.label(visible)
            if n_parts > 1:
                sizes = np.bincount(parts.ravel())[1:]
                if sizes.max() < 0.9 * n_visible:
                    return False
                visible = parts == int(np.argmax(sizes)) + 1

        self.count += 1
        self.labels[box][visible] = self.count
        b = rng.uniform(*p["brightness"])
        if p.get("bright_fraction", 0) > 0 and rng.random() < p["bright_fraction"]:
            b = rng.uniform(*p["bright"])  # a few much brighter nuclei (mitoses, debris)
        profile = np.float32(b) * (np.float32(1) - np.float32(0.25) * np.minimum(d, 1) ** 2)
        # overlaps add up, as fluorescence does; the label goes to the earlier object
        self.image[box] += np.where(mask, profile, np.float32(0))
        self.centres.append(centre * scale)
        self.radii.append(float(semi.max()))
        return True


def nuclei(
    shape: Sequence[int] = (256, 256),
    n: int | None = None,
    radius: tuple[float, float] = (4.0, 12.0),
    elongation: tuple[float, float] = (1.0, 2.0),
    brightness: tuple[float, float] = (0.3, 1.0),
    touching: float = 0.3,
    blur: float = 1.0,
    background: float = 0.05,
    poisson: float | None = 200.0,
    gaussian: float = 0.02,
    anisotropy: float | None = None,
    seed: int = 0,
    *,
    texture: float = 0.3,
    density: float = 0.15,
    style: str = "default",
    gradient: float = 0.0,
    bright_fraction: float = 0.0,
    bright: tuple[float, float] = (0.8, 1.0),
    clumps: float = 0.0,
    glow: float = 0.0,
    glow_sigma: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Nuclei-like fluorescence image with its instance labels, 2D or 3D.

    Ellipses (ellipsoids) of varied size, orientation, elongation and brightness with slightly
    wavy outlines and inner texture, some touching, blurred by a Gaussian PSF, on an uneven
    background, with Poisson (shot) and Gaussian (read) noise.

    Parameters
    ----------
    shape
        2 or 3 entries (``(z, y, x)`` in 3D).
    n
        Number of nuclei to place; ``None``: from ``density``. Fewer are placed when the
        image is too crowded.
    radius
        Range of the mean radius in physical pixels (the x/y pixel size).
    elongation
        Range of the ratio ``e`` of the two longest semi-axes (``r*sqrt(e)`` and
        ``r/sqrt(e)``; in 3D the third is ``0.8–1.1 r``).
    brightness
        Range of each nucleus' peak intensity.
    touching
        Fraction of nuclei placed against an earlier one, overlapping by at most 12 % of their
        area (the earlier nucleus keeps the overlap); all others keep a gap of 1.5 px.
    blur
        PSF sigma in pixels (in 3D the axial sigma is ``2 * blur / anisotropy`` slices).
    background
        Mean background offset (smoothly uneven by about ±15 %).
    poisson
        Photons per unit intensity for shot noise; ``None`` or 0 disables it.
    gaussian
        Standard deviation of the read noise.
    anisotropy
        3D only: z pixel size relative to the in-plane pixel size (nuclei look flatter in z).
    seed
        Seed; the same seed gives the same image.
    texture
        Strength of the inner chromatin-like texture (0 = flat).
    density
        Target area (volume) fraction covered by nuclei when ``n`` is None.
    style
        ``"default"`` uses the arguments; ``"varied"`` replaces the appearance arguments by
        :func:`random_nuclei_params` drawn from the seed; a name in :data:`NUCLEI_STYLES`
        (``"sparse"``, ``"dense"``, ``"dim"``, ``"large"``, ``"dsb"``) replaces them by
        that style's settings; ``"mixed"`` draws one of those styles from the seed and
        jitters it (:func:`mixed_nuclei_params`); ``"mixed-halo"`` also adds a halo of
        out-of-focus light (``glow``). ``shape``, ``n`` and ``anisotropy`` are
        always kept.
    gradient
        Amplitude of a linear illumination ramp across the field, in a random direction.
    bright_fraction, bright
        Fraction of nuclei whose brightness is drawn from ``bright`` instead (a few very
        bright nuclei, as mitoses are: they set the top percentile and the rest look dim
        after normalisation).
    clumps
        Fraction of the other nuclei placed near (not against) an earlier one: cell clusters.
    glow, glow_sigma
        Out-of-focus light: each nucleus also spreads ``glow`` times its light with a wide
        Gaussian of ``glow_sigma`` pixels, a dim halo that fades over several pixels beyond
        its outline (the labels keep the sharp outline, as annotators draw it on real
        fluorescence nuclei). In 3D the axial sigma is ``2 * glow_sigma / anisotropy``
        slices, as for ``blur``.

    Returns
    -------
    image, labels
        float32 image (nuclei peak at their brightness, more where they overlap, plus
        background and noise) and uint32 labels 1..K, each one non-empty connected object.
    """
    shape = _check_shape(shape)
    ndim = len(shape)
    rng = np.random.default_rng(seed)
    params: dict[str, Any] = {
        "radius": radius, "elongation": elongation, "brightness": brightness,
        "touching": touching, "blur": blur, "background": background, "poisson": poisson,
        "gaussian": gaussian, "texture": texture, "density": density, "gradient": gradient,
        "bright_fraction": bright_fraction, "bright": bright, "clumps": clumps,
        "glow": glow, "glow_sigma": glow_sigma,
    }
    if style == "varied":
        params.update(random_nuclei_params(rng, ndim))
    elif style in ("mixed", "mixed-halo"):
        params.update(mixed_nuclei_params(rng, ndim, halo=float(style == "mixed-halo")))
    elif style in NUCLEI_STYLES:
        params.update(NUCLEI_STYLES[style])
    elif style != "default":
        raise NSEError(f"style must be 'default', 'varied', 'mixed', 'mixed-halo' or one of "
                       f"{', '.join(NUCLEI_STYLES)}, got {style!r}")
    _check_nuclei_params(params)
    scale = np.ones(ndim)
    if anisotropy is not None:
        if ndim != 3 or anisotropy <= 0:
            raise NSEError("anisotropy needs a 3D shape and a positive value")
        scale[0] = anisotropy

    r_mean = float(np.mean(params["radius"]))
    volume = math.pi * r_mean**2 if ndim == 2 else 4 / 3 * math.pi * r_mean**3
    if n is None:
        n = max(1, round(params["density"] * math.prod(shape) * np.prod(scale) / volume))
    if n < 0:
        raise NSEError(f"n must be non-negative, got {n}")

    placer = _Placer(shape, scale)
    for _ in range(4 * n + 50):
        if placer.count >= n:
            break
        placer.try_place(rng, params)

    image = placer.image
    if params["texture"] > 0:
        tex = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.0)
        tex *= np.float32(params["texture"] / max(float(tex.std()), 1e-6))
        image *= np.clip(1 + tex, 0, None)
    if params["glow"] > 0:
        wide = _optical_sigma(params["glow_sigma"], scale)
        image += np.float32(params["glow"]) * ndimage.gaussian_filter(image, wide)
    spacing = max(shape) / 3
    uneven = smooth_field(shape, spacing, rng, sigma=0.15)[0]
    image += np.float32(params["background"]) * (1 + uneven)
    if params["gradient"] > 0:  # illumination falling off across the field
        u = rng.normal(size=ndim)
        u /= np.linalg.norm(u)
        ramp = sum(np.float32(c) * x / max(s - 1, 1)
                   for c, x, s in zip(u, np.indices(shape, dtype=np.float32), shape))
        ramp -= ramp.min()
        image += np.float32(params["gradient"]) * ramp / max(float(ramp.max()), 1e-6)
    if params["blur"] > 0:
        image = ndimage.gaussian_filter(image, _optical_sigma(params["blur"], scale))
    np.clip(image, 0, None, out=image)
    if params["poisson"]:
        photons = float(params["poisson"])
        image = (rng.poisson(image.astype(np.float64) * photons) / photons).astype(np.float32)
    if params["gaussian"] > 0:
        image += rng.normal(0.0, params["gaussian"], size=shape).astype(np.float32)
    return image.astype(np.float32, copy=False), placer.labels


def _optical_sigma(sigma: float, scale: np.ndarray) -> list[float]:
    """A lateral Gaussian ``sigma`` per axis: in 3D the axial one is ``2 * sigma / z pixel
    size`` slices (light spreads about twice as far along the optical axis)."""
    out = [sigma] * len(scale)
    if len(scale) == 3:
        out[0] = 2 * sigma / scale[0]
    return out


def _check_nuclei_params(p: dict[str, Any]) -> None:
    for name in ("radius", "elongation", "brightness", "bright"):
        lo, hi = p[name]
        if not 0 < lo <= hi:
            raise NSEError(f"{name} must be a range (low, high) with 0 < low <= high")
    if p["elongation"][0] < 1:
        raise NSEError("elongation must be at least 1")
    for name in ("touching", "bright_fraction", "clumps"):
        if not 0 <= p[name] <= 1:
            raise NSEError(f"{name} is a fraction from 0 to 1")
    for name in ("blur", "background", "gaussian", "texture", "density", "gradient", "glow"):
        if p[name] < 0:
            raise NSEError(f"{name} cannot be negative")
    if p["poisson"] is not None and p["poisson"] < 0:
        raise NSEError("poisson (photons per unit intensity) cannot be negative")
    if p["glow_sigma"] <= 0:
        raise NSEError("glow_sigma must be positive")


# -- the Lemma 1 image -----------------------------------------------------------------


def cantor_image(shape: Sequence[int]) -> np.ndarray:
    """The rank of each position in the Cantor diagonal order (paper, Lemma 1).

    Positions are ordered by the sum of their coordinates, ties broken by the coordinates
    lexicographically (first axis first); the value is the position's rank in that order,
    so values increase strictly along it. Any number of axes; float64.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or min(shape) < 1:
        raise NSEError(f"shape must be non-empty with positive entries, got {shape}")
    idx = np.indices(shape).reshape(len(shape), -1)
    # np.lexsort sorts by its last key first
    order = np.lexsort(tuple(idx[::-1]) + (idx.sum(axis=0),))
    rank = np.empty(order.size, dtype=np.float64)
    rank[order] = np.arange(order.size)
    return rank.reshape(shape)
