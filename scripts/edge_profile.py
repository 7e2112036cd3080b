"""How intensity falls off across the annotated outlines: real nuclei against generated ones.

    python scripts/edge_profile.py            # real training rows 0-282, styles, halos

For every instance of at least 60 px: the image's mean at each signed distance ``d`` from
its outline (``d = 0`` its inner ring, ``d = 1`` the first ring outside, pixels of other
instances left out), minus the background (the median beyond 8 px of every instance), over
the instance's core (its median 3 px inside the outline); the median over the instances is
printed per distance. The real rows are the quality benchmark's *training* rows (its
held-out rows 307-511 are not read); the generated images use seeds 900-901, apart from the
benchmark's and the calibration's. The last lines fit ``nuclei(glow=..., glow_sigma=...)``
on the ``dsb`` style to the real profile (the sum of squared differences).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import REAL, REAL_TRAIN, real_rows  # noqa: E402

from napari_shift_equivariance.data import NUCLEI_STYLES, nuclei  # noqa: E402

DISTANCES = tuple(range(-4, 7))
STYLES = tuple(NUCLEI_STYLES)
GLOWS, GLOW_SIGMAS, BLURS = (0.0, 0.5, 1.0, 1.6, 2.0, 2.5), (4.0, 6.0, 8.0, 10.0), (1.0, 1.5)


def profile(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Median over the instances of (ring mean - background) / (core - background)."""
    x = image.astype(np.float64)
    background = np.median(x[~ndimage.binary_dilation(labels > 0, iterations=8)])
    rows = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels == i
        core = ndimage.binary_erosion(own, iterations=3)
        if own.sum() < 60 or not core.any():
            continue
        peak = np.median(x[core]) - background
        signed = np.where(own, 1 - ndimage.distance_transform_edt(own),
                          ndimage.distance_transform_edt(~own))
        free = (labels == 0) | own
        ring = np.round(signed)
        row = []
        for d in DISTANCES:
            at = (ring == d) & free
            row.append((x[at].mean() - background) / peak if at.any() else np.nan)
        rows.append(row)
    return np.nanmedian(np.array(rows), axis=0)


def mean_profile(pairs) -> np.ndarray:
    return np.mean([profile(x, y) for x, y in pairs], axis=0)


def line(name: str, values: np.ndarray) -> str:
    return f"{name:28s}" + " ".join(f"{v:5.2f}" for v in values)


def main() -> None:
    (image, labels), = real_rows(REAL, REAL_TRAIN)
    real = profile(image, labels)
    print(f"{'distance from the outline':28s}" + " ".join(f"{d:5d}" for d in DISTANCES))
    print(line("real rows 0-282", real))
    for style in STYLES:
        print(line(style, mean_profile(nuclei((256, 256), seed=900 + k, style=style)
                                       for k in range(2))))
    fits = []
    for glow, sigma, blur in itertools.product(GLOWS, GLOW_SIGMAS, BLURS):
        if glow == 0 and sigma != GLOW_SIGMAS[0]:
            continue
        p = {**NUCLEI_STYLES["dsb"], "blur": blur, "glow": glow, "glow_sigma": sigma}
        prof = mean_profile(nuclei((256, 256), seed=900 + k, **p) for k in range(2))
        fits.append((float(np.nansum((prof - real) ** 2)), glow, sigma, blur, prof))
    print("dsb style with a halo, closest to the real profile first:")
    for err, glow, sigma, blur, prof in sorted(fits, key=lambda t: t[0])[:5]:
        print(line(f"glow {glow} sigma {sigma} blur {blur}", prof) + f"  (error {err:.3f})")
    plain = [f for f in fits if f[1] == 0.0]
    best = min(plain, key=lambda t: t[0])
    print(line(f"no halo, blur {best[3]}", best[4]) + f"  (error {best[0]:.3f})")


if __name__ == "__main__":
    main()
