"""Train a bundled default model (presets ``default`` / ``default3d``), calibrate it, evaluate it.

    python scripts/train_default.py --overwrite                       # default_2d.pt
    python scripts/train_default.py --preset default3d --overwrite    # default_3d.pt
    python scripts/train_default.py --skip-training                   # re-evaluate the shipped one
    nse train --preset default --out M.pt                             # the preset's own recipe

The settings are ``napari_shift_equivariance.train.preset(NAME)``'s, with the overrides of
:data:`RECIPES` (training data style, iterations, margins, augmentation): the command line
that made each shipped model is stored in it as ``config.extra["recipe"]``.

Calibration (bandwidth, foreground threshold, minimum size) uses generated validation images
with their own seeds (:data:`VALIDATION_SEED` ...), never the held-out ones. Held-out scores:
the generated styles (``data.NUCLEI_STYLES``, seeds 200+) and, for 2D, the real nuclei rows
the quality benchmark holds out (``benchmarks/bench_quality.py``), all zero-shot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import REAL, REAL_HELDOUT, real_rows  # noqa: E402

from napari_shift_equivariance.baseline import watershed_baseline  # noqa: E402
from napari_shift_equivariance.data import NUCLEI_STYLES, nuclei  # noqa: E402
from napari_shift_equivariance.metrics import evaluate, pool  # noqa: E402
from napari_shift_equivariance.model import (  # noqa: E402
    default_model_path,
    load_model,
    save_model,
)
from napari_shift_equivariance.segment import segment  # noqa: E402
from napari_shift_equivariance.train import PRESETS, TrainConfig, calibrate, train  # noqa: E402

#: What the shipped models change in their preset (applied on top of ``PRESETS[name]``).
RECIPES = {
    # the shipped default_2d.pt: the preset as it is (mixed style, coordinates), from scratch
    "default": {"style": "mixed", "n_images": 48, "shape": (256, 256), "config": {}},
    "default3d": {"style": "mixed", "n_images": 16, "shape": (48, 96, 96),
                  # windows that hold the large nuclei whole (24 voxels cut them: AP 0.06)
                  "config": {"delta_d": 1.5, "intensity_scale": (0.4, 1.6),
                             "window": (20, 40, 40)}},
}
VALIDATION_SEED = 5000


def data(name: str, seeds: range, aniso: bool = False, style: str | None = None):
    r = RECIPES[name]
    shape = r["shape"]
    pairs = []
    for s in seeds:
        a = None
        if len(shape) == 3 and (aniso or s % 2):  # half the 3D stacks anisotropic
            a = 2.0 + (s % 3) * 0.5
            shape_s = (shape[0] // 2, *shape[1:])
        else:
            shape_s = shape
        pairs.append(nuclei(shape_s, seed=s, style=style or r["style"], anisotropy=a))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def heldout(ndim: int) -> dict[str, tuple[list, list]]:
    sets = {}
    for style in NUCLEI_STYLES:
        if ndim == 2:
            pairs = [nuclei((256, 256), seed=200 + k, style=style) for k in range(3)]
        else:
            pairs = [nuclei((48, 96, 96), seed=200, style=style),
                     nuclei((24, 96, 96), seed=201, style=style, anisotropy=2.5)]
        sets[style] = ([p[0] for p in pairs], [p[1] for p in pairs])
    if ndim == 2 and REAL.exists():
        (im, lb), = real_rows(REAL, REAL_HELDOUT)
        sets["real"] = ([im], [lb])
    return sets


def scores(model) -> dict:
    out = {}
    for name, (images, labels) in heldout(model.config.ndim).items():
        res = {}
        for key, fn in (
            ("model", lambda x: segment(model, x, "correct", device="cpu").labels),
            ("global", lambda x: segment(model, x, "correct", scope="global",
                                         device="cpu").labels),
            ("baseline", watershed_baseline),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ev = pool([evaluate(g, fn(x)) for x, g in zip(images, labels)])
            res[key] = {"ap50": ev.ap50, "dsb": ev.dsb, "splits": ev.false_splits,
                        "merges": ev.false_merges, "fp": ev.fp[0], "fn": ev.fn[0]}
        out[name] = res
        print(f"  {name:8s} AP@0.5 {res['model']['ap50']:.3f} (DSB {res['model']['dsb']:.3f}, "
              f"splits {res['model']['splits']}, merges {res['model']['merges']}); global "
              f"{res['global']['ap50']:.3f}; baseline {res['baseline']['ap50']:.3f}", flush=True)
    return out


def recalibrate(model, preset: str, style: str | None = None):
    """Calibrate on the recipe's validation seeds and store it in ``model``."""
    val = data(preset, range(VALIDATION_SEED, VALIDATION_SEED + 6), style=style)
    cal = calibrate(model, *val, device="cpu", data=f"{preset} validation seeds "
                    f"{VALIDATION_SEED}-{VALIDATION_SEED + 5}")
    cal.apply(model)
    print(f"calibrated: bandwidth {cal.bandwidth}, fg threshold {cal.fg_threshold}, min size "
          f"{cal.min_size}, spatial radius {cal.spatial_radius}, coordinates "
          f"{model.config.loss.get('coord_scale', 0.0)}: validation AP@0.5 "
          f"{cal.ap:.3f} (uncalibrated {cal.default_ap:.3f}), {cal.seconds:.0f} s", flush=True)
    return cal


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(RECIPES), default="default")
    p.add_argument("--out", help="model file (default: the bundled one)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, help="override the recipe's iteration count")
    p.add_argument("--time-limit", type=float, help="stop training after this many seconds")
    p.add_argument("--from", dest="init", help="start from this model (fine-tune)")
    p.add_argument("--skip-training", action="store_true", help="evaluate --out only")
    p.add_argument("--recalibrate", action="store_true",
                   help="with --skip-training: calibrate --out again (the current grid) first")
    p.add_argument("--checkpoint-dir", help="write checkpoints every 250 iterations here")
    p.add_argument("--config", default="{}",
                   help="JSON of TrainConfig fields on top of the recipe (experiments), e.g. "
                   "'{\"blur_sigma\": [0, 2], \"p_blur\": 0.5}'")
    p.add_argument("--style", help="generated style of the training and validation images "
                   "instead of the recipe's (experiments), e.g. mixed-halo")
    p.add_argument("--no-heldout", action="store_true",
                   help="do not score the held-out sets (while choosing between candidates "
                   "on tuning data: scripts/zero_shot_grid.py)")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ndim = len(RECIPES[args.preset]["shape"])
    out = Path(args.out) if args.out else default_model_path(ndim)
    report: dict = {"preset": args.preset, "recipe": RECIPES[args.preset],
                    "threads": args.threads, "torch": torch.__version__, "argv": sys.argv[1:]}
    if not args.skip_training:
        if out.exists() and not args.overwrite:
            print(f"{out} exists; pass --overwrite", file=sys.stderr)
            return 2
        r = RECIPES[args.preset]
        config = TrainConfig(**{**PRESETS[args.preset].config, **r["config"],
                                **json.loads(args.config)})
        if args.iterations:
            config = dataclasses.replace(config, iterations=args.iterations)
        if args.time_limit:
            config = dataclasses.replace(config, time_limit=args.time_limit)
        config = dataclasses.replace(config, device="cpu", calibrate=False, val_every=0,
                                     checkpoint_every=250 if args.checkpoint_dir else 0)
        images, labels = data(args.preset, range(r["n_images"]), style=args.style)
        t0 = time.perf_counter()

        def progress(e: dict) -> None:
            if "loss" in e and e["iteration"] % 100 == 0:
                print(f"{e['iteration']} loss {e['loss']:.3f} var {e['var']:.3f} dist "
                      f"{e['dist']:.3f} fg {e['fg']:.3f} {e['seconds']:.0f}s", flush=True)

        result = train(images, labels, config, init_model=args.init, progress=progress,
                       checkpoint_dir=args.checkpoint_dir)
        seconds = time.perf_counter() - t0
        model = result.model
        cal = recalibrate(model, args.preset, args.style)
        model.config.extra["recipe"] = {"script": "scripts/train_default.py",
                                        "argv": sys.argv[1:], "train_seconds": seconds,
                                        "iterations_done": len(result.history)}
        save_model(model, out, overwrite=True)
        report.update({"train_seconds": seconds, "iterations": len(result.history),
                       "calibration": cal.to_dict(), "notes": result.notes})
        print(f"wrote {out}: {len(result.history)} iterations, {seconds:.0f} s; calibrated "
              f"bandwidth {model.config.extra.get('bandwidth')}, fg threshold "
              f"{model.config.extra.get('fg_threshold')}", flush=True)
    if args.skip_training and args.recalibrate:
        model = load_model(out)
        cal = recalibrate(model, args.preset, args.style)
        save_model(model, out, overwrite=True)
        report["calibration"] = cal.to_dict()
    if not args.no_heldout:
        model = load_model(out)
        print(f"held-out AP@0.5 of {out} (zero-shot):", flush=True)
        report["heldout"] = scores(model)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
