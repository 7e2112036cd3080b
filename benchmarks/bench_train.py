"""Training throughput, and a useful nuclei model from one annotated 256 x 256 image.

    python benchmarks/bench_train.py [--json] [--threads N] [--budget SECONDS] [--quick]
                                     [--device cpu,cuda] [--throughput-only]

1. Throughput (iterations/s, crops/s, labelled output pixels/s) of a few 2D configurations on
   each ``--device`` (default: the CPU, and CUDA when a GPU is present).
2. The 5-minute goal: train from scratch on ONE generated 256 x 256 nuclei image for
   ``--budget`` seconds (constant learning rate, stopped by a time-based cancel), then
   AP@0.5 on held-out images (other seeds); the same budget fine-tuning the bundled default
   model, when it is installed.
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

from napari_shift_equivariance.data import nuclei
from napari_shift_equivariance.model import default_model_path
from napari_shift_equivariance.train import TrainConfig, evaluate, train

CONFIGS = {
    # name: (base channels, output window, batch size)
    "d3 b12 window 100 batch 2 (default recipe)": (12, 100, 2),
    "d3 b12 window 196 batch 2": (12, 196, 2),
    "d3 b16 window 100 batch 4": (16, 100, 4),
    "d3 b8 window 68 batch 4": (8, 68, 4),
}


def throughput(device: str, iterations: int, image, labels, configs: int | None = None) -> dict:
    out = {}
    for name, (base, window, batch) in list(CONFIGS.items())[:configs]:
        cfg = TrainConfig(depth=3, base_channels=base, window=window, batch_size=batch,
                          iterations=3 + iterations, device=device, calibrate=False)
        times: list[float] = []

        def tick(entry, t=times):
            if entry.get("stage", "train") == "train":  # one per iteration, not "done" etc.
                t.append(time.perf_counter())

        train([image], [labels], cfg, progress=tick)
        # the first 3 iterations warm up; the median step resists a busy machine's hiccups
        its = 1.0 / float(np.median(np.diff(times[2:])))
        out[name] = {"iterations_per_s": its, "crops_per_s": its * batch,
                     "output_mpx_per_s": its * batch * window**2 / 1e6}
        print(f"  {device} {name}: {its:.2f} it/s, {its * batch:.2f} crops/s, "
              f"{its * batch * window ** 2 / 1e6:.3f} labelled Mpx/s", flush=True)
    return out


def one_image(budget: float, heldout: list, init: str | None) -> dict:
    """Train on one image until the budget is spent (constant lr, so stopping at any time is
    fine), then AP@0.5 on the held-out images at two mean-shift bandwidths."""
    image, labels = nuclei((256, 256), seed=7)
    cfg = TrainConfig(depth=3, base_channels=12, window=100, batch_size=2,
                      lr=5e-4 if init else 2e-3, lr_schedule="constant", iterations=10**6,
                      device="cpu", seed=0)
    t0 = time.perf_counter()
    result = train([image], [labels], cfg, init_model=init,
                   cancel=lambda: time.perf_counter() - t0 > budget)
    seconds = time.perf_counter() - t0
    done = result.history[-1]["iteration"]
    images, gts = [p[0] for p in heldout], [p[1] for p in heldout]
    scores = {bw: evaluate(result.model, images, gts, bandwidth=bw, device="cpu")
              for bw in (1.5, 3.0)}
    name = "fine-tuned from default" if init else "from scratch"
    print(f"  {name}: {done} iterations in {seconds:.0f} s, held-out AP@0.5 "
          + ", ".join(f"{s['ap']:.3f} at bandwidth {bw} "
                      f"{[round(r['ap'], 3) for r in s['images']]}" for bw, s in scores.items()),
          flush=True)
    return {"iterations": done, "seconds": seconds,
            "ap50": {str(bw): s["ap"] for bw, s in scores.items()},
            "per_image": {str(bw): [r["ap"] for r in s["images"]] for bw, s in scores.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON document at the end")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--budget", type=float, default=300.0, help="seconds for the one-image goal")
    p.add_argument("--quick", action="store_true", help="fewer iterations, 30 s budget")
    p.add_argument("--device", default=None,
                   help="comma list of devices for the throughput (default: cpu, and cuda if "
                   "present)")
    p.add_argument("--configs", type=int, default=None,
                   help="only the first N throughput configurations")
    p.add_argument("--throughput-only", action="store_true",
                   help="skip the one-image training goal (CPU, --budget seconds)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    iterations = 3 if args.quick else 20
    budget = 30.0 if args.quick else args.budget
    report = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "processor": platform.processor() or platform.machine(),
                          "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                          else None,
                          "load_average": os.getloadavg()}}
    image, labels = nuclei((256, 256), seed=7)
    print("training throughput:", flush=True)
    devices = (args.device.split(",") if args.device
               else ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    report["throughput"] = {
        d: throughput(d, iterations * (5 if d.startswith("cuda") else 1), image, labels,
                      args.configs)
        for d in (d.strip() for d in devices) if d
    }
    if args.throughput_only:
        if args.json:
            print(json.dumps(report))
        return 0
    print(f"one annotated 256 x 256 image, {budget:.0f} s budget (CPU):", flush=True)
    heldout = [nuclei((256, 256), seed=100 + k) for k in range(3)]
    report["one_image"] = {"budget_s": budget,
                           "scratch": one_image(budget, heldout, None)}
    if default_model_path(2).exists():
        report["one_image"]["fine_tuned"] = one_image(budget, heldout, "default")
    report["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
