"""The paper's synthetic experiments (Rumberger et al., ICCV 2021), small enough for a CPU.

``fig2``
    Periodic disks, ``l = 3``, ``f = 2`` (``f^l = 8``): at spacing 16 = 2·8 every disk centre
    gets the *same* embedding, for any weights (periodic-``f^l`` shift equivariance), so no
    training can tell the disks apart; at spacing 15 (co-prime with 8) the centres fall on all
    ``8 x 8`` phases of the grid and up to ``f^(d·l) = 64`` disks can be told apart.
``fig4``
    Disks at spacing 13. A net trained with output window ``= f^l`` has seams on the ``f^l``
    grid; one trained with a window ``> f^l`` has seams at tile borders when tiles of a size
    other than ``n·f^l`` are stitched naively, and none when tiles are ``n·f^l`` on the global
    grid (equal to the whole-image pass).

Seams are measured with the *embedding jump* (:func:`metrics.embedding_seam_statistic`): the
mean distance between the embeddings of two neighbouring disk pixels across a line (tile
border or grid line) divided by the same mean everywhere else (1 = no seam), and after
clustering with false splits (Caicedo et al. 2019) and AP@0.5.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.cluster.hierarchy import fcluster, linkage

from .data import periodic_disks
from .display import prediction_rgb
from .metrics import embedding_seam_statistic
from .model import ModelConfig, UNet, build_model
from .predict import predict
from .train import TrainConfig, train

EXPERIMENTS = ("fig2", "fig4")
DEPTH, FACTOR = 3, 2
GRID = FACTOR**DEPTH
Log = Callable[[str], None]


# -- measurements -------------------------------------------------------------------------


def disk_centres(labels: np.ndarray) -> np.ndarray:
    """``(K, ndim)`` integer centre (rounded centroid) of every label ``1..K``."""
    ids = np.arange(1, int(labels.max()) + 1)
    centres = ndimage.center_of_mass(labels > 0, labels, ids)
    return np.rint(np.asarray(centres)).astype(np.int64).reshape(len(ids), labels.ndim)


def interior(centres: np.ndarray, shape: Sequence[int], margin: int) -> np.ndarray:
    """Centres at least ``margin`` pixels from every border (their context is all image)."""
    shape = np.asarray(shape)
    return np.all((centres >= margin) & (centres < shape - margin), axis=1)


def centre_embeddings(prediction: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(K, E)`` embeddings at the centres (prediction: embeddings first, foreground last)."""
    return prediction[(slice(0, -1), *centres.T)].T


def count_groups(vectors: np.ndarray, tol: float) -> int:
    """Groups of vectors linked by Euclidean distance ``<= tol`` (single linkage)."""
    if len(vectors) < 2:
        return len(vectors)
    return int(fcluster(linkage(vectors, "single"), tol, "distance").max())


def grid_lines(shape: Sequence[int], step: int) -> list[list[int]]:
    return [list(range(step, s, step)) for s in shape]


def _segment_scores(model: UNet, image: np.ndarray, gt: np.ndarray, mode: str,
                    tile: Any) -> tuple[np.ndarray, dict[str, Any]]:
    from .metrics import match, splits_and_merges
    from .segment import segment

    with warnings.catch_warnings():  # an empty segmentation is a result here, scored as such
        warnings.simplefilter("ignore")
        res = segment(model, image, mode, tile, device="cpu")
    m = match(gt, res.labels, 0.5)
    sm = splits_and_merges(gt, res.labels, iou=0.1)
    return res.prediction, {"instances": int(res.n_instances), "ap50": float(m["ap"]),
                            "false_splits": int(sm["false_splits"]),
                            "false_merges": int(sm["false_merges"])}


def _model_config(base_channels: int, embedding_dim: int, **kw: Any) -> ModelConfig:
    return ModelConfig(ndim=2, depth=DEPTH, factor=FACTOR, base_channels=base_channels,
                       embedding_dim=embedding_dim, **kw)


def _train_config(quick: bool, seed: int, **kw: Any) -> TrainConfig:
    base = {"depth": DEPTH, "factor": FACTOR, "base_channels": 4 if quick else 8,
            "embedding_dim": 8, "iterations": 60 if quick else 600, "batch_size": 2,
            "lr": 2e-3, "seed": seed, "device": "cpu", "p_elastic": 0.0,
            "intensity_scale": None, "intensity_offset": None, "noise_std": None,
            # the paper's push margin, all data for training, the models' default clustering
            "delta_d": 3.0, "val_every": 0, "calibrate": False,
            # the paper's purely translation-equivariant embeddings, whose capacity it tests
            "coord_scale": 0.0}
    base.update(kw)
    return TrainConfig(**base)


# -- Fig. 2 -------------------------------------------------------------------------------


