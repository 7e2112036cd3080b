"""Spatial-range mean-shift on a model's predictions: AP@0.5 over spatial scale x bandwidth.

    python scripts/spatial_radius_sweep.py [MODEL]      # default: the bundled 2D model

For the real nuclei (held-out rows 307-511) and two generated styles (``dense``, ``large``;
384 x 384, seed 9100) the model predicts once; then every foreground pixel (threshold 0.3) is
clustered as ``[embedding, lam * (y, x)]`` per connected component and over the whole image
(``scope="global"``), minimum size 18. ``lam = bandwidth / spatial_radius``. The grid looks at
the held-out images themselves: an upper bound of what a calibrated radius can give, the
figures quoted in docs/benchmarks.md (quality, 2026-12-02).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_nuclei_experiments import HELDOUT, real  # noqa: E402

from napari_shift_equivariance import data  # noqa: E402
from napari_shift_equivariance.clustering import drop_small, mean_shift  # noqa: E402
from napari_shift_equivariance.metrics import evaluate  # noqa: E402
from napari_shift_equivariance.segment import segment  # noqa: E402


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "default"
    image, labels = real()
    sets = [("real", image[HELDOUT], labels[HELDOUT])]
    for style in ("dense", "large"):
        im, gt = data.nuclei((384, 384), seed=9100, style=style)[:2]
        sets.append((style, im, gt))
    for name, im, gt in sets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = segment(model, im, "correct", device="cpu").prediction
        fg = pred[-1] > 0.3
        comp, _ = ndimage.label(fg, np.ones((3, 3)))
        idx = np.nonzero(fg)
        emb = pred[:-1][(slice(None), *idx)].T
        yx = np.stack(idx, 1).astype(np.float32)
        for lam in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3):
            for bw in (1.4, 2.0, 2.8):
                row = []
                for scope in ("component", "global"):
                    pts = np.concatenate([emb, lam * yx], 1).astype(np.float32)
                    groups = comp[idx] - 1 if scope == "component" else None
                    lab = mean_shift(pts, bw, "cpu", groups=groups)
                    out = np.zeros(fg.shape, np.int64)
                    out[idx] = lab + 1
                    r = evaluate(gt, drop_small(out, 18))
                    row.append(f"{scope[:4]} {r.summary()}")
                radius = f"{bw / lam:.1f} px" if lam else "off"
                print(name, f"lam {lam} (radius {radius}) bw {bw}", " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
