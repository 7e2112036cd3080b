"""Training losses: the discriminative loss (De Brabandere et al. 2017) plus a foreground term.

The network outputs ``E + 1`` channels: ``E`` embedding channels and one foreground logit.
Instances are pulled together in embedding space and pushed apart from each other; the
foreground channel separates objects from background, so by default background pixels take
no part in the embedding loss (``background="ignore"``).

Default margins ``delta_v = 0.5``, ``delta_d = 1.5`` (De Brabandere et al.'s values; all
distances Euclidean): training stops pulling once a pixel is within 0.5 of its instance mean and
stops pushing once two means are ``2 * delta_d = 3`` apart, so pixels of different instances
end at least ``3 - 2 * 0.5 = 2`` apart and a mean-shift bandwidth of about ``2 * delta_v = 1``
separates them. The loss is scale-free up to these margins (the linear head can scale the
embeddings), so what matters is their ratio and the size of the embedding terms next to the
foreground term. Measured here (2D U-Net l=3, 16 base channels, E=16, batch 1, Adam 5e-4,
2500 iterations on augmented :func:`~napari_shift_equivariance.data.nuclei` crops, best
bandwidth of 0.5–4, one seed): ``delta_d = 1.5`` reached foreground IoU 0.93 and AP@0.5 0.36
(at bandwidth 0.5: clusters were still loose) on held-out images, ``delta_d = 3`` (the paper's
push margin, here with ``delta_v = 0.5``) only 0.67 and 0.15: its push term starts 4x larger
and dominates the shared features early on. ``w_reg = 1e-3`` only keeps the
means from drifting.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NSEError
from .options import check_coord_scale

_EPS = 1e-12
#: The one default of the margins, used by the loss, ``TrainConfig`` and ``ModelConfig``.
DEFAULT_DELTA_V = 0.5
DEFAULT_DELTA_D = 1.5
#: Embedding units across the median training object's diameter: new models take
#: ``coord_scale = COORD_SPAN / diameter`` (``train``), so an object's offsets span the same
#: embedding distance whatever its size in pixels, and touching neighbours' centres land about
#: that far apart. Measured on real nuclei (23 px): 0.2 and 0.4 units per pixel (4.7 and 9.4
#: across) gave calibrated AP@0.5 0.77 and 0.81, 0.6 and 1.0 fell to 0.59 and 0.55 on a
#: held-out grid (docs/training.md, "Coordinates").
COORD_SPAN = 8.0


def _norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean norm whose gradient stays finite (zero) at the origin."""
    return torch.sqrt(torch.clamp((x * x).sum(dim), min=_EPS))


