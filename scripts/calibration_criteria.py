"""Which calibration data picks clustering settings that transfer to new images?

    python scripts/calibration_criteria.py STYLE [--time-limit 300] [--threads 1] [--json]

Trains one model on a generated image (``nuclei(seed=100, style=STYLE)``, every
``TrainConfig`` default but the time limit), then clusters on the full grid (foreground
threshold x bandwidth x relative minimum size; minimum size 10, no spatial radius) three
times: on the whole training image, on its held-out crop (the automatic validation split) and
on two tuning images (seeds 900-901, apart from the quality benchmark's 200+ and the training
image). Each criterion's choice is scored on the tuning images: ``whole`` (what
``calibrate_on="all"`` scores), ``crop`` (``calibrate_on="validation"``), ``mean`` of both and
``crop2`` = (whole + 2 x crop) / 3. The figures of docs/training.md ("Calibrating on the whole
training images") came from this script.
"""

from __future__ import annotations

import argparse
import json
import re
import warnings

import torch

from napari_shift_equivariance.data import NUCLEI_STYLES, nuclei
from napari_shift_equivariance.train import TrainConfig, calibrate, train

GRID = dict(fg_thresholds=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_sizes=[10],
            relative_min_sizes=[0.0, 0.1, 0.2, 0.3], spatial_radii=[0.0], search="full")
TUNING_SEEDS = (900, 901)


def _key(score: dict) -> tuple[float, float, float]:
    return score["bandwidth"], score["fg_threshold"], score["relative_min_size"]


def run(style: str, time_limit: float) -> dict:
    image, labels = nuclei((256, 256), seed=100, style=style)
    tuning = [nuclei((256, 256), seed=s, style=style) for s in TUNING_SEEDS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train([image], [labels], TrainConfig(time_limit=time_limit, device="cpu"))
    model = result.model
    held = int(re.search(r"validation on the last (\d+) px", " ".join(result.notes)).group(1))
    data = {"whole": ([image], [labels]), "crop": ([image[-held:]], [labels[-held:]]),
            "tune": ([t[0] for t in tuning], [t[1] for t in tuning])}
    ap = {name: {_key(s): s["ap"] for s in calibrate(model, *d, device="cpu", **GRID).scores}
          for name, d in data.items()}
    points = list(ap["tune"])
    criteria = {"whole": lambda p: ap["whole"][p], "crop": lambda p: ap["crop"][p],
                "mean": lambda p: (ap["whole"][p] + ap["crop"][p]) / 2,
                "crop2": lambda p: (ap["whole"][p] + 2 * ap["crop"][p]) / 3}
    out = {"style": style, "iterations": len(result.history), "held_px": held,
           "tune_best": round(max(ap["tune"].values()), 3)}
    for name, f in criteria.items():
        # ties: the threshold nearest 0.5, then the smallest relative size, then the first
        # grid point (calibrate itself takes the middle of tied bandwidths)
        p = max(points, key=lambda q: (round(f(q), 6), -abs(q[1] - 0.5), -q[2]))
        out[name] = {"bandwidth": p[0], "fg_threshold": p[1], "relative_min_size": p[2],
                     "tune_ap": round(ap["tune"][p], 3)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("style", choices=list(NUCLEI_STYLES))
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        out = run(args.style, args.time_limit)
    finally:
        torch.set_num_threads(old)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.style}: {out['iterations']} iterations, crop {out['held_px']} px, best on the "
          f"tuning images {out['tune_best']:.3f}")
    for name in ("whole", "crop", "mean", "crop2"):
        c = out[name]
        print(f"  {name:6s} bandwidth {c['bandwidth']:<4g} fg {c['fg_threshold']:<4g} "
              f"rel {c['relative_min_size']:<4g} -> tuning AP@0.5 {c['tune_ap']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
