"""Compare training settings on two folds of the real nuclei's training rows (tuning data).

    python scripts/tuning_folds.py NAME [--config JSON] [--seeds 0,1] [--time-limit 300]
        [--threads 1] [--nothing-held-out] [--save-dir DIR] [--from MODEL]

Fold 0 trains on rows 0-189 and is scored on rows 210-282 (15 nuclei); fold 1 trains on rows
93-282 and is scored on rows 0-72 (9 nuclei). Both lie inside ``bench_quality``'s training
rows 0-282, so its held-out rows 307-511 stay untouched. Each run is ``train`` with
``TrainConfig(time_limit=..., seed=..., **config)`` (everything else at its default),
then ``segment`` at the model's calibrated settings; the pooled AP@0.5 over folds and seeds
is printed last. ``--nothing-held-out`` validates and calibrates on the training rows
themselves (no split); ``--from MODEL`` fine-tunes that model (``"default"``: the bundled
one) instead of training from scratch. The figures of docs/training.md ("Refit") came from
this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_quality import REAL, real_rows  # noqa: E402

from napari_shift_equivariance.metrics import evaluate, pool  # noqa: E402
from napari_shift_equivariance.model import save_model  # noqa: E402
from napari_shift_equivariance.segment import segment  # noqa: E402
from napari_shift_equivariance.train import TrainConfig, train  # noqa: E402

FOLDS = ((slice(0, 190), slice(210, 283)), (slice(93, 283), slice(0, 73)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--config", default="{}", help="TrainConfig fields as JSON")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--time-limit", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nothing-held-out", action="store_true")
    p.add_argument("--save-dir", help="write each model as NAME_fF_sS.pt here")
    p.add_argument("--from", dest="init", help="fine-tune this model (default: from scratch)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fields = json.loads(args.config)
    evs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for k, (train_rows, tune_rows) in enumerate(FOLDS):
            (x, y), (xt, yt) = real_rows(REAL, train_rows, tune_rows)
            config = TrainConfig(time_limit=args.time_limit, seed=seed, device="cpu", **fields)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = train([x], [y], config, init_model=args.init,
                            validation=([x], [y]) if args.nothing_held_out else None)
                ev = evaluate(yt, segment(res.model, xt, "correct", device="cpu").labels)
            if args.save_dir:
                save_model(res.model, Path(args.save_dir) / f"{args.name}_f{k}_s{seed}.pt",
                           overwrite=True)
            evs.append(ev)
            extra = res.model.config.extra
            print(f"{args.name} seed {seed} fold {k}: {len(res.history)} it, bandwidth "
                  f"{extra.get('bandwidth')}, threshold {extra.get('fg_threshold')}, AP@0.5 "
                  f"{ev.ap_at(0.5):.3f}, TP/FP/FN {ev.tp[0]}/{ev.fp[0]}/{ev.fn[0]}, "
                  f"splits {ev.false_splits}, merges {ev.false_merges}", flush=True)
    total = pool(evs)
    print(f"{args.name} pooled: AP@0.5 {total.ap50:.3f}, DSB {total.dsb:.3f}, TP/FP/FN "
          f"{total.tp[0]}/{total.fp[0]}/{total.fn[0]}, splits {total.false_splits}, merges "
          f"{total.false_merges}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