def with_coordinates(embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """``(B, E, *spatial)`` embeddings plus ``scale`` times each pixel's position (centred
    on the window, in pixels) on the first ``ndim`` channels; a new tensor (0: unchanged)."""
    if not scale:
        return embeddings
    spatial = embeddings.shape[2:]
    if embeddings.shape[1] < len(spatial):
        raise NSEError(f"coordinates need at least {len(spatial)} embedding channels, got "
                       f"{embeddings.shape[1]}")
    grids = torch.meshgrid(
        *[torch.arange(n, dtype=embeddings.dtype, device=embeddings.device) - (n - 1) / 2
          for n in spatial], indexing="ij")
    pos = torch.stack(grids) * scale
    pad = embeddings.shape[1] - len(spatial)
    if pad:
        pos = torch.cat([pos, pos.new_zeros((pad, *spatial))])
    return embeddings + pos


def _zero(like: torch.Tensor) -> torch.Tensor:
    # a zero that stays in the graph, so backward() works when nothing contributes
    return like.sum() * 0.0


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    # means over thousands of pixels lose too much in half precision (autocast outputs)
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_shapes(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.dim() < 3:
        raise NSEError(f"embeddings must be (B, E, *spatial), got shape {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1] + embeddings.shape[2:]:
        raise NSEError(
            f"labels {tuple(labels.shape)} do not match embeddings {tuple(embeddings.shape)} "
            "(expected (B, *spatial))"
        )


def _item_terms(
    emb: torch.Tensor, lab: torch.Tensor, delta_v: float, delta_d: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pull, push and regulariser of one item: ``emb`` (E, N) and its instance ids (N,)."""
    if lab.numel() == 0:
        z = _zero(emb)
        return z, z, z
    ids, inverse = torch.unique(lab, return_inverse=True)
    n_inst = ids.numel()
    x = emb.t()  # (N, E)
    counts = torch.bincount(inverse, minlength=n_inst).to(x.dtype)
    sums = x.new_zeros(n_inst, x.shape[1]).index_add_(0, inverse, x)
    means = sums / counts[:, None]

    pull = F.relu(_norm(means[inverse] - x) - delta_v) ** 2
    pull_per_inst = x.new_zeros(n_inst).index_add_(0, inverse, pull) / counts
    var = pull_per_inst.mean()
    reg = _norm(means).mean()
    if n_inst < 2:
        return var, _zero(emb), reg
    diff = means[:, None, :] - means[None, :, :]
    push = F.relu(2 * delta_d - _norm(diff)) ** 2
    off_diag = ~torch.eye(n_inst, dtype=torch.bool, device=x.device)
    dist = push[off_diag].mean()
    return var, dist, reg


def discriminative_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    delta_v: float = DEFAULT_DELTA_V,
    delta_d: float = DEFAULT_DELTA_D,
    w_var: float = 1.0,
    w_dist: float = 1.0,
    w_reg: float = 1e-3,
    background: str = "ignore",
    ignore_index: int | None = None,
) -> dict[str, torch.Tensor]:
    """The discriminative loss of a batch.

    Parameters
    ----------
    embeddings
        ``(B, E, *spatial)`` float tensor.
    labels
        ``(B, *spatial)`` integer instance ids (0 = background).
    delta_v
        Pull margin: a pixel within ``delta_v`` of its instance mean costs nothing.
    delta_d
        Push margin: two instance means at least ``2 * delta_d`` apart cost nothing.
    w_var, w_dist, w_reg
        Weights of the pull, push and regularisation terms in ``total``.
    background
        ``"ignore"``: label-0 pixels are left out (the foreground channel handles them);
        ``"instance"``: background is one more instance (the paper's setting).
    ignore_index
        Label value of unannotated pixels, left out of every term.

    Returns
    -------
    dict
        ``total``, ``var`` (pull), ``dist`` (push), ``reg``: scalar tensors. Each term is
        computed per batch item (means over instances, and over ordered pairs of distinct
        instances for ``dist``) and averaged over the batch; an item without instances
        contributes 0 to every term, one with a single instance 0 to ``dist``.
    """
    if background not in ("ignore", "instance"):
        raise NSEError(f"background must be 'ignore' or 'instance', got {background!r}")
    _check_shapes(embeddings, labels)
    b, e = embeddings.shape[:2]
    emb = _full_precision(embeddings).reshape(b, e, -1)
    lab = labels.reshape(b, -1).long()
    keep = torch.ones_like(lab, dtype=torch.bool)
    if background == "ignore":
        keep &= lab != 0
    if ignore_index is not None:
        keep &= lab != ignore_index

    terms = [_item_terms(emb[i][:, keep[i]], lab[i][keep[i]], delta_v, delta_d) for i in range(b)]
    var, dist, reg = (torch.stack(t).mean() for t in zip(*terms))
    total = w_var * var + w_dist * dist + w_reg * reg
    return {"total": total, "var": var, "dist": dist, "reg": reg}


def foreground_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int | None = None,
    kind: str = "bce",
) -> torch.Tensor:
    """Foreground vs background loss of a ``(B, *spatial)`` logit map; target = ``labels != 0``.

    ``kind``: ``"bce"`` (binary cross-entropy, mean over pixels), ``"dice"`` (soft Dice of the
    sigmoid over the whole batch) or ``"bce+dice"`` (their sum). ``ignore_index`` pixels are
    left out.
    """
    if kind not in ("bce", "dice", "bce+dice"):
        raise NSEError(f"foreground loss kind must be 'bce', 'dice' or 'bce+dice', got {kind!r}")
    if logits.shape != labels.shape:
        raise NSEError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    logits = _full_precision(logits)
    target = (labels != 0).to(logits.dtype)
    weight = None
    if ignore_index is not None:
        weight = (labels != ignore_index).to(logits.dtype)
        if weight.sum() == 0:
            return _zero(logits)
    loss = _zero(logits)
    if "bce" in kind:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = loss + (bce.mean() if weight is None else (bce * weight).sum() / weight.sum())
    if "dice" in kind:
        prob = torch.sigmoid(logits)
        if weight is not None:
            prob, target = prob * weight, target * weight
        inter = (prob * target).sum()
        loss = loss + 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return loss


class TrainingLoss(nn.Module):
    """Loss of the network output ``(B, E + 1, *spatial)``: embeddings, then a foreground logit.

    ``forward`` returns ``total = discriminative total + w_fg * fg`` and every term
    (``var``, ``dist``, ``reg``, ``fg``); with ``coord_scale`` the discriminative loss sees
    :func:`with_coordinates` of the embeddings. :meth:`config` is a plain dict for model files.
    """

    def __init__(
        self,
        delta_v: float = DEFAULT_DELTA_V,
        delta_d: float = DEFAULT_DELTA_D,
        w_var: float = 1.0,
        w_dist: float = 1.0,
        w_reg: float = 1e-3,
        w_fg: float = 1.0,
        background: str = "ignore",
        ignore_index: int | None = None,
        fg_kind: str = "bce",
        coord_scale: float = 0.0,
    ):
        super().__init__()
        if delta_v < 0 or delta_d <= 0:
            raise NSEError(f"need delta_v >= 0 and delta_d > 0, got {delta_v}, {delta_d}")
        self.delta_v = float(delta_v)
        self.delta_d = float(delta_d)
        self.w_var = float(w_var)
        self.w_dist = float(w_dist)
        self.w_reg = float(w_reg)
        self.w_fg = float(w_fg)
        self.background = background
        self.ignore_index = ignore_index
        self.fg_kind = fg_kind
        self.coord_scale = check_coord_scale(coord_scale)

    def config(self) -> dict[str, Any]:
        return {
            "delta_v": self.delta_v, "delta_d": self.delta_d, "w_var": self.w_var,
            "w_dist": self.w_dist, "w_reg": self.w_reg, "w_fg": self.w_fg,
            "background": self.background, "ignore_index": self.ignore_index,
            "fg_kind": self.fg_kind, "coord_scale": self.coord_scale,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> TrainingLoss:
        """Build from a (possibly partial) config dict; unknown keys are an error."""
        config = dict(config or {})
        known = set(cls().config())
        unknown = set(config) - known
        if unknown:
            raise NSEError(f"unknown loss settings {sorted(unknown)}")
        return cls(**config)

    def forward(self, output: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if output.dim() < 3 or output.shape[1] < 2:
            raise NSEError(
                f"output must be (B, E + 1, *spatial) with E >= 1, got {tuple(output.shape)}"
            )
        terms = discriminative_loss(
            with_coordinates(output[:, :-1], self.coord_scale), labels,
            delta_v=self.delta_v, delta_d=self.delta_d,
            w_var=self.w_var, w_dist=self.w_dist, w_reg=self.w_reg,
            background=self.background, ignore_index=self.ignore_index,
        )
        fg = foreground_loss(output[:, -1], labels, self.ignore_index, self.fg_kind)
        terms["fg"] = fg
        terms["total"] = terms["total"] + self.w_fg * fg
        return terms


def total_loss(
    output: torch.Tensor, labels: torch.Tensor, **config: Any
) -> dict[str, torch.Tensor]:
    """Functional form of :class:`TrainingLoss`: ``config`` takes its keyword arguments."""
    return TrainingLoss.from_config(config)(output, labels)
