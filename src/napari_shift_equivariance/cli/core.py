"""``nse info``, ``nse init``, ``nse grid`` and ``nse predict``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..batch import expand_inputs
from ..errors import NSEError
from ..options import STITCH_MODES
from ._batch import add_batch, batch_predict
from ._blockwise import add_blockwise, maybe_run
from ._common import (
    Progress,
    add_common,
    add_image_options,
    add_tiling,
    emit,
    image_options,
    int_list,
    resolve_mode,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="network arithmetic: grid, capacity, context, valid sizes")
    p.add_argument("--model", help="a model file or 'default'")
    p.add_argument("--ndim", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--factor", type=int_list)
    add_common(p, json_flag=True)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a model with random weights")
    p.add_argument("--ndim", type=int, required=True)
    p.add_argument("--depth", type=int, required=True)
    p.add_argument("--factor", type=int_list, required=True)
    p.add_argument("--upsampling", choices=["learnt", "nearest"], default="learnt")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="model file (.pt)")
    p.add_argument("--overwrite", action="store_true")
    add_common(p, json_flag=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("grid", help="the tile plan: input and output box of every tile")
    p.add_argument("image")
    p.add_argument("--model", required=True)
    p.add_argument("--tile", type=int_list)
    p.add_argument("--stitch", choices=STITCH_MODES, default="correct")
    p.add_argument("--channel-axis", type=int, default=None)
    add_common(p, device=True, json_flag=True)  # the default tile depends on the device
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("predict", help="embeddings + foreground probability for every pixel")
    p.add_argument("image")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help=".npy, .tif or .zarr (zarr: chunk = tile); "
                   "a folder when IMAGE is a folder or a 'GLOB'")
    p.add_argument("--overwrite", action="store_true")
    add_batch(p, ".zarr")
    add_tiling(p)
    add_image_options(p)
    add_blockwise(p)
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_predict)


def cmd_info(args: argparse.Namespace) -> int:
    from ..geometry import UNetGeometry
    from ..model import load_model

    if args.model:
        if any(v is not None for v in (args.ndim, args.depth, args.factor)):
            raise NSEError("give either --model or --ndim/--depth/--factor, not both")
        config = load_model(args.model).config
        g = config.geometry
        data = {**g.to_dict(), "model": config.to_dict()}
    else:
        if args.ndim is None or args.depth is None or args.factor is None:
            raise NSEError("give --model M, or all of --ndim, --depth and --factor")
        g = UNetGeometry.create(args.ndim, args.depth, args.factor)
        data = g.to_dict()
    text = "\n".join([
        f"ndim {g.ndim}, depth l={g.depth}, factor f={tuple(g.factor)}",
        f"grid f^l:          {tuple(g.grid)}",
        f"capacity f^(d*l):  {g.capacity} same-looking objects",
        f"context:           {tuple(g.context)} (input - output per axis)",
        f"min input/output:  {tuple(g.min_input)} -> {tuple(g.min_output)}",
        f"valid outputs:     {', '.join(map(str, g.valid_output_sizes()[-1]))}, ... (step f^l)",
        "correct tiles:     n*f^l on the global f^l grid",
    ])
    emit(args, data, text)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from ..io import check_output_path
    from ..model import ModelConfig, build_model, save_model

    check_output_path(args.out, args.overwrite)
    config = ModelConfig(
        ndim=args.ndim, depth=args.depth, factor=args.factor, upsampling=args.upsampling,
        base_channels=args.base_channels, embedding_dim=args.embedding_dim,
        in_channels=args.in_channels,
    )
    model = build_model(config, seed=args.seed)
    path = save_model(model, args.out, overwrite=args.overwrite)
    n_params = sum(p.numel() for p in model.parameters())
    emit(args, {"model": str(path), "config": config.to_dict(), "parameters": n_params},
         f"wrote {path} ({n_params:,} parameters, grid f^l {tuple(config.geometry.grid)})")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from ..io import read_image
    from ..model import load_model
    from ..predict import axis_layout
    from ..tiling import plan_tiles

    image = read_image(args.image, **image_options(args))
    config = load_model(args.model).config
    layout = axis_layout(image.shape, config.ndim, config.in_channels, args.channel_axis)
    plan = plan_tiles(layout.spatial_shape(image.shape), config.geometry, args.tile, args.stitch,
                      args.device)
    lines = [
        f"{plan.mode}: {len(plan)} tiles of {tuple(plan.tile_shape)} over "
        f"{tuple(plan.image_shape)}; network {tuple(plan.net_input)} -> "
        f"{tuple(plan.net_output)}; grid f^l {tuple(config.geometry.grid)}; "
        f"{plan.efficiency:.0%} of computed outputs kept",
    ]
    for t in plan.tiles[:20]:
        lines.append(f"  tile {t.index}: input {t.input_roi.to_list()} -> output "
                     f"{t.output_roi.to_list()}{'' if plan.on_grid(t) else '  (off grid)'}")
    if len(plan) > 20:
        lines.append(f"  ... {len(plan) - 20} more (use --json for all)")
    emit(args, plan.to_dict(), "\n".join(lines))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..io import atomic_path, check_output_path, create_zarr, read_image, write_array
    from ..model import load_model
    from ..predict import Predictor

    if (sources := expand_inputs(args.image)) is not None:  # a folder or a glob
        return batch_predict(args, sources)
    if (code := maybe_run(args, "predict")) is not None:  # blockwise: by flag or memory
        return code
    out_path = Path(args.out)
    if out_path.suffix.lower() not in (".npy", ".tif", ".tiff", ".zarr"):
        raise NSEError(f"--out must end in .npy, .tif, .tiff or .zarr, got {out_path.name}")
    check_output_path(out_path, args.overwrite)
    image = read_image(args.image, **image_options(args))
    mode, tile = resolve_mode(args)
    predictor = Predictor(load_model(args.model), args.device, args.amp, args.batch_size,
                          args.pad)
    cfg = predictor.config
    plan = predictor.plan(image.shape, mode, tile, args.channel_axis)
    with Progress(f"predict ({mode})", args.quiet) as bar:
        if out_path.suffix.lower() == ".zarr":
            lead_n = len(image.shape) - cfg.ndim - (1 if cfg.in_channels > 1 else 0)
            shape = (cfg.out_channels, *image.shape[:lead_n], *plan.image_shape)
            # one chunk per output tile: tiles never write into the same chunk
            chunks = (cfg.out_channels, *([1] * lead_n), *plan.tile_shape)
            with atomic_path(out_path, args.overwrite) as tmp:
                z = create_zarr(tmp, shape, np.float32, chunks)
                predictor.run(image, mode, tile, channel_axis=args.channel_axis, out=z,
                              progress=bar)
                z.attrs.update({"mode": mode, "tile": list(plan.tile_shape),
                                "channels": "embedding..., foreground probability"})
        else:
            result = predictor.run(image, mode, tile, channel_axis=args.channel_axis,
                                   progress=bar)
            write_array(out_path, result, overwrite=args.overwrite)
            shape = result.shape
    emit(args, {"out": str(out_path), "shape": list(shape), "mode": mode,
                "n_tiles": len(plan), "tile": list(plan.tile_shape),
                "device": str(predictor.device)},
         f"wrote {out_path}: shape {tuple(shape)} ({cfg.embedding_dim} embedding channels + "
         f"foreground probability), {mode}, {len(plan)} tiles on {predictor.device}")
    return 0
