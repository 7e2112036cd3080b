"""Throughput of correct tile-and-stitch against the whole-image pass (same image, same model).

    python benchmarks/bench_predict.py [--size N] [--ndim 2] [--depth 4] [--base-channels 16]
                                       [--tiles 512,1024] [--batch-size B] [--device auto]
                                       [--amp none|bf16|fp16] [--json]

Prints output megapixels (megavoxels) per second for one pass over the whole (padded) image and
for correct tiles of each requested size (default: the package's default tile for the device),
their ratio, and the ratio the input pixels predict, ``whole input / tiles' input``: where
compute follows input pixels (a GPU) that is the ceiling. Random weights: speed does not depend
on them. The first pass of each mode is a warm-up and is not timed. Default image: 2048 (2D) or
256 (3D) on a CPU, 4096 / 384 on a GPU, so that the GPU's larger default tile still tiles.
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
from napari_shift_equivariance.tiling import device_kind

DEFAULT_SIZE = {"cpu": {2: 2048, 3: 256}, "gpu": {2: 4096, 3: 384}}


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=None,
                   help="image edge (default 2048 2D / 256 3D on a CPU, 4096 / 384 on a GPU)")
    p.add_argument("--ndim", type=int, default=2)
    p.add_argument("--depth", type=int, default=None, help="default 4 (2D) / 3 (3D)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--tiles", default=None,
                   help="comma list of output tiles, 0 for the package default for the device "
                   "(default: 0)")
    p.add_argument("--tile", type=int, default=None, help="one output tile (same as --tiles N)")
    p.add_argument("--batch-size", type=int, default=None, help="default: automatic")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    device = resolve_device(args.device)
    kind = device_kind(device)
    depth = args.depth or (4 if args.ndim == 2 else 3)
    size = args.size or DEFAULT_SIZE[kind][args.ndim]
    cfg = ModelConfig(ndim=args.ndim, depth=depth, factor=2, base_channels=args.base_channels,
                      embedding_dim=args.embedding_dim)
    model = build_model(cfg, seed=0)
    image = np.random.default_rng(0).random((size,) * args.ndim, dtype=np.float32)
    pred = Predictor(model, device, args.amp, args.batch_size)
    out = np.empty((cfg.out_channels, *image.shape), np.float32)
    tiles: list[int | None] = [None]
    if args.tiles or args.tile:
        tiles = [int(t) or None for t in (args.tiles or str(args.tile)).split(",") if t.strip()]

    mpx = image.size / 1e6
    whole_plan = pred.plan(image.shape, "whole")
    whole_input = whole_plan.net_input.prod()
    t_whole = timed(lambda: pred.run(image, "whole", out=out), args.repeats, device)
    whole_info = dict(pred.info)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}",
        "device": str(device), "torch": torch.__version__, "amp": args.amp,
        "image": list(image.shape), "depth": depth, "grid": list(cfg.geometry.grid),
        "context": list(cfg.geometry.context), "base_channels": args.base_channels,
        "whole_s": round(t_whole, 3), "whole_mpx_s": round(mpx / t_whole, 3),
        "whole_peak_gb": peak_memory_gb(device), "whole_notes": whole_info.get("notes", []),
        "tiles": [],
    }
    for tile in tiles:
        t_tiles = timed(lambda t=tile: pred.run(image, "correct", t, out=out), args.repeats,
                        device)
        plan = pred.plan(image.shape, "correct", tile)
        result["tiles"].append({
            "requested": tile, "tile": list(plan.tile_shape), "n_tiles": len(plan),
            "batch_size": pred.info.get("batch_size"), "tiles_s": round(t_tiles, 3),
            "tiles_mpx_s": round(mpx / t_tiles, 3), "ratio": round(t_whole / t_tiles, 3),
            "input_ratio": round(whole_input / (len(plan) * plan.net_input.prod()), 3),
            "peak_gb": peak_memory_gb(device), "notes": pred.info.get("notes", []),
        })
    if args.json:
        print(json.dumps(result))
        return
    unit = "Mpx/s" if args.ndim == 2 else "Mvox/s"
    print(f"{result['machine']} | {device} | torch {torch.__version__} | amp {args.amp}")
    print(f"{args.ndim}D image {image.shape}, U-Net l={depth} f=2 base {args.base_channels}, "
          f"grid {tuple(cfg.geometry.grid)}, context {tuple(cfg.geometry.context)}")
    mem = f", peak {result['whole_peak_gb']} GB" if result["whole_peak_gb"] is not None else ""
    print(f"whole image : {t_whole:8.3f} s  {result['whole_mpx_s']:9.2f} {unit}{mem}")
    for note in result["whole_notes"]:
        print(f"  note: {note}")
    for r in result["tiles"]:
        mem = f", peak {r['peak_gb']} GB" if r["peak_gb"] is not None else ""
        default = " (default)" if r["requested"] is None else ""
        print(f"correct {tuple(r['tile'])}{default} x{r['n_tiles']} (batch {r['batch_size']}): "
              f"{r['tiles_s']:8.3f} s  {r['tiles_mpx_s']:9.2f} {unit}{mem}; ratio tiles/whole "
              f"{r['ratio']:.2f} (input pixels predict {r['input_ratio']:.2f})")
        for note in r["notes"]:
            print(f"  note: {note}")


if __name__ == "__main__":
    main()
