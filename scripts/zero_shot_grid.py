"""Where a model's zero-shot settings lose AP: clustering settings x a relative size filter.

    python scripts/zero_shot_grid.py [MODEL] [--threads N]     # default: the bundled 2D model

The model predicts once per image: the real nuclei *training* rows 0-282 (the default model has
never seen them; the rows the quality benchmark holds out, 307-511, are not read) and two
generated images per style (seeds 900-901, apart from the benchmark's 200+ and the
calibration's 5000+). Each prediction is then clustered on a grid of bandwidth x foreground
threshold at the model's calibrated minimum size (18 for the shipped default), and filtered
again by a size relative to the image's own objects: instances smaller than ``rel`` x the
median instance size are dropped. One line per setting,
best real score first: real AP@0.5, the mean over the generated styles, then each style.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import REAL, real_data  # noqa: E402

from napari_shift_equivariance.data import nuclei  # noqa: E402
from napari_shift_equivariance.labels import instance_sizes, remove_small  # noqa: E402
from napari_shift_equivariance.metrics import evaluate, pool  # noqa: E402
from napari_shift_equivariance.model import load_model  # noqa: E402
from napari_shift_equivariance.options import ClusterOptions  # noqa: E402
from napari_shift_equivariance.segment import segment, segment_prediction  # noqa: E402

STYLES = ("sparse", "dense", "dim", "large", "dsb")
BANDWIDTHS = (1.0, 1.4, 2.0)
FG_THRESHOLDS = (0.5, 0.7, 0.85, 0.95)
RELATIVE = (0.0, 0.1, 0.2, 0.3)


def drop_relative(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Labels without the instances smaller than ``fraction`` x their median size."""
    sizes = list(instance_sizes(labels).values())
    if not fraction or not sizes:
        return labels
    return remove_small(labels, math.ceil(fraction * float(np.median(sizes))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    min_size = ClusterOptions().resolve(model.config).min_size
    (image, labels), _ = real_data(REAL)
    sets = {"real": [(image, labels)]}
    for style in STYLES:
        sets[style] = [nuclei((256, 256), seed=900 + k, style=style) for k in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = {name: [(segment(model, x, "correct", device="cpu"), g) for x, g in pairs]
                 for name, pairs in sets.items()}
        lines = []
        for bw, fg in itertools.product(BANDWIDTHS, FG_THRESHOLDS):
            labs = {name: [(segment_prediction(r.prediction, r.plan, model.config, bandwidth=bw,
                                               fg_threshold=fg, min_size=min_size,
                                               device="cpu").labels, g) for r, g in runs]
                    for name, runs in preds.items()}
            for rel in RELATIVE:
                ap = {name: pool([evaluate(g, drop_relative(lab, rel)) for lab, g in runs]).ap50
                      for name, runs in labs.items()}
                gen = float(np.mean([ap[s] for s in STYLES]))
                lines.append((ap["real"], f"bw {bw} fg {fg} rel {rel}: real {ap['real']:.3f} "
                              f"generated {gen:.3f} | "
                              + " ".join(f"{s} {ap[s]:.2f}" for s in STYLES)))
    for _, line in sorted(lines, key=lambda t: -t[0]):
        print(line)


if __name__ == "__main__":
    main()
