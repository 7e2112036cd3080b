"""Blockwise segmentation: peak memory vs image size, throughput vs in-memory, 1 vs 2 workers,
clustering vs prediction time, and that the labels are the in-memory partition.

Every measurement runs ``nse segment`` in a fresh process (peak RSS = ``ru_maxrss`` of that
process and its dask workers) on zarr z-stacks of nuclei-like planes (``data.nuclei``) with
the bundled 2D model, or on a 3D volume with a small random 3D model. Prints measured figures.

    python benchmarks/bench_blockwise.py [--size 2048] [--planes 2,4,6,10] [--block 1024]
        [--volume 64,256,256] [--workers 2] [--device auto] [--json]

The goals (issue 9): peak RSS grows < 16 MB per plane; blockwise >= 0.9x the in-memory
throughput; clustering <= 0.5x the prediction time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _stack(path: Path, planes: int, size: int) -> Path:
    import zarr

    from napari_shift_equivariance import data

    z = zarr.open_array(str(path), mode="w", shape=(planes, size, size), dtype="float32",
                        chunks=(1, min(size, 1024), min(size, 1024)))
    for p in range(planes):
        z[p] = data.nuclei((size, size), seed=p % 2)[0]
    return path


def _volume(path: Path, shape: tuple[int, ...]) -> Path:
    import zarr

    from napari_shift_equivariance import data

    img = data.nuclei(shape, seed=0, radius=(4, 7))[0].astype("float32")
    z = zarr.open_array(str(path), mode="w", shape=img.shape, dtype="float32",
                        chunks=tuple(min(c, n) for c, n in zip((32, 128, 128), img.shape)))
    z[...] = img
    return path


# a fresh parent per run, so that RUSAGE_CHILDREN covers that run only (the largest of its
# processes: the nse process, or one dask worker)
_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "sys.stderr.write('\\nMAXRSS %d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN)"
         ".ru_maxrss); sys.exit(r.returncode)")


def _run(args: list[str]) -> dict:
    """``nse segment ... --json`` in a child; its JSON plus peak RSS (MB) and seconds."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _WRAP, sys.executable, "-m",
                        "napari_shift_equivariance", "segment", *args, "--json", "--quiet"],
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"nse segment failed: {r.stderr.strip()}")
    out = json.loads(r.stdout)
    out["peak_rss_mb"] = int(r.stderr.rsplit("MAXRSS", 1)[1]) / 1024
    out["wall_s"] = wall
    return out


def _labels(path: Path):
    from napari_shift_equivariance.io import read_image

    return np.asarray(read_image(path))


def same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.c_[a, b], axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="plane edge (pixels)")
    ap.add_argument("--planes", default="2,4,6,10", help="comma list of plane counts")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--volume", default="32,128,128", help="3D volume (1x); also 2x, 8x")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: "
                    "rss,memory,workers,volume")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    planes = [int(p) for p in a.planes.split(",")]
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "device": a.device}, "size": a.size, "block": a.block}
    common = ["--device", a.device]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        if "rss" not in skip:
            for n in planes:
                img = _stack(tmp / f"s{n}.zarr", n, a.size)
                b = _run([str(img), "--out", str(tmp / f"b{n}.zarr"), "--block",
                          str(a.block), *common])
                rows.append({"planes": n, "blockwise_rss_mb": b["peak_rss_mb"],
                             "blockwise_s": b["wall_s"], "times": b["times"],
                             "n_instances": b["n_instances"]})
                print(f"{n} planes of {a.size}^2 blockwise: peak RSS {b['peak_rss_mb']:.0f} MB, "
                      f"{b['wall_s']:.1f} s, {b['n_instances']} instances", file=sys.stderr)
            if len(rows) > 1:
                d = (rows[-1]["blockwise_rss_mb"] - rows[0]["blockwise_rss_mb"]) / (
                    rows[-1]["planes"] - rows[0]["planes"])
                res["rss_growth_mb_per_plane"] = d
        res["rss"] = rows
        if "memory" not in skip:
            # the same 2-plane image in memory and blockwise: throughput and equality
            n = planes[0]
            img = tmp / f"s{n}.zarr" if (tmp / f"s{n}.zarr").exists() else _stack(
                tmp / f"s{n}.zarr", n, a.size)
            m = _run([str(img), "--out", str(tmp / f"m{n}.zarr"), "--memory-limit", "1TB",
                      *common])
            b = _run([str(img), "--out", str(tmp / f"bb{n}.zarr"), "--block", str(a.block),
                      *common])
            px = n * a.size * a.size / 1e6
            res["in_memory"] = {"planes": n, "peak_rss_mb": m["peak_rss_mb"],
                                "wall_s": m["wall_s"], "mpx_s": px / m["wall_s"],
                                "predict_s": m["times"]["predict"],
                                "cluster_s": m["times"]["cluster"]}
            res["blockwise"] = {"planes": n, "peak_rss_mb": b["peak_rss_mb"],
                                "wall_s": b["wall_s"], "mpx_s": px / b["wall_s"],
                                "times": b["times"]}
            res["throughput_ratio"] = m["wall_s"] / b["wall_s"]
            res["cluster_over_predict"] = m["times"]["cluster"] / m["times"]["predict"]
            res["same_partition"] = same_partition(_labels(tmp / f"m{n}.zarr"),
                                                   _labels(tmp / f"bb{n}.zarr"))
        if "workers" not in skip:
            n = planes[min(1, len(planes) - 1)]
            img = tmp / f"s{n}.zarr" if (tmp / f"s{n}.zarr").exists() else _stack(
                tmp / f"s{n}.zarr", n, a.size)
            w = {}
            for k in (1, a.workers):
                r = _run([str(img), "--out", str(tmp / f"w{k}.zarr"), "--block", str(a.block),
                          "--workers", str(k), *common])
                w[k] = {"wall_s": r["wall_s"], "mpx_s": n * a.size**2 / 1e6 / r["wall_s"]}
            res["workers"] = {"planes": n, **{str(k): v for k, v in w.items()},
                              "speedup": w[1]["wall_s"] / w[a.workers]["wall_s"],
                              "same_partition": same_partition(
                                  _labels(tmp / "w1.zarr"), _labels(tmp / f"w{a.workers}.zarr"))}
        if "volume" not in skip:
            from napari_shift_equivariance.model import ModelConfig, build_model, save_model

            model = tmp / "m3d.pt"
            save_model(build_model(ModelConfig(ndim=3, depth=2, factor=(1, 2, 2),
                                               base_channels=8, embedding_dim=4), seed=0), model)
            base = [int(v) for v in a.volume.split(",")]
            vol = []
            for scale in (1, 2, 8):
                shape = list(base)
                shape[0] *= 2 if scale >= 2 else 1
                if scale == 8:
                    shape = [base[0] * 2, base[1] * 2, base[2] * 2]
                img = _volume(tmp / f"v{scale}.zarr", tuple(shape))
                r = _run([str(img), "--model", str(model), "--out", str(tmp / f"vb{scale}.zarr"),
                          "--block", "16,64,64", "--tile", "16,64,64", "--fg-threshold", "0.5",
                          *common])
                vol.append({"scale": scale, "shape": shape, "peak_rss_mb": r["peak_rss_mb"],
                            "wall_s": r["wall_s"]})
                print(f"3D {shape}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['wall_s']:.1f} s",
                      file=sys.stderr)
            res["volume"] = vol
    if a.json:
        print(json.dumps(res))
    else:
        print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
