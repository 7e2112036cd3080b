"""The paper's story in one run (``nse demo``), on generated nuclei and the default model.

1. The network arithmetic: grid ``f^l``, capacity ``f^(d*l)``, context.
2. Correct tiles (``n * f^l`` on the global ``f^l`` grid) reproduce the whole-image pass;
   naive tiles (the network's own valid output size, pasted uncropped, as most tools do) do
   not: the maximum absolute difference of the network outputs shows it.
3. Both stitchings are segmented with the same (deterministic) clustering and scored against the
   generator's ground truth: seam splits, AP@0.5, false splits and merges.
4. The comparison figure, the label images and ``summary.json`` are written to a folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import data, metrics
from .compare import check_output_dir, compare_results, format_summary, save_comparison
from .errors import NSEError
from .geometry import Coordinate
from .model import UNet, load_model
from .options import ClusterOptions
from .predict import Predictor
from .segment import fix_bandwidth, segment_prediction
from .tiling import TilePlan

SHAPES = {False: (512, 512), True: (256, 256)}
TILE = 64  # the demo's correct output tile (px), before rounding to n * f^l
EQUAL_RTOL = 1e-4  # float32 noise of different convolution sizes stays far below this


def demo_tiles(geometry: Any, image_shape: tuple[int, ...]) -> tuple[Coordinate, Coordinate]:
    """``(correct, naive)`` output tiles for the demo.

    Correct: ``n * f^l`` of at most 64 px (and a quarter of the image), so that there are many
    seams (on one image the effect of a few seams drowns in the model's own errors). Naive:
    the smallest valid network output at least that large, pasted uncropped (for most nets it
    is no multiple of ``f^l``; if it is, ``f^l / 4`` more).
    """
    grid = geometry.grid
    correct = Coordinate(max(g, min(TILE, s // 4) // g * g) for g, s in zip(grid, image_shape))
    naive = geometry.valid_output_above(correct)
    naive = Coordinate(n if n % g else n + max(1, g // 4) for n, g in zip(naive, grid))
    return correct, naive


def _plan_text(plan: TilePlan) -> str:
    grid = plan.geometry.grid
    borders = plan.borders()
    off = sum(not plan.on_grid(t) for t in plan.tiles)
    axes = "; ".join(
        f"axis {a}: " + ", ".join(f"{p}{'' if p % g == 0 else '*'}" for p in b)
        for a, (b, g) in enumerate(zip(borders, grid))
    )
    return (f"{len(plan)} tiles of {tuple(plan.tile_shape)} (network output "
            f"{tuple(plan.net_output)}), {off} of {len(plan)} origins off the f^l grid\n"
            f"      tile borders at {axes}   (* = not a multiple of f^l)")


def run_demo(
    out_dir: str | os.PathLike | None = "nse-demo",
    *,
    quick: bool = False,
    overwrite: bool = False,
    model: UNet | str = "default",
    device: str = "auto",
    seed: int = 0,
    scope: str = "component",
    shape: tuple[int, int] | None = None,
    batch_size: int = 16,
    log: Callable[[str], None] | None = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns its summary (also written to ``out_dir/summary.json``).

    ``out_dir=None`` writes nothing. ``log`` receives the narrative line by line; ``shape``
    overrides the image size (512x512, ``quick``: 256x256). ``batch_size``: tiles per forward
    pass (16: on a CPU, batches of 4 small tiles run about 3x slower per tile).
    """
    say = log or (lambda _: None)
    t_start = time.perf_counter()
    if out_dir is not None:
        check_output_dir(out_dir, overwrite)
    source = model if isinstance(model, str) else "given"
    net = model if isinstance(model, UNet) else load_model(model, ndim=2)
    cfg = net.config
    if cfg.ndim != 2 or cfg.in_channels != 1:
        raise NSEError("the demo needs a 2D single-channel model")
    g = cfg.geometry
    times: dict[str, float] = {}

    say("nse demo: tile-and-stitch without seams (Rumberger et al., ICCV 2021)")
    say(f"model: {source} - {cfg.ndim}D U-Net, depth l={g.depth}, factor f={tuple(g.factor)}, "
        f"{cfg.upsampling} upsampling, {cfg.embedding_dim}-dim embeddings, valid convolutions")
    say("1. network arithmetic")
    say(f"   grid f^l = {tuple(g.grid)}: the output is periodic-{g.grid[0]} shift equivariant")
    say(f"   capacity f^(d*l) = {g.capacity}: at most that many same-looking objects can be "
        f"told apart")
    say(f"   context = {tuple(g.context)} px (input minus output); valid outputs "
        f"{', '.join(map(str, g.valid_output_sizes(4)[0]))}, ... (step f^l)")

    shape = tuple(shape) if shape is not None else SHAPES[quick]
    image, gt = data.nuclei(shape, seed=seed)
    say(f"2. data: generated nuclei {shape[0]}x{shape[1]}, seed {seed}: "
        f"{int(gt.max())} nuclei with ground truth")

    tile_c, tile_n = demo_tiles(g, shape)
    predictor = Predictor(net, device, batch_size=batch_size)
    plans = {"correct": predictor.plan(shape, "correct", tile_c),
             "naive": predictor.plan(shape, "naive", tile_n)}
    say("3. tile plans")
    say(f"   correct: {_plan_text(plans['correct'])}")
    say(f"   naive:   {_plan_text(plans['naive'])}")

    say("4. network output vs the whole-image pass")
    preds = {}
    for mode in ("whole", "correct", "naive"):
        t0 = time.perf_counter()
        stage = None if progress is None else (
            lambda d, t, m=mode: progress(f"predict {m}", d, t))
        preds[mode] = predictor.run(image, mode, None if mode == "whole" else plans[mode]
                                    .requested, progress=stage)
        times[f"predict_{mode}"] = time.perf_counter() - t0
    scale = float(np.abs(preds["whole"]).max()) or 1.0
    diff = {m: float(np.abs(preds[m] - preds["whole"]).max()) for m in ("correct", "naive")}
    equal = {m: diff[m] <= EQUAL_RTOL * scale for m in diff}
    for m in ("correct", "naive"):
        verdict = "equal (Cor. 4)" if equal[m] else "DIFFERENT at the tile borders"
        say(f"   {m:8} tiles: max |difference| = {diff[m]:.2g}  -> {verdict}")

    opts = ClusterOptions(scope=scope).resolve(cfg)
    relative = opts.relative_bandwidth
    opts, diameter = fix_bandwidth(preds["whole"], cfg.ndim, opts, device=device)
    span = (f" = {relative:.3g} x the span of the median object, {diameter:.1f} px in the "
            f"whole-image pass" if diameter else "")
    say(f"5. segmentation: foreground > {opts.fg_threshold:.3g}, mean-shift (bandwidth "
        f"{opts.bandwidth:.3g}{span}, scope {scope}), the same for every run")
    plans["whole"] = predictor.plan(shape, "whole")
    results = {}
    for mode in ("whole", "naive", "correct"):
        stage = None if progress is None else (
            lambda d, t, m=mode: progress(f"cluster {m}", d, t))
        results[mode] = segment_prediction(preds[mode], plans[mode], cfg, cluster=opts,
                                           device=device,
                                           progress=stage)
        results[mode].info["times"]["predict"] = times[f"predict_{mode}"]
        times[f"cluster_{mode}"] = results[mode].info["times"]["cluster"]
    whole = results.pop("whole").labels
    del plans["whole"], preds
    # the same objects (pixel sets), whatever their ids: a match at IoU = 1
    same = {m: int(metrics.match(whole, results[m].labels, 1.0)["tp"]) for m in results}
    n_whole = int(len(np.unique(whole[whole > 0])))
    for m in ("correct", "naive"):
        say(f"   {m:8} segmentation: {same[m]} of the whole-image pass's {n_whole} objects "
            f"reproduced pixel for pixel ({results[m].n_instances} objects in all)")
    comparison = compare_results(results["naive"], results["correct"], gt)
    table = format_summary(comparison.summary)
    for line in table.splitlines():
        say(f"   {line}")
    s = comparison.summary
    say("   (false splits/merges: Caicedo et al. 2019, IoU > 0.1, each object once; seam "
        "splits: ground-truth objects cut at this plan's tile borders)")

    summary = {
        "model": {"source": str(source), **{k: v for k, v in cfg.to_dict().items()
                                            if k not in ("extra",)}},
        "geometry": g.to_dict(),
        "data": {"generator": "napari_shift_equivariance.data.nuclei", "shape": list(shape),
                 "seed": seed, "n_objects": int(gt.max())},
        "plans": {m: {k: v for k, v in p.to_dict().items() if k != "tiles"}
                  for m, p in plans.items()},
        "equivalence": {"correct_vs_whole_max_abs": diff["correct"],
                        "naive_vs_whole_max_abs": diff["naive"],
                        "output_max_abs": scale,
                        "correct_equals_whole": bool(equal["correct"]),
                        "naive_equals_whole": bool(equal["naive"]),
                        "whole_objects": n_whole,
                        "correct_objects_identical_to_whole": same["correct"],
                        "naive_objects_identical_to_whole": same["naive"]},
        **s,
        "quick": quick,
    }
    comparison.summary = summary
    times["total"] = time.perf_counter() - t_start
    summary["times"] = times
    if out_dir is not None:
        files = save_comparison(comparison, image, out_dir, overwrite=overwrite,
                                extra={"image.tif": image, "gt_labels.tif": gt})
        say(f"   wrote {', '.join(f.name for f in files)}")
    n, c = s["naive"], s["correct"]
    say(f"6. summary: naive stitching cut {n['seam_splits']} ground-truth objects at its tile "
        f"seams, correct stitching {c['seam_splits']} (the whole-image pass's own errors on "
        f"its tile borders); {s['split_objects']} objects of the correct segmentation split "
        f"only by naive stitching. AP@0.5 naive {n['ap50']:.3f} ({n['false_splits']} false "
        f"splits), correct {c['ap50']:.3f} ({c['false_splits']}), equal to the whole-image "
        f"pass. {times['total']:.0f} s"
        + (f"; wrote {out_dir}/" if out_dir is not None else ""))
    return summary

