"""The coordinate-scale sweep behind docs/training.md ("Coordinates").

    python scripts/coord_scale_sweep.py train NAME SCALE [--seconds 300] [--cfg JSON]
    python scripts/coord_scale_sweep.py grid NAME [--bandwidths 0.5,0.75,1,1.5,2,3]

``train``: ``TrainConfig(coord_scale=SCALE, time_limit=SECONDS)`` with every other setting at
its default (calibration and validation off, one torch thread) on rows 0-282 of the real
nuclei image; writes NAME.pt. ``grid``: the best AP@0.5 over foreground thresholds 0.4-0.6 x
bandwidths on rows 307-511 (held out), in component and global scope, minimum size 18. The
grid looks at the held-out rows, so it is an upper bound of what calibration can reach: it
compares scales, it is not a result.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from real_nuclei_experiments import HELDOUT, TRAIN, real  # scripts/ is on sys.path

from napari_shift_equivariance.metrics import evaluate
from napari_shift_equivariance.model import load_model, save_model
from napari_shift_equivariance.segment import instances_from_prediction, segment


def cmd_train(args) -> None:
    from napari_shift_equivariance.train import TrainConfig, train

    image, labels = real()
    cfg = TrainConfig(device="cpu", calibrate=False, val_every=0, time_limit=args.seconds,
                      coord_scale=args.scale, **json.loads(args.cfg))
    t0 = time.time()
    res = train([image[TRAIN]], [labels[TRAIN]], cfg)
    print(f"{args.name}: {len(res.history)} iterations, {time.time() - t0:.0f} s", flush=True)
    save_model(res.model, f"{args.name}.pt", overwrite=True)


def cmd_grid(args) -> None:
    image, labels = real()
    model = load_model(f"{args.name}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = segment(model, image[HELDOUT], "correct", device="cpu").prediction
    scale = model.config.loss.get("coord_scale", 0.0)
    gt = labels[HELDOUT]
    for scope in ("component", "global"):
        best = None
        for t in (0.4, 0.5, 0.6):
            for b in (float(v) for v in args.bandwidths.split(",")):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    lab, _ = instances_from_prediction(
                        pred, 2, bandwidth=b, fg_threshold=t, min_size=18, scope=scope,
                        coord_scale=scale, device="cpu")
                ev = evaluate(gt, lab)
                if best is None or ev.ap50 > best[0]:
                    best = (ev.ap50, t, b, ev.summary())
        print(f"{args.name} (coord_scale {scale}) {scope}: fg {best[1]} bandwidth {best[2]}: "
              f"{best[3]}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("scale", type=float)
    t.add_argument("--seconds", type=float, default=300)
    t.add_argument("--cfg", default="{}", help="more TrainConfig fields as JSON")
    g = sub.add_parser("grid")
    g.add_argument("name")
    g.add_argument("--bandwidths", default="0.5,0.75,1,1.5,2,3")
    args = p.parse_args()
    torch.set_num_threads(1)
    {"train": cmd_train, "grid": cmd_grid}[args.cmd](args)


if __name__ == "__main__":
    main()
