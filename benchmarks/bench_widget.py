"""Does the napari UI stay responsive while the widgets segment and train?

A QTimer ticks every 50 ms on the UI thread while the Segment widget segments a large image and
the Train widget trains; a frozen UI shows up as a long gap between ticks. Also reports how
long the segmentation of a 2048×2048 image takes (wall clock, through the widget, result
layers included) and, for reference, the same call without napari.

    python benchmarks/bench_widget.py [--size 2048] [--iterations 30] [--json]

Needs an X display with OpenGL (napari's canvas); without ``DISPLAY`` the script re-runs
itself under ``xvfb-run -a`` when that exists. Under Xvfb the OpenGL is Mesa's software
renderer (llvmpipe), which is why the run with napari's activity progress bar switched off is
reported as well: the bar's busy animation makes the canvas repaint continuously.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TICK_MS = 50


def _reexec_under_xvfb() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("NSE_BENCH_NO_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no DISPLAY and no xvfb-run: run this under an X server")
    env = dict(os.environ, NSE_BENCH_NO_XVFB="1")
    sys.exit(subprocess.call([xvfb, "-a", sys.executable, *sys.argv], env=env))


class TickRecorder:
    """Timestamps of a QTimer on the UI thread; gaps beyond the period are UI stalls."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def __enter__(self) -> TickRecorder:
        self.times.clear()
        self.times.append(time.perf_counter())
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.stop()

    def summary(self) -> dict[str, float]:
        import numpy as np

        gaps = np.diff(self.times) * 1000 if len(self.times) > 1 else np.zeros(1)
        return {"ticks": len(self.times) - 1, "max_gap_ms": float(gaps.max()),
                "p99_gap_ms": float(np.percentile(gaps, 99)),
                "median_gap_ms": float(np.median(gaps)),
                "gaps_over_200ms": int((gaps > 200).sum())}


def _wait(job, timeout: float) -> float:
    """Run the Qt event loop (as napari does) until the job, result layers included, is done."""
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    loop = QEventLoop()
    poll = QTimer()
    poll.setInterval(20)

    def check() -> None:
        if not job.running or time.perf_counter() - t0 > timeout:
            loop.quit()

    poll.timeout.connect(check)
    poll.start()
    if job.running:
        loop.exec()
    poll.stop()
    if job.running:
        job.cancel.set()
        raise TimeoutError(f"job still running after {timeout} s")
    return time.perf_counter() - t0


