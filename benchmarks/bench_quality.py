"""The quality table of issue 8: datasets x methods, with the watershed baseline on the same data.

    python benchmarks/bench_quality.py                  # everything (about 1.5 h on 2 cores)
    python benchmarks/bench_quality.py --quick          # real + one style, short limits
    python benchmarks/bench_quality.py --datasets real --methods baseline,default
    python benchmarks/bench_quality.py --json quality.json --threads 2

Datasets (every score is on data never trained or tuned on):

- ``real``: ``/work/shared/data/nuclei-2d-real`` (512 x 256, 73 nuclei; ``--real`` for another
  folder with ``image.tif`` and ``labels.tif``). Training uses rows 0-282 (:data:`REAL_TRAIN`),
  scores come from rows 307-511, the bottom 40 % (:data:`REAL_HELDOUT`). The 24-row gap (about
  one nucleus diameter) keeps any nucleus from lying in both parts.
- generated styles (``data.NUCLEI_STYLES``: sparse, dense, dim, large): one 256 x 256 training
  image (seed 100) and :data:`HELDOUT_IMAGES` held-out images (seeds 200...).
- ``3d`` / ``3d-aniso``: generated 3D stacks (``mixed`` style), scored for ``default3d``
  and the baseline only.

Methods: ``baseline`` (``baseline.watershed_baseline``: Otsu + distance-transform watershed, no
training), ``default`` (the bundled model, zero-shot, its stored calibration), ``trained``
(``TrainConfig(time_limit=600)``, every other setting at its default, on the one training
image; it calibrates itself on its automatic validation split), ``finetuned`` (the same from
``default`` with ``time_limit=300``).

``--repeats N`` trains each trained / fine-tuned row N times (``TrainConfig.seed`` 0..N-1; seed
0 is the default) and prints the mean, standard deviation and range of AP@0.5 per row: single
time-limited runs on one small held-out crop spread by about 0.1.

Columns: AP@0.5 and the DSB score (mean AP at IoU 0.5:0.05:0.95) with optimal one-to-one
matching; false splits / merges (Caicedo et al. 2019: objects associated when their IoU
exceeds 0.1); ``AP glob``: AP@0.5 when mean-shift sees the whole image at once
(``scope="global"``), i.e. when only the embeddings separate the nuclei. Counts are pooled
over the held-out images. ``--seams`` adds naive vs correct stitching seam splits of the
default model on the real held-out rows and on the demo image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_shift_equivariance.baseline import watershed_baseline
from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.metrics import Evaluation, evaluate, pool
from napari_shift_equivariance.model import load_model
from napari_shift_equivariance.options import CALIBRATION_KEYS
from napari_shift_equivariance.segment import segment

REAL = Path("/work/shared/data/nuclei-2d-real")
REAL_TRAIN = slice(0, 283)
REAL_HELDOUT = slice(307, 512)
STYLES = ("sparse", "dense", "dim", "large")
HELDOUT_IMAGES = 3
METHODS = ("baseline", "default", "trained", "finetuned")
TIME_LIMITS = {"trained": 600.0, "finetuned": 300.0}
#: ``--quick``: enough for the final calibration on the whole real training rows (about 17 s
#: on 2 cores; the time-limit check wants twice the setup and calibration: 39 s)
QUICK_LIMITS = {"trained": 90.0, "finetuned": 60.0}
GOALS = {"trained": 0.85, "finetuned": 0.85, "default": {"real": 0.80, "generated": 0.85}}


def real_rows(folder: Path, *rows: slice) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image, labels)`` of each row range of the real nuclei in ``folder`` (the one reader
    of that image for the benchmarks and scripts)."""
    from napari_shift_equivariance.io import read_image

    image = np.asarray(read_image(folder / "image.tif", lazy=False))
    labels = np.asarray(read_image(folder / "labels.tif", lazy=False)).astype(np.int64)
    return [(image[r], labels[r]) for r in rows]


def real_data(folder: Path) -> tuple[tuple, tuple]:
    train, (image, labels) = real_rows(folder, REAL_TRAIN, REAL_HELDOUT)
    return train, ([image], [labels])


def generated_data(style: str, n_heldout: int, shape=(256, 256)) -> tuple[tuple, tuple]:
    train = nuclei(shape, seed=100, style=style)
    held = [nuclei(shape, seed=200 + k, style=style) for k in range(n_heldout)]
    return train, ([h[0] for h in held], [h[1] for h in held])


def data_3d(aniso: bool, n_heldout: int) -> tuple[None, tuple]:
    shape, a = ((24, 96, 96), 2.5) if aniso else ((48, 96, 96), None)
    held = [nuclei(shape, seed=300 + k, style="mixed", anisotropy=a) for k in range(n_heldout)]
    return None, ([h[0] for h in held], [h[1] for h in held])