def window_scores(prediction: np.ndarray, labels: np.ndarray, box: tuple[slice, ...],
                  bandwidth: float) -> dict[str, Any]:
    """Segment the ``box`` of a prediction with ONE mean-shift over all its foreground (the
    paper's clustering: disks that do not touch are told apart by their embeddings only) and
    match it to the labels of that box."""
    from .metrics import match
    from .segment import instances_from_prediction, relabel_sequential

    gt, _ = relabel_sequential(labels[box])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred, info = instances_from_prediction(prediction[(slice(None), *box)], 2,
                                               bandwidth=bandwidth, scope="global",
                                               device="cpu")
    m = match(gt, pred, 0.5)
    return {"window_disks": int(gt.max()), "instances": int(info["n_instances"]),
            "ap50": float(m["ap"])}


def fig2(quick: bool = False, seed: int = 0, log: Log | None = None) -> dict[str, Any]:
    """Same-looking disks at spacing 16 (= 2·f^l) and 15 (co-prime with f^l = 8).

    For each spacing: distinct disk-centre embeddings of a random-weight net (exact: groups
    at tolerance 1e-4) and of a net trained on such disks (groups at the clustering
    bandwidth), over the disks whose receptive field lies inside the image; and the trained
    net's segmentation of a window of 8 x 15 = 120 px (64 disks at spacing 15) by one global
    mean-shift (instances, AP@0.5).
    """
    from .segment import default_bandwidth

    log = log or (lambda _msg: None)
    shape = (232, 232)
    out: dict[str, Any] = {"grid": GRID, "capacity": GRID**2, "shape": list(shape),
                           "spacings": {}, "arrays": {}}
    for spacing in (16, 15):
        image, labels = periodic_disks(shape, radius=5, spacing=spacing)
        random_net = build_model(_model_config(8, 8, normalization={"kind": "none"}), seed=seed)
        half = int(random_net.config.geometry.half_context[0])
        box = (slice(half, half + GRID * 15),) * 2
        centres = disk_centres(labels)
        keep = interior(centres, shape, half)
        emb0 = centre_embeddings(predict(random_net, image, "whole", device="cpu"),
                                 centres[keep])
        log(f"fig2 spacing {spacing}: training")
        train_image, train_labels = periodic_disks((256, 256), radius=5, spacing=spacing,
                                                   offset=3)
        cfg = _train_config(quick, seed, window=60, iterations=60 if quick else 1500)
        t0 = time.perf_counter()
        model = train([train_image], [train_labels], cfg).model
        seconds = time.perf_counter() - t0
        prediction = predict(model, image, "whole", device="cpu")
        emb = centre_embeddings(prediction, centres[keep])
        bandwidth = default_bandwidth(model.config)
        out["spacings"][str(spacing)] = {
            "disks": int(keep.sum()),
            "random_weights": {
                "distinct": count_groups(emb0, 1e-4),
                "max_difference": float(np.abs(emb0[:, None] - emb0[None]).max()),
            },
            "trained": {
                "distinct": count_groups(emb, bandwidth),
                "bandwidth": bandwidth,
                "iterations": cfg.iterations,
                "seconds": seconds,
                **window_scores(prediction, labels, box, bandwidth),
            },
        }
        out["arrays"][str(spacing)] = {"image": image, "labels": labels,
                                       "prediction": prediction, "box": box}
        log(f"fig2 spacing {spacing}: {out['spacings'][str(spacing)]}")
    return out


# -- Fig. 4 -------------------------------------------------------------------------------


def fig4(quick: bool = False, seed: int = 0, log: Log | None = None) -> dict[str, Any]:
    """Seams from training with window ``= f^l`` and from naive stitching, none from correct
    stitching; disks at spacing 13 (co-prime with ``f^l = 8``)."""
    log = log or (lambda _msg: None)
    train_image, train_labels = periodic_disks((256, 256), radius=4, spacing=13, noise=0.01,
                                               seed=seed)
    shape = (208, 208) if not quick else (160, 160)
    image, labels = periodic_disks(shape, radius=4, spacing=13, offset=5, noise=0.01,
                                   seed=seed + 1)
    naive_tile, correct_tile = 20, 2 * GRID
    models, seconds = {}, {}
    for name, window in (("window=f^l", GRID), ("window>f^l", 36)):
        log(f"fig4: training with output window {window}")
        cfg = _train_config(quick, seed, window=window, allow_small_window=window <= GRID)
        t0 = time.perf_counter()
        models[name] = train([train_image], [train_labels], cfg).model
        seconds[name] = time.perf_counter() - t0
    runs = {
        "window=f^l, whole": (models["window=f^l"], "whole", None, GRID),
        "window>f^l, whole": (models["window>f^l"], "whole", None, GRID),
        "window>f^l, naive": (models["window>f^l"], "naive", naive_tile, naive_tile),
        "window>f^l, correct": (models["window>f^l"], "correct", correct_tile, correct_tile),
    }
    out: dict[str, Any] = {"grid": GRID, "shape": list(shape), "naive_tile": naive_tile,
                           "correct_tile": correct_tile, "train_seconds": seconds,
                           "iterations": _train_config(quick, seed).iterations,
                           "runs": {}, "arrays": {"image": image, "labels": labels}}
    for name, (model, mode, tile, step) in runs.items():
        prediction, scores = _segment_scores(model, image, labels, mode, tile)
        lines = grid_lines(shape, step)
        jumps = embedding_seam_statistic(prediction[:-1], labels > 0, lines)
        out["runs"][name] = {"mode": mode, "tile": tile, "lines_every": step,
                             "jump": jumps, **scores}
        out["arrays"][name] = prediction
        log(f"fig4 {name}: {out['runs'][name]}")
    whole = out["arrays"]["window>f^l, whole"]
    out["correct_equals_whole"] = float(np.abs(out["arrays"]["window>f^l, correct"] - whole)
                                        .max())
    out["naive_differs_from_whole"] = float(np.abs(out["arrays"]["window>f^l, naive"] - whole)
                                            .max())
    return out


