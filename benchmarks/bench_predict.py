"""Throughput of correct tile-and-stitch against the whole-image pass (same image, same model).

    python benchmarks/bench_predict.py [--size 2048] [--ndim 2] [--depth 4] [--base-channels 16]
                                       [--tile 512] [--batch-size 4] [--device auto] [--json]

Prints output megapixels (megavoxels) per second for one pass over the whole (padded) image and
for correct tiles of the requested size, and their ratio. Random weights: speed does not depend
on them. The first pass of each mode is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from napari_shift_equivariance.model import ModelConfig, build_model, resolve_device
from napari_shift_equivariance.predict import Predictor
from napari_shift_equivariance.tiling import default_tile


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None, help="image edge (default 2048 2D, 256 3D)")
    p.add_argument("--ndim", type=int, default=2)
    p.add_argument("--depth", type=int, default=None, help="default 4 (2D) / 3 (3D)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--tile", type=int, default=None, help="output tile (default: package default)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    depth = args.depth or (4 if args.ndim == 2 else 3)
    size = args.size or (2048 if args.ndim == 2 else 256)
    cfg = ModelConfig(ndim=args.ndim, depth=depth, factor=2, base_channels=args.base_channels,
                      embedding_dim=args.embedding_dim)
    device = resolve_device(args.device)
    model = build_model(cfg, seed=0)
    image = np.random.default_rng(0).random((size,) * args.ndim, dtype=np.float32)
    tile = args.tile or default_tile(cfg.geometry)[0]
    pred = Predictor(model, device, args.amp, args.batch_size)
    out = np.empty((cfg.out_channels, *image.shape), np.float32)

    t_whole = timed(lambda: pred.run(image, "whole", out=out), args.repeats)
    t_tiles = timed(lambda: pred.run(image, "correct", tile, out=out), args.repeats)
    plan = pred.plan(image.shape, "correct", tile)
    mpx = image.size / 1e6
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, {torch.cuda.get_device_name() if device.type == 'cuda' else 'no GPU'}",
        "device": str(device), "torch": torch.__version__, "amp": args.amp,
        "image": list(image.shape), "depth": depth, "grid": list(cfg.geometry.grid),
        "context": list(cfg.geometry.context), "base_channels": args.base_channels,
        "tile": list(plan.tile_shape), "n_tiles": len(plan), "batch_size": args.batch_size,
        "whole_s": round(t_whole, 3), "tiles_s": round(t_tiles, 3),
        "whole_mpx_s": round(mpx / t_whole, 3), "tiles_mpx_s": round(mpx / t_tiles, 3),
        "ratio": round(t_whole / t_tiles, 3),
        "input_overhead_tiles": round(len(plan) * plan.net_input.prod() / image.size, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    unit = "Mpx/s" if args.ndim == 2 else "Mvox/s"
    print(f"{result['machine']} | {device} | torch {torch.__version__}")
    print(f"{args.ndim}D image {image.shape}, U-Net l={depth} f=2 base {args.base_channels}, "
          f"grid {tuple(cfg.geometry.grid)}, context {tuple(cfg.geometry.context)}")
    print(f"whole image : {t_whole:8.2f} s  {result['whole_mpx_s']:8.2f} {unit}")
    print(f"correct {tuple(plan.tile_shape)} x{len(plan)} (batch {args.batch_size}): "
          f"{t_tiles:8.2f} s  {result['tiles_mpx_s']:8.2f} {unit}")
    print(f"ratio tiles/whole throughput: {result['ratio']:.2f} "
          f"(tiles read {result['input_overhead_tiles']:.2f}x the image's pixels)")


if __name__ == "__main__":
    main()
