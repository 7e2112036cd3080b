"""Segmentation speed and quality on this machine.

1. A large generated nuclei image (default 2048x2048) with the default model: prediction
   (correct tiles) and clustering timed separately (goal: < 1 minute in total on a 2-core CPU).
2. The clustering scopes (component, global, block) on held-out generated images (seeds the
   default model was not trained on): AP@0.5 against the generator's labels and clustering
   time, the prediction shared by all scopes. Used to choose the default scope.

Run: ``python benchmarks/bench_segment.py [--model default] [--size 2048] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from napari_shift_equivariance import data, metrics
from napari_shift_equivariance.model import load_model
from napari_shift_equivariance.predict import Predictor
from napari_shift_equivariance.segment import SCOPES, default_bandwidth, segment_prediction

HELD_OUT_SEEDS = (9001, 9002, 9003, 9004)


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "torch": torch.__version__}


def large_image(model, size: int, device: str, scope: str) -> dict:
    image, gt = data.nuclei((size, size), seed=HELD_OUT_SEEDS[0])
    predictor = Predictor(model, device)
    plan = predictor.plan(image.shape, "correct", None)
    t0 = time.perf_counter()
    pred = predictor.run(image, "correct", None)
    t_pred = time.perf_counter() - t0
    res = segment_prediction(pred, plan, model.config, scope=scope, device=device)
    t_clu = res.info["times"]["cluster"]
    ap = float(metrics.match(gt, res.labels, 0.5)["ap"])
    return {"size": size, "tile": list(plan.tile_shape), "n_tiles": len(plan),
            "n_gt": int(gt.max()), "n_instances": res.n_instances,
            "n_foreground": res.info["n_foreground"], "scope": scope,
            "predict_s": t_pred, "cluster_s": t_clu, "total_s": t_pred + t_clu, "ap50": ap}


def scopes(model, size: int, n_images: int, device: str) -> dict:
    out = {s: {"ap50": [], "cluster_s": [], "n_instances": []} for s in SCOPES}
    predictor = Predictor(model, device)
    for seed in HELD_OUT_SEEDS[:n_images]:
        image, gt = data.nuclei((size, size), seed=seed, style="varied")
        plan = predictor.plan(image.shape, "correct", None)
        pred = predictor.run(image, "correct", None)
        for scope in SCOPES:
            res = segment_prediction(pred, plan, model.config, scope=scope, device=device)
            out[scope]["ap50"].append(float(metrics.match(gt, res.labels, 0.5)["ap"]))
            out[scope]["cluster_s"].append(res.info["times"]["cluster"])
            out[scope]["n_instances"].append(res.n_instances)
    return {s: {"ap50_mean": float(np.mean(v["ap50"])), "ap50": v["ap50"],
                "cluster_s_mean": float(np.mean(v["cluster_s"])), "cluster_s": v["cluster_s"],
                "n_instances": v["n_instances"]} for s, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--size", type=int, default=2048, help="side of the large image")
    p.add_argument("--scope-size", type=int, default=1024,
                   help="side of the held-out images (> the block size, so blocks matter)")
    p.add_argument("--n-images", type=int, default=3, help="held-out images for the scopes")
    p.add_argument("--scope", default="component", help="scope for the large image")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    report = {"machine": machine(), "model": args.model,
              "bandwidth": default_bandwidth(model.config)}
    report["large"] = large_image(model, args.size, args.device, args.scope)
    report["scopes"] = scopes(model, args.scope_size, args.n_images, args.device)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    if args.json:
        print(json.dumps(report))
        return 0
    m, big = report["machine"], report["large"]
    print(f"machine: {m['cpu_count']} cores, torch {m['torch_threads']} threads, "
          f"load {m['load_average'][0]:.1f} -> {m['load_average_end'][0]:.1f}, "
          f"cuda {m['cuda']}")
    print(f"{big['size']}x{big['size']} nuclei, model {args.model}, correct tiles "
          f"{tuple(big['tile'])} ({big['n_tiles']} tiles), scope {big['scope']}:")
    print(f"  predict {big['predict_s']:.1f} s, cluster {big['cluster_s']:.1f} s, total "
          f"{big['total_s']:.1f} s; {big['n_instances']} instances ({big['n_gt']} in GT), "
          f"AP@0.5 {big['ap50']:.3f}")
    print(f"scopes on {args.n_images} held-out {args.scope_size}x{args.scope_size} images "
          f"(style varied, seeds {HELD_OUT_SEEDS[:args.n_images]}):")
    print(f"  {'scope':10}{'AP@0.5':>9}{'cluster s':>11}  per image AP")
    for s, v in report["scopes"].items():
        per = ", ".join(f"{a:.3f}" for a in v["ap50"])
        print(f"  {s:10}{v['ap50_mean']:9.3f}{v['cluster_s_mean']:11.2f}  {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
