"""``nse demo``: the paper's story in one command, on generated nuclei."""

from __future__ import annotations

import argparse
import sys

from ..options import SCOPES
from ._common import add_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the main job: naive vs correct tile-and-stitch on generated nuclei",
        description="Network arithmetic, whole vs tiled predictions, naive vs correct "
        "segmentation with seam splits and AP@0.5, and a comparison figure, on generated "
        "nuclei with the default model.",
    )
    p.add_argument("--out", default="nse-demo",
                   help="output folder (default ./nse-demo; an existing non-empty folder is "
                   "refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quick", action="store_true", help="a smaller image (256x256)")
    p.add_argument("--model", default="default", help="a 2D model file (default: bundled)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated image")
    p.add_argument("--scope", choices=SCOPES, default="component")
    add_common(p, device=True, json_flag=True)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import json

    from ..demo import run_demo
    from .segment import StageBars

    # with --json the narrative goes to stderr so stdout holds one JSON document
    def log(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    with StageBars(args.quiet) as bars:
        summary = run_demo(args.out, quick=args.quick, overwrite=args.overwrite,
                           model=args.model, device=args.device, seed=args.seed,
                           scope=args.scope, log=log, progress=bars)
    if args.json:
        print(json.dumps(summary))
    return 0
