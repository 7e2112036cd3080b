"""Embeddings as colours: the one projection used by the napari docks, figures and experiments.

The first three principal components (scikit-learn ``PCA``) of the foreground pixels'
embeddings become red, green and blue. Each channel is stretched from its 1st to its 99th
percentile over those pixels, so that a few outlying pixels do not wash out the others;
background pixels are black.
"""

from __future__ import annotations

import numpy as np

MAX_FIT_SAMPLES = 200_000
PERCENTILES = (1.0, 99.0)


def embedding_rgb(embeddings: np.ndarray, mask: np.ndarray | None = None, *,
                  seed: int = 0, max_samples: int = MAX_FIT_SAMPLES) -> np.ndarray:
    """``(E, *shape)`` embeddings as a float32 RGB image ``(*shape, 3)`` in ``[0, 1]``.

    Parameters
    ----------
    embeddings
        Embedding channels first (a prediction without its foreground channel).
    mask
        Foreground pixels (``*shape`` bool). The components and the contrast are fitted on
        them and the other pixels are black. ``None`` or an empty mask: all pixels, none black.
    seed
        Seeds the sample of at most ``max_samples`` pixels the components are fitted on.
    """
    from sklearn.decomposition import PCA

    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim < 2:
        raise ValueError(f"embeddings must be (E, *shape), got shape {emb.shape}")
    e, shape = emb.shape[0], emb.shape[1:]
    flat = emb.reshape(e, -1).T
    fg = None
    if mask is not None:
        fg = np.asarray(mask, dtype=bool).reshape(-1)
        if fg.shape[0] != flat.shape[0]:
            raise ValueError(f"mask of shape {np.shape(mask)} does not match embeddings "
                             f"of shape {emb.shape}")
        if not fg.any():
            fg = None
    fit = flat if fg is None else flat[fg]
    if len(fit) > max_samples:
        rng = np.random.default_rng(seed)
        fit = fit[np.sort(rng.choice(len(fit), max_samples, replace=False))]
    k = min(3, e, len(fit)) if len(fit) > 1 and np.ptp(fit, axis=0).any() else 0
    rgb = np.zeros((len(flat), 3), dtype=np.float32)
    if k == 0:
        return rgb.reshape(*shape, 3)
    pca = PCA(n_components=k, svd_solver="full").fit(fit)
    proj = pca.transform(flat).astype(np.float32)
    lo, hi = np.percentile(pca.transform(fit), PERCENTILES, axis=0)
    rgb[:, :k] = np.clip((proj - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    if fg is not None:
        rgb[~fg] = 0
    return rgb.reshape(*shape, 3)


def prediction_rgb(prediction: np.ndarray, labels: np.ndarray | None = None,
                   fg_threshold: float = 0.5) -> np.ndarray:
    """A prediction's (``(E + 1, *shape)``: embeddings, foreground probability) embeddings
    as colours, the foreground given by ``labels > 0``, else by the probability."""
    pred = np.asarray(prediction)
    fg = np.asarray(labels) > 0 if labels is not None else pred[-1] > fg_threshold
    return embedding_rgb(pred[:-1], fg)
