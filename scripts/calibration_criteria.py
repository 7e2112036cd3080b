"""Which calibration data picks clustering settings that transfer to new images?

    python scripts/calibration_criteria.py STYLE [--time-limit 300] [--threads 1] [--json]
        [--seed N] [--save TABLES.json]
    python scripts/calibration_criteria.py --rescore TABLES.json... [--tolerances 0.01,0.02]

Trains one model on a generated image (``nuclei(seed=100, style=STYLE)``, every
``TrainConfig`` default but the time limit), then clusters on the full grid (foreground
threshold x bandwidth x relative minimum size; minimum size 10, no spatial radius) three
times: on the whole training image, on its held-out crop (the automatic validation split) and
on two tuning images (seeds 900-901, apart from the quality benchmark's 200+ and the training
image). Each criterion's choice is scored on the tuning images: ``whole`` (what
``calibrate_on="all"`` scores), ``crop`` (``calibrate_on="validation"``), ``mean`` of both and
``crop2`` = (whole + 2 x crop) / 3; and each of ``whole``, ``crop``, ``mean`` with the rule
``+wide``: ``calibrate``'s tolerance rule at :data:`TOLERANCE`: the widest bandwidth within it
of that criterion's best, or the middle of those within it when even the grid's widest is (a
model clusters the images it was trained on more tightly than new ones, so their best
bandwidth is a lower bound). Every choice is ``calibrate``'s own (``train.calibrate._pick``).
``--seed`` sets ``TrainConfig.seed`` (several models per style); ``--save`` writes every grid
point's AP on the three data sets, to score other criteria without training again.
``real``: the real nuclei of ``/work/shared/data``, trained on rows 0-189 and tuned on rows
210-282 (inside bench_quality's training rows). The figures of docs/training.md
("Calibrating on the whole training images", "The widest bandwidth within 0.02") came from
this script.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_quality import REAL, real_rows  # noqa: E402

from napari_shift_equivariance.data import NUCLEI_STYLES, nuclei  # noqa: E402
from napari_shift_equivariance.train import TrainConfig, calibrate, train  # noqa: E402
from napari_shift_equivariance.train.calibrate import _pick  # noqa: E402

GRID = dict(fg_thresholds=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_sizes=[10],
            relative_min_sizes=[0.0, 0.1, 0.2, 0.3], spatial_radii=[0.0], search="full")
TUNING_SEEDS = (900, 901)
REAL_TRAIN, REAL_TUNE = slice(0, 190), slice(210, 283)
#: ``+wide`` criteria: grid points this close to the best AP count as tied
TOLERANCE = 0.02
CRITERIA = ("whole", "crop", "mean", "crop2", "whole+wide", "crop+wide", "mean+wide")


def _key(score: dict) -> tuple[float, float, float]:
    return score["bandwidth"], score["fg_threshold"], score["relative_min_size"]


def choose(points: list, f, wide: bool, tolerance: float = TOLERANCE
           ) -> tuple[float, float, float]:
    """The grid point ``calibrate`` takes when ``f`` scores the points (its rule,
    ``train.calibrate._pick``, ties included); ``wide``: with ``tolerance``, else the best
    alone."""
    scores = [{"bandwidth": q[0], "fg_threshold": q[1], "relative_min_size": q[2],
               "min_size": GRID["min_sizes"][0], "spatial_radius": 0.0, "ap": f(q)}
              for q in points]
    return _key(_pick(scores, GRID["min_sizes"][0], tolerance if wide else 0.0))


def real_split() -> tuple[tuple, list]:
    """Real nuclei: train on rows 0-189, tune on rows 210-282; both inside bench_quality's
    training rows (0-282), so its held-out rows (307-511) stay unseen."""
    train_rows, tune_rows = real_rows(REAL, REAL_TRAIN, REAL_TUNE)
    return train_rows, [tune_rows]


def run(style: str, time_limit: float, seed: int = 0) -> tuple[dict, dict]:
    if style == "real":
        (image, labels), tuning = real_split()
    else:
        image, labels = nuclei((256, 256), seed=100, style=style)
        tuning = [nuclei((256, 256), seed=s, style=style) for s in TUNING_SEEDS]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train([image], [labels],
                       TrainConfig(time_limit=time_limit, device="cpu", seed=seed))
    model = result.model
    held = int(re.search(r"validation on the last (\d+) px", " ".join(result.notes)).group(1))
    data = {"whole": ([image], [labels]), "crop": ([image[-held:]], [labels[-held:]]),
            "tune": ([t[0] for t in tuning], [t[1] for t in tuning])}
    ap = {name: {_key(s): s["ap"] for s in calibrate(model, *d, device="cpu", **GRID).scores}
          for name, d in data.items()}
    out = {"style": style, "seed": seed, "iterations": len(result.history), "held_px": held,
           **score_criteria(ap)}
    tables = {name: [[*q, a] for q, a in t.items()] for name, t in ap.items()}
    return out, tables


def score_criteria(ap: dict[str, dict], tolerance: float = TOLERANCE) -> dict:
    """Each criterion's choice and its AP on the tuning images; ``ap[data][point]``."""
    points = list(ap["tune"])
    criteria = {"whole": lambda p: ap["whole"][p], "crop": lambda p: ap["crop"][p],
                "mean": lambda p: (ap["whole"][p] + ap["crop"][p]) / 2,
                "crop2": lambda p: (ap["whole"][p] + 2 * ap["crop"][p]) / 3}
    out: dict = {"tune_best": round(max(ap["tune"].values()), 3)}
    for name in CRITERIA:
        base, wide = name.removesuffix("+wide"), name.endswith("+wide")
        p = choose(points, criteria[base], wide, tolerance)
        out[name] = {"bandwidth": p[0], "fg_threshold": p[1], "relative_min_size": p[2],
                     "tune_ap": round(ap["tune"][p], 3)}
    return out


