"""Time our mean-shift against scikit-learn's ``MeanShift(bin_seeding=True)``.

Clustered points (Gaussian blobs with unit s.d. around centres drawn with s.d. ``--spread``),
bandwidth ``1.25 * sqrt(dim)`` (about the radius of a blob) unless ``--bandwidth`` is given.
Both run on the same points with the same bandwidth; ours then also runs on larger sets
(``--large``), where scikit-learn would take too long. Prints measured figures only.

    python benchmarks/bench_meanshift.py [--n 20000 --dim 16 --device auto]
                                         [--large 100000,1000000] [--json]

The goal on a GPU: 1,000,000 points in <= 2 s (``--large``).

scikit-learn runs with its thread pools limited to ``--sklearn-threads`` (default 1, as ours
on a CPU): on a busy machine its OpenMP radius queries get many times slower with more.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from napari_shift_equivariance.clustering import mean_shift, reference  # noqa: E402
from napari_shift_equivariance.model import resolve_device  # noqa: E402


def clustered_points(n: int, dim: int, clusters: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, spread, (clusters, dim))
    truth = rng.integers(0, clusters, n)
    points = centres[truth] + rng.normal(size=(n, dim))
    return points.astype(np.float32), truth


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_ours(points, bandwidth, device):
    # the labels come back as a numpy array: the device work is finished when timing stops
    return timed(lambda: mean_shift(points, bandwidth, device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="points compared with scikit-learn")
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--spread", type=float, default=10.0, help="s.d. of the cluster centres")
    ap.add_argument("--bandwidth", type=float, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--large", default="100000,1000000",
                    help="comma list of sizes timed for ours only ('' for none)")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--sklearn-threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    device = str(resolve_device(args.device))
    bandwidth = args.bandwidth or 1.25 * np.sqrt(args.dim)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0], "torch": torch.__version__,
                    "device": device,
                    "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None},
        "data": {"dim": args.dim, "clusters": args.clusters, "spread": args.spread,
                 "bandwidth": bandwidth, "seed": args.seed},
        "runs": [],
    }
    say = (lambda *a: None) if args.json else print
    say(f"device {device}, {args.dim}-dim points in {args.clusters} clusters, "
        f"bandwidth {bandwidth:.3g}, load average {report['machine']['load_average_1min']:.1f}")

    # warm-up: first-call costs (imports, allocator, CUDA context) are not the algorithm's
    warm, _ = clustered_points(2_000, args.dim, args.clusters, args.spread, args.seed + 1)
    run_ours(warm, bandwidth, device)

    points, truth = clustered_points(args.n, args.dim, args.clusters, args.spread, args.seed)
    ours, wall, cpu = run_ours(points, bandwidth, device)
    run = {"n": args.n, "ours_s": wall, "ours_cpu_s": cpu, "ours_clusters": int(ours.max() + 1),
           "ours_ari_truth": adjusted_rand_score(truth, ours)}
    say(f"n={args.n}: ours {wall:.3f} s (cpu {cpu:.3f} s), {run['ours_clusters']} clusters")
    if not args.skip_sklearn:
        from threadpoolctl import threadpool_limits

        # the reference backend: scikit-learn's MeanShift(bin_seeding=True), labels relabelled
        with threadpool_limits(args.sklearn_threads):
            sk, sk_wall, sk_cpu = timed(lambda: reference.mean_shift(points, bandwidth))
        run.update({"sklearn_s": sk_wall, "sklearn_cpu_s": sk_cpu,
                    "sklearn_clusters": int(sk.max() + 1), "speedup": sk_wall / wall,
                    "ari_ours_vs_sklearn": adjusted_rand_score(sk, ours),
                    "sklearn_ari_truth": adjusted_rand_score(truth, sk)})
        say(f"n={args.n}: scikit-learn {sk_wall:.3f} s (cpu {sk_cpu:.3f} s), "
            f"{run['sklearn_clusters']} clusters; speed-up {run['speedup']:.1f}x, "
            f"ARI ours vs scikit-learn {run['ari_ours_vs_sklearn']:.4f}")
    report["runs"].append(run)

    for n in [int(v) for v in args.large.split(",") if v.strip()]:
        points, truth = clustered_points(n, args.dim, args.clusters, args.spread, args.seed)
        ours, wall, cpu = run_ours(points, bandwidth, device)
        run = {"n": n, "ours_s": wall, "ours_cpu_s": cpu, "ours_clusters": int(ours.max() + 1),
               "ours_ari_truth": adjusted_rand_score(truth, ours)}
        report["runs"].append(run)
        say(f"n={n}: ours {wall:.3f} s (cpu {cpu:.3f} s), {run['ours_clusters']} clusters, "
            f"ARI vs truth {run['ours_ari_truth']:.4f}")
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