def score(segment_fn, images, labels) -> dict[str, Evaluation]:
    """Pooled evaluation of ``segment_fn(image, scope) -> labels`` at both scopes."""
    out = {}
    for scope in ("component", "global"):
        evs = [evaluate(g, segment_fn(x, scope)) for x, g in zip(images, labels)]
        out[scope] = pool(evs)
    return out


def model_segmenter(model):
    def run(x, scope):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return segment(model, x, "correct", scope=scope, device="cpu").labels
    return run


def train_model(train_pair, method: str, limit: float, overrides: dict | None = None,
                seed: int | None = None):
    from napari_shift_equivariance.train import TrainConfig, train

    image, labels = train_pair
    fields = {**(overrides or {}), **({} if seed is None else {"seed": seed})}
    config = TrainConfig(time_limit=limit, device="cpu", **fields)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train([image], [labels], config,
                       init_model="default" if method == "finetuned" else None)
    seconds = time.perf_counter() - t0
    return result.model, {"seconds": seconds, "iterations": len(result.history),
                          "seed": config.seed,
                          "calibration": {k: result.model.config.extra.get(k)
                                          for k in CALIBRATION_KEYS},
                          "calibration_curve": calibration_curve(result.calibration),
                          "heldout_ap": getattr(result.calibration, "heldout_ap", None),
                          "refit": config.refit_share}


def calibration_curve(cal) -> dict[str, float]:
    """The calibration's best mean AP@0.5 per bandwidth, the curve its choice was made from
    (to see afterwards whether it was flat to the grid's end)."""
    curve: dict[str, float] = {}
    for s in sorted(cal.scores, key=lambda s: s["bandwidth"]) if cal is not None else ():
        key = f"{s['bandwidth']:g}"
        curve[key] = max(curve.get(key, 0.0), round(float(s["ap"]), 4))
    return curve


def trained_run(train_pair, method: str, limit: float, overrides: dict, seed: int | None,
                images, labels) -> tuple[dict[str, Evaluation], dict]:
    """Train one model (:func:`train_model`) and score it on the held-out images."""
    model, extra = train_model(train_pair, method, limit, overrides, seed)
    return score(model_segmenter(model), images, labels), extra


def seam_figures(model, image: np.ndarray, gt: np.ndarray) -> dict:
    """Seam splits of naive vs correct stitching with the demo's tiles (``demo.demo_tiles``):
    correct ``n * f^l`` tiles of at most 64 px, naive tiles of the net's own valid size."""
    from napari_shift_equivariance.compare import compare_results
    from napari_shift_equivariance.demo import demo_tiles

    correct_tile, naive_tile = demo_tiles(model.config.geometry, image.shape)
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode, tile in (("naive", naive_tile), ("correct", correct_tile)):
            runs[mode] = segment(model, image, mode, tuple(tile), device="cpu")
    s = compare_results(runs["naive"], runs["correct"], gt).summary
    return {"tiles": {"naive": list(naive_tile), "correct": list(correct_tile)},
            "naive": s["naive"]["seam_splits"], "correct": s["correct"]["seam_splits"],
            "ap50": {m: s[m].get("ap50") for m in ("naive", "correct")}}


def row(dataset: str, method: str, res: dict[str, Evaluation], extra: dict) -> dict:
    c, g = res["component"], res["global"]
    return {"dataset": dataset, "method": method, "ap50": c.ap50, "dsb": c.dsb,
            "splits": c.false_splits, "merges": c.false_merges, "tp": c.tp[0], "fp": c.fp[0],
            "fn": c.fn[0], "n_true": c.n_true, "n_images": c.n_images, "ap50_global": g.ap50,
            **extra}


def goal(dataset: str, method: str) -> float | None:
    g = GOALS.get(method)
    if isinstance(g, dict):
        return g["real" if dataset == "real" else "generated"]
    return g


HEAD = (f"{'dataset':10}{'method':11}{'AP@0.5':>8}{'DSB':>7}{'AP glob':>9}{'TP':>5}"
        f"{'FP':>5}{'FN':>5}{'split':>7}{'merge':>7}{'goal':>7}  train")


