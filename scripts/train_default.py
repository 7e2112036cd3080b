"""Train the bundled default 2D model (the ``default`` preset) and evaluate it on held-out data.

    python scripts/train_default.py --overwrite      # train, calibrate, write default_2d.pt,
                                                     # evaluate
    python scripts/train_default.py --skip-training  # calibrate + evaluate the shipped model
    nse train --preset default --out M.pt            # the same recipe from the command line

The recipe (data, seeds, settings) is ``napari_shift_equivariance.train.preset("default")``.
Same torch version, same CPU kind and same ``--threads`` give bit-identical weights.
The held-out images below use other seeds, sizes and generator settings than training.

Calibration: the mean-shift bandwidth that gives the best AP@0.5 on the first training images
(never on held-out ones) is stored as ``config.extra["bandwidth"]``; held-out AP is reported
both at that bandwidth and at the default derived from the loss margins.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.model import default_model_path, load_model, save_model
from napari_shift_equivariance.train import evaluate, preset, train

#: held-out sets: other seeds (training used 0..47), other sizes, other generator settings
HELDOUT = {
    "varied settings, new seeds, 384 px": [
        {"shape": (384, 384), "style": "varied", "seed": 10_000 + k} for k in range(6)],
    "generator defaults, 256 px": [{"shape": (256, 256), "seed": 20_000 + k} for k in range(4)],
    "small, dense, touching": [
        {"shape": (256, 256), "radius": (3.0, 5.0), "density": 0.3, "touching": 0.5,
         "seed": 30_000 + k} for k in range(3)],
    "large, dim, noisy": [
        {"shape": (384, 384), "radius": (10.0, 16.0), "brightness": (0.15, 0.4),
         "poisson": 20.0, "gaussian": 0.05, "seed": 40_000 + k} for k in range(3)],
}


BANDWIDTHS = (1.0, 1.5, 2.0, 2.5, 3.0)
CALIBRATION_IMAGES = 6


def calibrate_bandwidth(model, device: str = "cpu") -> tuple[float, dict]:
    """The bandwidth with the best mean AP@0.5 on the first training images of the recipe."""
    images, labels, _ = preset("default", n_images=CALIBRATION_IMAGES)
    scores = {bw: evaluate(model, images, labels, bandwidth=bw, device=device)["ap"]
              for bw in BANDWIDTHS}
    print("calibration (training images):",
          ", ".join(f"bandwidth {bw}: AP {ap:.3f}" for bw, ap in scores.items()), flush=True)
    return max(scores, key=scores.get), scores


def heldout_scores(model, bandwidth: float | None = None, device: str = "cpu") -> dict:
    out = {}
    for name, settings in HELDOUT.items():
        pairs = [nuclei(**s) for s in settings]
        t0 = time.perf_counter()
        res = evaluate(model, [p[0] for p in pairs], [p[1] for p in pairs],
                       bandwidth=bandwidth, device=device)
        out[name] = {"ap50": res["ap"], "images": len(pairs),
                     "per_image": [round(r["ap"], 3) for r in res["images"]],
                     "seconds": time.perf_counter() - t0}
        print(f"  {name}: AP@0.5 {res['ap']:.3f} {out[name]['per_image']}", flush=True)
    aps = [v["ap50"] for v in out.values()]
    out["mean"] = sum(aps) / len(aps)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(default_model_path(2)), help="model file to write")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: fastest on a shared 2-core machine)")
    p.add_argument("--iterations", type=int, help="override the preset's iteration count")
    p.add_argument("--checkpoint-dir", default="/tmp/nse-default-checkpoints")
    p.add_argument("--resume", help="checkpoint to continue from")
    p.add_argument("--skip-training", action="store_true",
                   help="calibrate and evaluate an existing --out")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    report: dict = {"threads": args.threads, "torch": torch.__version__}
    if not args.skip_training:
        if out.exists() and not args.overwrite:
            print(f"{out} exists; pass --overwrite", file=sys.stderr)
            return 2
        images, labels, config = preset("default")
        if args.iterations:
            config = dataclasses.replace(config, iterations=args.iterations)
        config = dataclasses.replace(config, checkpoint_every=250)

        def progress(e: dict) -> None:
            if e["iteration"] % 50 == 0 or e["iteration"] == e["iterations"]:
                print(f"{e['iteration']}/{e['iterations']} loss {e['loss']:.3f} var "
                      f"{e['var']:.3f} dist {e['dist']:.3f} fg {e['fg']:.3f} "
                      f"{e['seconds']:.0f}s", flush=True)

        result = train(images, labels, config, progress=progress,
                       checkpoint_dir=args.checkpoint_dir, resume=args.resume)
        seconds = result.history[-1]["seconds"]
        result.model.config.extra["train_seconds"] = seconds
        save_model(result.model, out, overwrite=True)
        report.update({"train_seconds": seconds, "iterations": config.iterations,
                       "final_loss": result.history[-1]["loss"], "notes": result.notes})
        print(f"wrote {out} ({seconds:.0f} s of training)", flush=True)
    model = load_model(out)
    bandwidth, calibration = calibrate_bandwidth(model)
    model.config.extra["bandwidth"] = bandwidth
    save_model(model, out, overwrite=True)
    report["calibration"] = {"bandwidth": bandwidth, "train_ap50": calibration}
    from napari_shift_equivariance.segment import default_bandwidth

    report["heldout"] = {}
    for name, bw in (("margins", default_bandwidth(model.config)), ("calibrated", bandwidth)):
        print(f"held-out AP@0.5, bandwidth {bw} ({name}):", flush=True)
        report["heldout"][name] = {"bandwidth": bw, **heldout_scores(model, bw)}
        print(f"  mean AP@0.5 {report['heldout'][name]['mean']:.3f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
