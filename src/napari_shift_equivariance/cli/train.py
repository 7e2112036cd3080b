"""``nse train`` and ``nse experiment``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import NSEError
from ._common import add_common, emit, int_list

#: the recipes of ``--preset`` (kept in step with ``train.config.PRESETS`` without importing
#: torch for ``--help``; a test checks)
PRESET_NAMES = ("default", "default-finetune", "default3d")

#: flags that map one-to-one onto TrainConfig fields (None = keep the config's default)
CONFIG_FLAGS = (
    "ndim", "depth", "factor", "base_channels", "embedding_dim", "upsampling", "window",
    "iterations", "lr", "batch_size", "seed", "device", "delta_v", "delta_d", "background",
    "ignore_index", "fg_loss", "val_every", "checkpoint_every", "time_limit", "coord_scale",
    "calibrate_on", "refit",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train (or fine-tune) a model on images + instance labels",
        description="Train an embedding U-Net with the discriminative loss. Crops have an "
        "output window > f^l per axis (the paper's rule against seams). Same seed + same data "
        "on the CPU gives the same model.",
    )
    p.add_argument("--image", action="append", default=[], metavar="I",
                   help="training image (.tif, .npy, .zarr); repeat for several")
    p.add_argument("--labels", action="append", default=[], metavar="L",
                   help="instance labels of the image given at the same position (integers, "
                   "0 = background)")
    p.add_argument("--out", required=True, help="model file to write (.pt)")
    p.add_argument("--preset", choices=list(PRESET_NAMES),
                   help="the recipe of a bundled model on generated data (no --image): "
                   "default (the shipped 2D model), default-finetune (1200 more iterations "
                   "on mixed nuclei, with --from) or default3d")
    p.add_argument("--from", dest="init", metavar="M0",
                   help="fine-tune from this model file or 'default'")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint file")
    arch = p.add_argument_group("network (ignored with --from / --resume)")
    arch.add_argument("--ndim", type=int, choices=[2, 3],
                      help="2 (images, or z-stacks plane by plane) or 3 (volumes); default: 2 "
                      "for 2D images, required for 3D arrays")
    arch.add_argument("--depth", type=int, help="poolings l (default 3)")
    arch.add_argument("--factor", type=int_list, help="pooling factor f (default 2)")
    arch.add_argument("--base-channels", type=int, help="default 16")
    arch.add_argument("--embedding-dim", type=int, help="default 8")
    arch.add_argument("--upsampling", choices=["learnt", "nearest"])
    t = p.add_argument_group("training")
    t.add_argument("--window", type=int_list,
                   help="training output window per axis; must exceed f^l (default 4*f^l, "
                   "at least 64 px in 2D / 32 in 3D, rounded up to a valid size)")
    t.add_argument("--allow-small-window", action="store_true",
                   help="accept a window <= f^l (makes seams: the paper's failure case)")
    t.add_argument("--iterations", type=int,
                   help="default 2000; with --time-limit: no iteration limit")
    t.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop training in time to validate, calibrate and save within SECONDS "
                   "(the learning-rate schedule follows the clock)")
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3, cosine decay)")
    t.add_argument("--batch-size", type=int, help="crops per iteration (default 4)")
    t.add_argument("--seed", type=int, help="default 0")
    t.add_argument("--delta-v", type=float, help="pull margin (default 0.5)")
    t.add_argument("--delta-d", type=float, help="push margin (default 1.5)")
    t.add_argument("--coord-scale", type=float, metavar="UNITS_PER_PX",
                   help="coordinates: embedding units per pixel added to the first ndim "
                   "embedding channels, so each pixel learns to point at its object's centre "
                   "(default for new models: 8 / the median object diameter in px; the start "
                   "model's when fine-tuning; 0: off)")
    t.add_argument("--background", choices=["ignore", "instance"],
                   help="ignore: background only in the foreground channel (default); "
                   "instance: background is one more instance (the paper)")
    t.add_argument("--ignore-index", type=int, help="label value of unannotated pixels")
    t.add_argument("--fg-loss", choices=["bce", "dice", "bce+dice"])
    t.add_argument("--boundary-gap", action="store_true",
                   help="train the foreground to leave a 1-px gap between touching instances "
                   "(their borders become background in the training targets)")
    t.add_argument("--no-augment", action="store_true", help="no on-the-fly augmentation")
    t.add_argument("--in-plane-only", action="store_true",
                   help="3D: flip, rotate and deform in-plane only (anisotropic stacks)")
    t.add_argument("--val-every", type=int,
                   help="validate (AP@0.5 on the held-out crop) every N iterations (default: "
                   "about 10 times per run; 0: only at the end)")
    t.add_argument("--val-fraction", type=float,
                   help="share of the largest image held out for validation (default 0.2)")
    t.add_argument("--keep-best", action="store_true",
                   help="return the weights with the best validation AP, not the last ones")
    t.add_argument("--no-calibrate", action="store_true",
                   help="do not choose bandwidth / foreground threshold / minimum size after "
                   "training (segment then uses the loss margins)")
    t.add_argument("--calibrate-on", choices=["all", "validation"],
                   help="all (default): calibrate on the whole training images, the held-out "
                   "crop among them (a crop of a few objects picks noisy settings); "
                   "validation: on the held-out crop alone")
    t.add_argument("--refit", type=float, metavar="SHARE",
                   help="the last SHARE of the run also trains on the held-out crop, whose AP "
                   "is measured just before (0: it stays held out)")
    t.add_argument("--checkpoint-every", type=int, help="write a checkpoint every N iterations")
    t.add_argument("--checkpoint-dir", help="checkpoint folder (default: OUT.checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("experiment", help="reproduce the paper's Fig. 2 or Fig. 4 (CPU minutes)")
    p.add_argument("name", choices=["fig2", "fig4"])
    p.add_argument("--out", help="folder for exp_<name>.png and exp_<name>.json")
    p.add_argument("--quick", action="store_true", help="tiny nets, few iterations (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing exp_<name> files in --out")
    add_common(p, json_flag=True)
    p.set_defaults(func=cmd_experiment)


class TrainBar:
    """A tqdm bar on stderr fed by ``train``'s progress events: iterations (or per mille of
    the time limit) with the loss and validation AP in the postfix, then the calibration."""

    def __init__(self, total: int, quiet: bool, timed: bool = False):
        self.bar = None
        self.timed = timed
        self.val = None
        self.calibrating = False
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000 if timed else total, desc="train", file=sys.stderr,
                            dynamic_ncols=True, leave=False,
                            unit="‰" if timed else "it")

    def __call__(self, entry: dict) -> None:
        if self.bar is None:
            return
        stage = entry.get("stage", "train")
        if stage == "train":
            self.bar.n = (int(1000 * entry["fraction"]) if self.timed
                          else entry["iteration"])
            if "val_ap" in entry:
                self.val = f"{entry['val_ap']:.3f}"
            post = {"it": entry["iteration"], "loss": f"{entry['loss']:.4g}"}
            if self.val is not None:
                post["val_ap"] = self.val
            self.bar.set_postfix(post, refresh=False)
        elif stage == "calibrate":
            if not self.calibrating:
                self.calibrating = True
                self.bar.set_description("calibrate", refresh=False)
                self.bar.unit = "step"
                self.bar.reset(total=entry["total"])
            self.bar.n = entry["done"]
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _config(args: argparse.Namespace, base: Any) -> Any:
    import dataclasses

    values = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    if args.allow_small_window:
        values["allow_small_window"] = True
    if args.no_augment:
        values["augment"] = False
    if args.in_plane_only:
        values["in_plane_only"] = True
    if args.boundary_gap:
        values["boundary_gap"] = True
    if args.keep_best:
        values["keep_best"] = True
    if args.no_calibrate:
        values["calibrate"] = False
    if args.val_fraction is not None:
        values["val_fraction"] = args.val_fraction
    if args.time_limit is not None and args.iterations is None:
        from ..train import UNLIMITED_ITERATIONS

        values["iterations"] = UNLIMITED_ITERATIONS
    return dataclasses.replace(base, **values)


def _read_pairs(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    from ..io import read_image

    if len(args.image) != len(args.labels):
        raise NSEError(f"got {len(args.image)} --image and {len(args.labels)} --labels; give "
                       "exactly one --labels per --image, in the same order")
    if not args.image:
        raise NSEError("give training data with --image I --labels L (or --preset default)")
    images = [read_image(p, lazy=False) for p in args.image]
    labels = [read_image(p, lazy=False) for p in args.labels]
    return images, labels


def _infer_ndim(args: argparse.Namespace, images: list[Any]) -> None:
    if args.ndim is not None or args.init or args.resume:
        return
    dims = {len(i.shape) for i in images}
    if dims == {2}:
        args.ndim = 2
    elif 3 in dims:
        raise NSEError("3D training arrays: pass --ndim 3 (volumes) or --ndim 2 (z-stacks "
                       "trained plane by plane)")


def cmd_train(args: argparse.Namespace) -> int:
    from ..io import check_output_path
    from ..model import save_model
    from ..train import TrainConfig, train

    out = Path(args.out)
    if out.suffix != ".pt":
        raise NSEError(f"--out must be a .pt model file, got {out.name}")
    check_output_path(out, args.overwrite)
    if args.init and args.resume:
        raise NSEError("--from and --resume exclude each other")
    if args.preset:
        if args.image or args.labels:
            raise NSEError("--preset brings its own data; drop --image/--labels")
        from ..train import preset

        images, labels, base = preset(args.preset)
    else:
        images, labels = _read_pairs(args)
        _infer_ndim(args, images)
        base = TrainConfig()
        if args.resume:  # flags not given keep the checkpoint's values
            from ..train import load_checkpoint

            base = TrainConfig.from_dict(load_checkpoint(args.resume)[1]["train_config"])
    config = _config(args, base)
    ckpt_dir = None
    if config.checkpoint_every:
        ckpt_dir = Path(args.checkpoint_dir or f"{out}.checkpoints")
    bar = TrainBar(config.iterations, args.quiet, timed=config.time_limit is not None)
    try:
        result = train(images, labels, config, init_model=args.init, progress=bar,
                       checkpoint_dir=ckpt_dir, resume=args.resume)
    finally:
        bar.close()
    path = save_model(result.model, out, overwrite=args.overwrite)
    if not args.quiet:
        for note in result.notes:
            print(f"nse train: {note}", file=sys.stderr)
    last = result.history[-1] if result.history else {}
    vals = [e["val_ap"] for e in result.history if "val_ap" in e]
    cal = result.calibration
    data = {
        "model": str(path),
        "iterations": int(last.get("iteration", 0)),
        "final_loss": last.get("loss"),
        "val_ap": cal.validation_ap if cal is not None else (vals[-1] if vals else None),
        "calibration": cal.to_dict() if cal is not None else None,
        "stopped": result.model.config.extra.get("stopped"),
        "seconds": last.get("seconds"),
        "window": list(result.model.config.window or []),
        "config": result.model.config.to_dict(),
        "notes": result.notes,
        "checkpoints": str(ckpt_dir) if ckpt_dir else None,
    }
    loss = f", final loss {last['loss']:.4g}" if last else ""
    val = f", validation AP@0.5 {vals[-1]:.3f}" if vals else ""
    if cal is not None:
        val = f", calibrated on {cal.data}: {cal.describe()}, {cal.ap_text()}"
    if data["stopped"] == "time_limit":
        loss += f", stopped by the time limit of {config.time_limit:g} s"
    emit(args, data, f"wrote {path} after {data['iterations']} iterations{loss}{val}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from ..experiments import run_experiment

    out = None
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise NSEError(f"{out} exists and is not a folder")
        if not out.parent.exists():
            raise NSEError(f"output folder {out.parent} does not exist")
        for suffix in (".png", ".json"):
            f = out / f"exp_{args.name}{suffix}"
            if f.exists() and not args.overwrite:
                raise NSEError(f"{f} exists; refusing to overwrite it (pass --overwrite)")
        out.mkdir(exist_ok=True)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"nse experiment: {msg}", file=sys.stderr)

    result = run_experiment(args.name, out, quick=args.quick, seed=args.seed, log=log)
    emit(args, result, _summary(args.name, result, out))
    return 0


def _summary(name: str, r: dict[str, Any], out: Path | None) -> str:
    lines = [f"{name} ({'quick' if r['quick'] else 'full'}, {r['seconds']:.0f} s)"]
    if name == "fig2":
        for spacing, s in r["spacings"].items():
            lines.append(
                f"  spacing {spacing}: {s['disks']} disks; distinct centre embeddings: random "
                f"weights {s['random_weights']['distinct']}, trained "
                f"{s['trained']['distinct']}; AP@0.5 {s['trained']['ap50']:.2f}")
    else:
        for run, s in r["runs"].items():
            lines.append(
                f"  {run:22s} jump ratio {s['jump']['ratio']:.2f} (lines every "
                f"{s['lines_every']}), false splits {s['false_splits']}, AP@0.5 "
                f"{s['ap50']:.2f}")
        lines.append(f"  correct vs whole: max difference {r['correct_equals_whole']:.2g}")
    if out is not None:
        lines.append(f"  wrote {out / f'exp_{name}.png'} and {out / f'exp_{name}.json'}")
    return "\n".join(lines)