def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(HEAD)
        print("-" * len(HEAD))
    for r in rows:
        g = goal(r["dataset"], r["method"])
        mark = "" if g is None else (f"{g:.2f}" + ("+" if r["ap50"] >= g else "-"))
        tr = (f"{r['seconds']:.0f} s, {r['iterations']} it, seed {r['seed']}" if "seconds" in r
              else "")
        print(f"{r['dataset']:10}{r['method']:11}{r['ap50']:8.3f}{r['dsb']:7.3f}"
              f"{r['ap50_global']:9.3f}{r['tp']:5d}{r['fp']:5d}{r['fn']:5d}{r['splits']:7d}"
              f"{r['merges']:7d}{mark:>7}  {tr}", flush=True)


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and range of AP@0.5 for each (dataset, method) trained more
    than once."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r["ap50"])
    out = []
    for (ds, method), aps in groups.items():
        if len(aps) < 2:
            continue
        a = np.asarray(aps)
        out.append({"dataset": ds, "method": method, "runs": len(a), "mean": float(a.mean()),
                    "sd": float(a.std(ddof=1)), "min": float(a.min()), "max": float(a.max())})
    return out


def print_summary(summary: list[dict]) -> None:
    for s in summary:
        g = goal(s["dataset"], s["method"])
        mark = "" if g is None else f"; goal {g:.2f} {'met' if s['mean'] >= g else 'not met'}"
        print(f"{s['dataset']:10}{s['method']:11} AP@0.5 over {s['runs']} runs: mean "
              f"{s['mean']:.3f} +- {s['sd']:.3f} (min {s['min']:.3f}, max {s['max']:.3f})"
              f"{mark}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="real + dense only, time limits 90/60 s, one held-out image per style")
    p.add_argument("--datasets", help="comma list from real, sparse, dense, dim, large, 3d, "
                   "3d-aniso (default: real and the four styles)")
    p.add_argument("--methods", help=f"comma list from {', '.join(METHODS)} (default: all)")
    p.add_argument("--real", type=Path, default=REAL, help="folder with image.tif, labels.tif")
    p.add_argument("--seams", action="store_true", help="also count naive/correct seam splits")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", help="write the rows to this JSON file")
    p.add_argument("--train-config", default="{}",
                   help="JSON of TrainConfig fields for trained/finetuned (default: none, "
                   "every setting at its default as the goals say), e.g. "
                   "'{\"boundary_gap\": true}'")
    p.add_argument("--repeats", type=int, default=1,
                   help="train each trained/finetuned row this many times (seeds 0..N-1)")
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    datasets = (args.datasets.split(",") if args.datasets else
                ["real", "dense"] if args.quick else ["real", *STYLES])
    methods = args.methods.split(",") if args.methods else list(METHODS)
    limits = QUICK_LIMITS if args.quick else TIME_LIMITS
    overrides = json.loads(args.train_config)
    n_held = 1 if args.quick else HELDOUT_IMAGES
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; time limits {limits}", flush=True)

    rows: list[dict] = []
    for ds in datasets:
        if ds == "real":
            train_pair, (images, labels) = real_data(args.real)
        elif ds in ("3d", "3d-aniso"):
            train_pair, (images, labels) = data_3d(ds == "3d-aniso", n_held)
        else:
            train_pair, (images, labels) = generated_data(ds, n_held)
        ndim = images[0].ndim
        for method in methods:
            if method == "baseline":
                def seg(x, scope):
                    return watershed_baseline(x)
                res = score(seg, images, labels)
                res["global"] = res["component"]  # the baseline has no embeddings
                runs = [(res, {})]
            elif method == "default":
                runs = [(score(model_segmenter(load_model("default" if ndim == 2 else
                                                          "default3d")), images, labels), {})]
            elif train_pair is None:
                continue  # no training image for the 3D sets
            else:  # one (result, extra) per repeat, trained as the loop asks
                runs = (trained_run(train_pair, method, limits[method], overrides,
                                    k if args.repeats > 1 else None, images, labels)
                        for k in range(args.repeats))
            for res, extra in runs:
                rows.append(row(ds, method, res, extra))
                print_table(rows[-1:], header=len(rows) == 1)
    print()
    print_table(rows)
    summary = summarize(rows)
    print_summary(summary)
    report: dict = {"rows": rows, "summary": summary, "repeats": args.repeats,
                    "threads": args.threads, "cpus": os.cpu_count(),
                    "time_limits": limits, "quick": args.quick, "train_config": overrides}
    if args.seams:
        model = load_model("default")
        (_, _), (real_imgs, real_gts) = real_data(args.real)
        demo = nuclei((512, 512), seed=0)  # the image of ``nse demo``
        report["seams"] = {"real": seam_figures(model, real_imgs[0], real_gts[0]),
                           "demo": seam_figures(model, *demo)}
        for name, s in report["seams"].items():
            print(f"seam splits, {name} (default model, naive tiles {s['tiles']['naive']}, "
                  f"correct {s['tiles']['correct']}): naive {s['naive']}, correct "
                  f"{s['correct']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
