"""Display transforms for result layers (numpy only, run in the worker thread)."""

from __future__ import annotations

import numpy as np

MAX_FIT_SAMPLES = 200_000


def embedding_rgb(embeddings: np.ndarray, mask: np.ndarray | None = None,
                  seed: int = 0) -> np.ndarray:
    """First three principal components of ``(E, *shape)`` embeddings as RGB ``(*shape, 3)``.

    The components are fitted on (a seeded sample of) the pixels in ``mask`` (all pixels when
    the mask is empty or absent), then every pixel is projected and each channel is stretched
    from its 1st to its 99th percentile into ``[0, 1]``.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    e, shape = emb.shape[0], emb.shape[1:]
    flat = emb.reshape(e, -1).T
    fit = flat[mask.reshape(-1)] if mask is not None and mask.any() else flat
    if len(fit) > MAX_FIT_SAMPLES:
        rng = np.random.default_rng(seed)
        fit = fit[rng.choice(len(fit), MAX_FIT_SAMPLES, replace=False)]
    mean = fit.mean(axis=0)
    k = min(3, e)
    if len(fit) > 1 and e > 1:
        _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
        components = vt[:k]
    else:
        components = np.eye(e, dtype=np.float32)[:k]
    proj = (flat - mean) @ components.T.astype(np.float32)
    fit_proj = (fit - mean) @ components.T.astype(np.float32)
    lo, hi = np.percentile(fit_proj, [1, 99], axis=0)
    rgb = np.zeros((len(flat), 3), dtype=np.float32)
    rgb[:, :k] = np.clip((proj - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return rgb.reshape(*shape, 3)