def rescore(files: list[Path], tolerances: list[float]) -> None:
    """Mean tuning AP of every criterion over saved tables, at several tolerances."""
    runs = []
    for f in files:
        saved = json.loads(f.read_text())
        ap = {name: {tuple(row[:3]): row[3] for row in t} for name, t in saved["tables"].items()}
        runs.append((f"{saved['style']} seed {saved['seed']}", ap))
    for tol in tolerances:
        scored = [(what, score_criteria(ap, tol)) for what, ap in runs]
        print(f"tolerance {tol:g}: mean tuning AP@0.5 over {len(runs)} models")
        for name in CRITERIA:
            aps = [s[name]["tune_ap"] for _, s in scored]
            each = " ".join(f"{s[name]['tune_ap']:.3f} (bw {s[name]['bandwidth']:g})"
                            for _, s in scored)
            print(f"  {name:10s} {sum(aps) / len(aps):.3f}  ({each})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("style", nargs="?", choices=[*NUCLEI_STYLES, "real"])
    parser.add_argument("--rescore", type=Path, nargs="+", metavar="TABLES",
                        help="score the criteria on tables written by --save (no training)")
    parser.add_argument("--tolerances", default="0.01,0.02,0.05",
                        help="with --rescore: comma list of +wide tolerances")
    parser.add_argument("--time-limit", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--seed", type=int, default=0, help="TrainConfig.seed")
    parser.add_argument("--save", type=Path,
                        help="write every grid point's AP ([bandwidth, fg, rel, ap] per data "
                        "set) to this JSON file; refused if it exists")
    args = parser.parse_args()
    if args.rescore:
        rescore(args.rescore, [float(t) for t in args.tolerances.split(",")])
        return 0
    if args.style is None:
        parser.error("STYLE is needed unless --rescore")
    if args.save is not None and args.save.exists():
        parser.error(f"{args.save} exists; not overwritten")
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        out, tables = run(args.style, args.time_limit, args.seed)
    finally:
        torch.set_num_threads(old)
    if args.save is not None:
        args.save.write_text(json.dumps({**out, "tables": tables}))
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.style}: {out['iterations']} iterations, crop {out['held_px']} px, best on the "
          f"tuning images {out['tune_best']:.3f}")
    for name in CRITERIA:
        c = out[name]
        print(f"  {name:10s} bandwidth {c['bandwidth']:<4g} fg {c['fg_threshold']:<4g} "
              f"rel {c['relative_min_size']:<4g} -> tuning AP@0.5 {c['tune_ap']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