def _time_steps(widget) -> list[float]:
    """Record how long each result-layer step of the Segment widget holds the UI thread."""
    steps: list[float] = []
    show = widget._show

    def timed(*args, **kwargs):
        gen = show(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                next(gen)
            except StopIteration:
                steps.append(time.perf_counter() - t0)
                return
            steps.append(time.perf_counter() - t0)
            yield

    widget._show = timed
    return steps


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, measure, print the figures (or one JSON document on stdout)."""
    args = _parser().parse_args(argv)
    _reexec_under_xvfb()
    # the docks remember their settings: keep the benchmark's out of the user's
    import tempfile

    os.environ.setdefault("NSE_CONFIG_DIR", tempfile.mkdtemp(prefix="nse-bench-settings-"))
    # napari prints its notifications on stdout; keep stdout for the figures alone
    with contextlib.redirect_stdout(sys.stderr):
        out = measure(args)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        report(out, args)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side (px)")
    parser.add_argument("--tile", type=int, default=256, help="output tile (px)")
    parser.add_argument("--iterations", type=int, default=30, help="training iterations")
    parser.add_argument("--block", type=int, default=1024, help="blockwise run: block (px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def measure(args: argparse.Namespace) -> dict:
    import napari
    import numpy as np
    import torch

    from napari_shift_equivariance._widgets import SegmentWidget, TrainWidget
    from napari_shift_equivariance._widgets._registry import REGISTRY, ModelSource
    from napari_shift_equivariance.data import nuclei
    from napari_shift_equivariance.model import (
        ModelConfig,
        build_model,
        default_model_path,
        load_model,
    )
    from napari_shift_equivariance.segment import segment

    out: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "load_avg_start": os.getloadavg()}}
    if default_model_path(2).exists():
        model, which = load_model("default", ndim=2), "default (bundled)"
    else:
        model = build_model(ModelConfig(ndim=2, depth=3, factor=2), seed=0)
        which = "random weights, default architecture (no bundled default model yet)"
    out["model"] = {"which": which, **model.config.geometry.to_dict()}
    image, _ = nuclei((args.size, args.size), seed=0)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    viewer.add_image(image, name="nuclei")
    REGISTRY.add(model, "bench")
    seg.model.value = ModelSource.registry("bench")
    seg.stitch.value, seg.tile.value, seg.device.value = "correct", args.tile, args.device

    ticks = TickRecorder()
    steps = _time_steps(seg)
    runs = ("segment_widget", "segment_widget_again", "segment_widget_no_activity_bar")
    for run in runs:  # the second and third replace the first one's layers
        steps.clear()
        seg.napari_progress.value = run != "segment_widget_no_activity_bar"
        with ticks:
            job = seg.run()
            wall = _wait(job, timeout=1800)
        info = seg.last_result.info
        out[run] = {"image": [args.size, args.size], "tile": args.tile,
                    "wall_s": wall, "n_tiles": info["n_tiles"],
                    "n_instances": info["n_instances"], "times": info["times"],
                    "ui": ticks.summary(), "layer_steps_ms": [round(1000 * t) for t in steps]}

    t0 = time.perf_counter()
    api = segment(model, image, "correct", args.tile, device=args.device)  # as the dock: auto
    out["segment_api"] = {"wall_s": time.perf_counter() - t0, "times": api.info["times"],
                          "same_labels_as_widget": bool(np.array_equal(
                              api.labels, viewer.layers["nuclei labels [correct "
                                                        f"{args.tile}]"].data))}

    # the same image as a zarr array (a lazy layer): the dock goes blockwise into a store
    import tempfile

    import zarr

    folder = Path(tempfile.mkdtemp(prefix="nse-bench-blockwise-"))
    try:
        lazy = zarr.open_array(str(folder / "image.zarr"), mode="w", shape=image.shape,
                               chunks=(512, 512), dtype=image.dtype)
        lazy[:] = image
        viewer.add_image(lazy, name="nuclei lazy")
        seg.image.value = viewer.layers["nuclei lazy"]
        seg.napari_progress.value = False
        seg.store.value = folder / "labels.zarr"
        seg.block.value = args.block
        with ticks:
            job = seg.run()
            wall = _wait(job, timeout=1800)
        result = seg.last_result
        labels = np.asarray(zarr.open_array(str(result.path), mode="r")[:])
        out["segment_widget_blockwise"] = {
            "image": [args.size, args.size], "tile": args.tile, "block": args.block,
            "wall_s": wall, "n_blocks": result.info.get("n_blocks"),
            "n_instances": result.n_instances, "times": result.info.get("times"),
            "same_partition_as_api": _same_partition(labels, api.labels),
            "ui": ticks.summary()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train", tabify=True)
    crop = (slice(0, 256), slice(0, 256))
    viewer.add_image(image[crop], name="train image")
    viewer.add_labels(nuclei((args.size, args.size), seed=0)[1][crop], name="train labels")
    train.pairs[0].image_w.value = viewer.layers["train image"]
    train.pairs[0].labels_w.value = viewer.layers["train labels"]
    train.iterations.value, train.device.value = args.iterations, args.device
    with ticks:
        job = train.start()
        wall = _wait(job, timeout=1800)
    out["train_widget"] = {"iterations": len(train.history), "wall_s": wall,
                           "plot_draws": train.plot.draws, "ui": ticks.summary()}
    out["machine"]["load_avg_end"] = os.getloadavg()
    viewer.close()
    return out


def _same_partition(a, b) -> bool:
    """Equal labels up to renumbering (0 stays background)."""
    import numpy as np

    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


def report(out: dict, args: argparse.Namespace) -> None:
    """The figures as text."""
    a, t = out["segment_api"], out["train_widget"]
    print(f"model: {out['model']['which']}; load average at start "
          f"{tuple(round(x, 2) for x in out['machine']['load_avg_start'])}")
    for run, what in (("segment_widget", "first run"),
                      ("segment_widget_again", "again, replacing its layers"),
                      ("segment_widget_no_activity_bar",
                       "again, napari's activity progress bar off")):
        s = out[run]
        print(f"segment {args.size}x{args.size} via widget, {what}: {s['wall_s']:.1f} s "
              f"({s['n_tiles']} tiles, predict {s['times']['predict']:.1f} s, cluster "
              f"{s['times']['cluster']:.1f} s, {s['n_instances']} instances)")
        print(f"  UI ticks every {TICK_MS} ms: max gap {s['ui']['max_gap_ms']:.0f} ms, "
              f"p99 {s['ui']['p99_gap_ms']:.0f} ms, median {s['ui']['median_gap_ms']:.0f} "
              f"ms, {s['ui']['gaps_over_200ms']} gaps > 200 ms; result layers: "
              f"{s['layer_steps_ms']} ms per step")
    print(f"  same call without napari: {a['wall_s']:.1f} s; labels equal: "
          f"{a['same_labels_as_widget']}")
    b = out["segment_widget_blockwise"]
    print(f"segment the same image as a zarr-backed layer, blockwise via widget "
          f"({b['n_blocks']} blocks of {b['block']} px): {b['wall_s']:.1f} s, "
          f"{b['n_instances']} instances; same partition as segment(): "
          f"{b['same_partition_as_api']}")
    print(f"  UI ticks: max gap {b['ui']['max_gap_ms']:.0f} ms, p99 "
          f"{b['ui']['p99_gap_ms']:.0f} ms, median {b['ui']['median_gap_ms']:.0f} ms, "
          f"{b['ui']['gaps_over_200ms']} gaps > 200 ms")
    print(f"train {t['iterations']} iterations via widget: {t['wall_s']:.1f} s, "
          f"{t['plot_draws']} plot repaints")
    print(f"  UI ticks: max gap {t['ui']['max_gap_ms']:.0f} ms, p99 "
          f"{t['ui']['p99_gap_ms']:.0f} ms, {t['ui']['gaps_over_200ms']} gaps > 200 ms")


if __name__ == "__main__":
    main()