# -- figures and files --------------------------------------------------------------------


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def fig2_figure(result: dict[str, Any], path: str | os.PathLike) -> Path:
    from matplotlib.patches import Rectangle

    fig, axes = _figure(1, 3, (14, 5.4))
    a16, a15 = result["arrays"]["16"], result["arrays"]["15"]
    axes[0, 0].imshow(a15["image"], cmap="gray")
    axes[0, 0].set_title(f"Fig. 2: l={DEPTH}, f={FACTOR}, f^l={GRID}, f^(d·l)={GRID**2}\n"
                         "input (spacing 15); right: embeddings as colours\n(first 3 principal "
                         "components)", fontsize=9)
    for ax, spacing, arr in ((axes[0, 1], "16", a16), (axes[0, 2], "15", a15)):
        ax.imshow(prediction_rgb(arr["prediction"], arr["labels"]), interpolation="nearest")
        b = arr["box"]
        ax.add_patch(Rectangle((b[1].start - 0.5, b[0].start - 0.5), b[1].stop - b[1].start,
                               b[0].stop - b[0].start, fill=False, ec="red", lw=1))
        s, t = result["spacings"][spacing], result["spacings"][spacing]["trained"]
        ax.set_title(f"spacing {spacing}: {t['distinct']} distinct embeddings / {s['disks']} "
                     f"disks\n(random weights: {s['random_weights']['distinct']})\nred window: "
                     f"{t['instances']} instances / {t['window_disks']} disks, AP@0.5 "
                     f"{t['ap50']:.2f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    return Path(path)


def fig4_figure(result: dict[str, Any], path: str | os.PathLike) -> Path:
    names = ["window=f^l, whole", "window>f^l, naive", "window>f^l, correct"]
    fig, axes = _figure(1, 3, (13, 4.8))
    view = (slice(0, 96), slice(0, 96))  # a corner, large enough for a few tiles
    labels = result["arrays"]["labels"][view]
    for ax, name in zip(axes.ravel(), names):
        run = result["runs"][name]
        rgb = prediction_rgb(result["arrays"][name][(slice(None), *view)], labels)
        ax.imshow(rgb, interpolation="nearest")
        for p in range(run["lines_every"], labels.shape[0], run["lines_every"]):
            ax.axhline(p - 0.5, color="white", lw=0.6, ls="--")
            ax.axvline(p - 0.5, color="white", lw=0.6, ls="--")
        ax.set_title(f"{name}\njump across dashed lines / elsewhere: "
                     f"{run['jump']['ratio']:.2f}\nfalse splits {run['false_splits']}, "
                     f"AP@0.5 {run['ap50']:.2f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Fig. 4: l={DEPTH}, f={FACTOR}, disks at spacing 13; naive tiles "
                 f"{result['naive_tile']}, correct tiles {result['correct_tile']}", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.15)
    return Path(path)


def numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a result (no arrays)."""
    return {k: v for k, v in result.items() if k != "arrays"}


def run_experiment(name: str, out_dir: str | os.PathLike | None = None, quick: bool = False,
                   seed: int = 0, log: Log | None = None) -> dict[str, Any]:
    """Run ``fig2`` or ``fig4``; with ``out_dir`` write ``exp_<name>.png`` and
    ``exp_<name>.json`` there. Returns the numbers."""
    from .errors import NSEError

    if name not in EXPERIMENTS:
        raise NSEError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    t0 = time.perf_counter()
    result = fig2(quick, seed, log) if name == "fig2" else fig4(quick, seed, log)
    result["seconds"] = time.perf_counter() - t0
    result["quick"] = quick
    result["seed"] = seed
    if out_dir is not None:
        out = Path(out_dir)
        draw = fig2_figure if name == "fig2" else fig4_figure
        draw(result, out / f"exp_{name}.png")
        (out / f"exp_{name}.json").write_text(json.dumps(numbers(result), indent=2))
    return numbers(result)
