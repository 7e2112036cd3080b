"""Where a model's zero-shot settings lose AP: clustering settings x a relative size filter.

    python scripts/zero_shot_grid.py [MODEL] [--threads N]     # default: the bundled 2D model
    python scripts/zero_shot_grid.py --size-adaptive           # bandwidth from each image
    python scripts/zero_shot_grid.py --stability               # ... from its partitions

The model predicts once per image: the real nuclei *training* rows 0-282 (the default model has
never seen them; the rows the quality benchmark holds out, 307-511, are not read) and two
generated images per style (seeds 900-901, apart from the benchmark's 200+ and the
calibration's 5000+; ``--images N``: seeds 900 to 900 + N - 1). Each prediction is then
clustered on a grid of bandwidth x foreground threshold at the model's calibrated minimum
size (10 for the shipped default), and filtered again by a size relative to the image's own
objects: instances smaller than ``rel`` x the median instance size are dropped. One line per
setting, best real score first: real AP@0.5, the mean over the generated styles, then each style;
above them, the same at the model's own settings (what ``segment`` uses).

``--stability`` tries a label-free choice per image: cluster at each bandwidth of
:data:`LADDER` (threshold 0.5, relative size 0.3), score each inner bandwidth by the AP@0.5
of its partition against its two neighbours' (``min`` or ``mean``), and take the most stable
one (the wider on ties); printed beside fixed bandwidths of the same ladder.

``--size-adaptive`` tries a bandwidth set per image from its objects' size instead:
``bw0 * (d / 14 px) ** p``, where ``d`` is twice the median over the foreground components of
their largest inscribed radius (the distance transform's maximum, which clumps do not
inflate). ``p = 0`` is the fixed bandwidth.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import REAL, REAL_TRAIN, real_rows  # noqa: E402
from scipy import ndimage  # noqa: E402

from napari_shift_equivariance.data import NUCLEI_STYLES, nuclei  # noqa: E402
from napari_shift_equivariance.labels import remove_relative  # noqa: E402
from napari_shift_equivariance.metrics import evaluate, pool  # noqa: E402
from napari_shift_equivariance.model import load_model  # noqa: E402
from napari_shift_equivariance.options import ClusterOptions  # noqa: E402
from napari_shift_equivariance.segment import segment, segment_prediction  # noqa: E402

STYLES = tuple(NUCLEI_STYLES)
BANDWIDTHS = (1.0, 1.4, 2.0)
FG_THRESHOLDS = (0.5, 0.7, 0.85, 0.95)
RELATIVE = (0.0, 0.1, 0.2, 0.3)


#: ``--size-adaptive``: exponents, base bandwidths at the reference diameter, thresholds
POWERS, BASES = (0.0, 0.5, 1.0), (1.0, 1.2, 1.4)
ADAPTIVE_FG, ADAPTIVE_REL = (0.7, 0.85), (0.1, 0.2)
REFERENCE_DIAMETER = 14.0
#: ``--stability``: the bandwidth ladder and the clustering settings along it
LADDER = (0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0, 2.4, 2.8)
STABILITY_FG, STABILITY_REL = 0.5, 0.3


def drop_relative(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Labels without the instances smaller than ``fraction`` x their median size."""
    return remove_relative(labels, fraction)[0]


def foreground_diameter(probability: np.ndarray, threshold: float, min_size: int) -> float:
    """Twice the median largest inscribed radius of the foreground components (0: none)."""
    fg = probability > threshold
    comp, n = ndimage.label(fg)
    if n == 0:
        return 0.0
    radius = ndimage.maximum(ndimage.distance_transform_edt(fg), comp, np.arange(1, n + 1))
    radius = np.asarray(radius)[np.bincount(comp.ravel())[1:] >= min_size]
    return 2.0 * float(np.median(radius)) if radius.size else 0.0


def _line(ap: dict[str, float], what: str) -> tuple[float, str]:
    gen = float(np.mean([ap[s] for s in STYLES]))
    return ap["real"], (f"{what}: real {ap['real']:.3f} generated {gen:.3f} | "
                        + " ".join(f"{s} {ap[s]:.2f}" for s in STYLES))


def _cluster(model, run, min_size: int, **kw) -> np.ndarray:
    return segment_prediction(run.prediction, run.plan, model.config, min_size=min_size,
                              device="cpu", **kw).labels


def _scores(labs: dict, rel: float) -> dict[str, float]:
    return {name: pool([evaluate(g, drop_relative(lab, rel)) for lab, g in runs]).ap50
            for name, runs in labs.items()}


def fixed(model, preds: dict, min_size: int) -> list[tuple[float, str]]:
    """One bandwidth for every image, x foreground threshold x relative size."""
    lines = []
    for bw, fg in itertools.product(BANDWIDTHS, FG_THRESHOLDS):
        labs = {name: [(_cluster(model, r, min_size, bandwidth=bw, fg_threshold=fg), g)
                       for r, g in runs] for name, runs in preds.items()}
        lines += [_line(_scores(labs, rel), f"bw {bw} fg {fg} rel {rel}") for rel in RELATIVE]
    return lines


