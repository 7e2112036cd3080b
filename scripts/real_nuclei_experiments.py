"""The experiments behind "Where AP is lost on real nuclei" (docs/training.md).

    python scripts/real_nuclei_experiments.py train B --seconds 600 --iterations 3000 \
        --cfg '{"base_channels": 12, "window": 100, "batch_size": 2, "lr": 1e-3, "delta_d": 1.5}'
    python scripts/real_nuclei_experiments.py train C --gap --seconds 600 ...   # + label gaps
    python scripts/real_nuclei_experiments.py grid MODEL.pt     # bandwidth x threshold x scope
    python scripts/real_nuclei_experiments.py joint MODEL.pt    # [embedding, lam * (y, x)]

Trains on rows 0-282 of the real image and scores rows 307-511 (as benchmarks/bench_quality.py).
``train`` stops by the wall clock (``--seconds``) with the cosine schedule of ``--iterations``;
``--gap`` sets pixels on the border between two touching instances to background, so the
foreground learns a gap there. ``grid`` prints the best a calibration could reach (it looks at
the held-out rows: an upper bound, not a result). ``joint`` clusters each foreground pixel's
embedding concatenated with its scaled coordinates (spatial-range mean-shift).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_shift_equivariance.clustering import mean_shift
from napari_shift_equivariance.io import read_image
from napari_shift_equivariance.metrics import evaluate
from napari_shift_equivariance.model import load_model, save_model
from napari_shift_equivariance.segment import segment

REAL = Path("/work/shared/data/nuclei-2d-real")
TRAIN, HELDOUT = slice(0, 283), slice(307, 512)


def real() -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(read_image(REAL / "image.tif", lazy=False))
    labels = np.asarray(read_image(REAL / "labels.tif", lazy=False)).astype(np.int64)
    return image, labels


def touching_borders(labels: np.ndarray) -> np.ndarray:
    """Pixels of an instance with a 3x3 neighbour of another instance."""
    big = np.int64(1) << 40
    hi = ndimage.grey_dilation(labels, size=3)
    lo = -ndimage.grey_dilation(-np.where(labels > 0, labels, big), size=3)
    return (labels > 0) & (((hi != labels) & (hi > 0)) | ((lo != labels) & (lo < big)))


def cmd_train(args) -> None:
    from napari_shift_equivariance.train import TrainConfig, train

    image, labels = real()
    lab = labels[TRAIN].copy()
    if args.gap:
        border = touching_borders(lab)
        print(f"gap pixels: {int(border.sum())}", flush=True)
        lab[border] = 0
    cfg = TrainConfig(iterations=args.iterations, device="cpu", calibrate=False, val_every=0,
                      **json.loads(args.cfg))
    t0 = time.time()
    res = train([image[TRAIN]], [lab], cfg, cancel=lambda: time.time() - t0 > args.seconds)
    print(f"{len(res.history)} iterations, {time.time() - t0:.0f} s; {res.notes}", flush=True)
    save_model(res.model, args.out or f"{args.name}.pt", overwrite=True)


def cmd_grid(args) -> None:
    image, labels = real()
    model = load_model(args.model)
    for fg in (0.4, 0.6):
        for bw in (0.5, 1.0, 1.5, 2.0, 3.0):
            for scope in ("component", "global"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    pred = segment(model, image[HELDOUT], "correct", bandwidth=bw,
                                   fg_threshold=fg, scope=scope, device="cpu").labels
                print(f"{scope:9s} bandwidth {bw} fg {fg}: "
                      f"{evaluate(labels[HELDOUT], pred).summary()}", flush=True)


def cmd_joint(args) -> None:
    image, labels = real()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = segment(args.model, image[HELDOUT], "correct", device="cpu").prediction
    gt = labels[HELDOUT]
    for fg_t in (0.5, 0.6):
        fg = pred[-1] > fg_t
        comp, _ = ndimage.label(fg)
        idx = np.nonzero(fg)
        emb = pred[:-1][(slice(None), *idx)].T
        yx = np.stack(idx, 1).astype(np.float32)
        for lam in (0.0, 0.05, 0.1, 0.15, 0.2):
            for bw in (1.0, 1.5, 2.0, 3.0):
                for scope in ("component", "global"):
                    pts = np.concatenate([emb, lam * yx], 1).astype(np.float32)
                    lab = mean_shift(pts, bw, "cpu",
                                     groups=comp[idx] if scope == "component" else None)
                    out = np.zeros(fg.shape, np.int64)
                    out[idx] = lab + 1
                    # each connected piece of a cluster is one object; pieces < 10 px go
                    final = np.zeros_like(out)
                    n = 0
                    for i in np.unique(out[out > 0]):
                        part, m = ndimage.label(out == i)
                        sizes = np.bincount(part.ravel())
                        for j in range(1, m + 1):
                            if sizes[j] >= 10:
                                n += 1
                                final[part == j] = n
                    print(f"fg {fg_t} lam {lam} bandwidth {bw} {scope:9s} "
                          f"{evaluate(gt, final).summary()}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("--out")
    t.add_argument("--gap", action="store_true")
    t.add_argument("--seconds", type=float, default=600)
    t.add_argument("--iterations", type=int, default=3000)
    t.add_argument("--cfg", default="{}", help="TrainConfig fields as JSON")
    for name in ("grid", "joint"):
        s = sub.add_parser(name)
        s.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"train": cmd_train, "grid": cmd_grid, "joint": cmd_joint}[args.cmd](args)


if __name__ == "__main__":
    main()