def adaptive(model, preds: dict, min_size: int) -> list[tuple[float, str]]:
    """A bandwidth per image from its foreground's object diameter."""
    for name, runs in preds.items():
        d = [foreground_diameter(r.prediction[-1], 0.5, min_size) for r, _ in runs]
        print(f"{name}: foreground diameter {' '.join(f'{v:.1f}' for v in d)} px")
    lines = []
    for power, base, fg in itertools.product(POWERS, BASES, ADAPTIVE_FG):
        labs = {}
        for name, runs in preds.items():
            labs[name] = []
            for r, g in runs:
                d = foreground_diameter(r.prediction[-1], fg, min_size)
                bw = base * (d / REFERENCE_DIAMETER) ** power if d else base
                labs[name].append((_cluster(model, r, min_size, bandwidth=bw, fg_threshold=fg),
                                   g))
        lines += [_line(_scores(labs, rel), f"p {power} bw0 {base} fg {fg} rel {rel}")
                  for rel in ADAPTIVE_REL]
    return lines


def _most_stable(agree: list[float], rule: str) -> int:
    """The inner ladder index whose partition agrees best with its neighbours'."""
    def score(i: int) -> float:
        pair = (agree[i - 1], agree[i])
        return min(pair) if rule == "min" else float(np.mean(pair))

    return max(range(1, len(LADDER) - 1), key=lambda i: (score(i), LADDER[i]))


def stability(model, preds: dict, min_size: int) -> list[tuple[float, str]]:
    """A bandwidth per image from the stability of its partition along :data:`LADDER`."""
    curves = {}
    for name, runs in preds.items():
        curves[name] = []
        for r, g in runs:
            labs = [drop_relative(_cluster(model, r, min_size, bandwidth=b,
                                           fg_threshold=STABILITY_FG), STABILITY_REL)
                    for b in LADDER]
            agree = [evaluate(labs[i], labs[i + 1]).ap_at(0.5) for i in range(len(LADDER) - 1)]
            curves[name].append(([evaluate(g, lab) for lab in labs], agree))
    lines = []
    for rule in ("min", "mean"):
        picks = {name: [_most_stable(a, rule) for _, a in c] for name, c in curves.items()}
        ap = {name: pool([evs[i] for (evs, _), i in zip(c, picks[name])]).ap50
              for name, c in curves.items()}
        chosen = "; ".join(f"{n} {','.join(str(LADDER[i]) for i in p)}"
                           for n, p in picks.items())
        lines.append(_line(ap, f"most stable ({rule}), bandwidths {chosen}"))
    for i, b in enumerate(LADDER):
        ap = {name: pool([evs[i] for evs, _ in c]).ap50 for name, c in curves.items()}
        lines.append(_line(ap, f"fixed bw {b} fg {STABILITY_FG} rel {STABILITY_REL}"))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=2, choices=range(1, 101), metavar="N",
                   help="generated images per style (default 2)")
    per_image = p.add_mutually_exclusive_group()
    per_image.add_argument("--size-adaptive", action="store_true",
                           help="a bandwidth per image from its objects' size (see the "
                           "docstring)")
    per_image.add_argument("--stability", action="store_true",
                           help="a bandwidth per image from the stability of its partition")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    min_size = ClusterOptions().resolve(model.config).min_size
    (image, labels), = real_rows(REAL, REAL_TRAIN)
    sets = {"real": [(image, labels)]}
    for style in STYLES:
        sets[style] = [nuclei((256, 256), seed=900 + k, style=style)
                       for k in range(args.images)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preds = {name: [(segment(model, x, "correct", device="cpu"), g) for x, g in pairs]
                 for name, pairs in sets.items()}
        for name, runs in preds.items():  # how far the foreground head transfers
            fg = np.mean([float((r.prediction[-1] > 0.5).mean()) for r, _ in runs])
            gt = np.mean([float((g > 0).mean()) for _, g in runs])
            print(f"{name}: foreground > 0.5 covers {fg:.3f} of the pixels, the annotations "
                  f"{gt:.3f}")
        own = {name: pool([evaluate(g, r.labels) for r, g in runs]).ap50
               for name, runs in preds.items()}
        opts = ClusterOptions().resolve(model.config)
        print(_line(own, f"the model's own settings (bw {opts.bandwidth:.3g}, fg "
                         f"{opts.fg_threshold:.2g}, rel {opts.relative_min_size:.2g}, "
                         f"relative bw {opts.relative_bandwidth or 0:.2g})")[1])
        search = adaptive if args.size_adaptive else stability if args.stability else fixed
        lines = search(model, preds, min_size)
    for _, line in sorted(lines, key=lambda t: -t[0]):
        print(line)


if __name__ == "__main__":
    main()
