"""The paper's constructions (Rumberger et al., ICCV 2021) as code.

``lemma1_unet`` + :func:`cantor_image`
    Lemma 1, part I: identity convolutions, skip weights 0, fixed (all-ones) upsampling. The
    output is the maximum over the input's ``f^l`` block, and on an image increasing along the
    Cantor diagonal ordering the ``f^(d·l)`` output functions of one block are relative-distinct.
``cor5_unet``
    Corollary 5: first convolution weight 0 / bias 1, all other convolutions identity, skip
    weights 0, learnt upsampling kernels filled with distinct primes. A constant image then gets
    ``f^(d·l)`` distinct values per ``f^l`` block (products of ``l`` distinct primes); nearest
    upsampling gives a single value.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .data import cantor_image
from .geometry import Coordinate
from .model import ConvBlock, ModelConfig, UNet, Upsample


def first_primes(n: int) -> list[int]:
    primes: list[int] = []
    k = 2
    while len(primes) < n:
        if all(k % p for p in primes if p * p <= k):
            primes.append(k)
        k += 1
    return primes


def _set_identity(conv: nn.Module, in_channel: int = 0) -> None:
    """Make a 1-channel-out convolution pass channel ``in_channel`` through unchanged."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        centre = tuple(k // 2 for k in conv.weight.shape[2:])
        conv.weight[(0, in_channel, *centre)] = 1.0


def _single_channel(ndim: int, depth: int, factor: int | Sequence[int], upsampling: str) -> UNet:
    cfg = ModelConfig(
        ndim=ndim, depth=depth, factor=factor, base_channels=1, growth=1,
        upsampling=upsampling, embedding_dim=1, normalization={"kind": "none"},
    )
    return UNet(cfg).double().eval()


def _identity_everywhere(model: UNet) -> None:
    for module in model.modules():
        if isinstance(module, ConvBlock):
            for conv in module:
                if isinstance(conv, nn.Conv2d | nn.Conv3d):
                    _set_identity(conv)
    for conv in model.up_conv:
        # the concatenation is [skip, upsampled]: take the upsampled path, skip weight 0
        _set_identity(conv[0], in_channel=1)
    _set_identity(model.head)


def lemma1_unet(ndim: int, depth: int, factor: int | Sequence[int]) -> UNet:
    """Lemma 1's instance: identity convs, skip weights 0, fixed upsampling (nearest)."""
    model = _single_channel(ndim, depth, factor, "nearest")
    _identity_everywhere(model)
    for up in model.up:
        _set_identity(up.conv)
    return model


def cor5_unet(ndim: int, depth: int, factor: int | Sequence[int], upsampling: str = "learnt"
              ) -> UNet:
    """Corollary 5's instance: a constant image gets a unique ID per position of an ``f^l``
    block with learnt upsampling (prime kernels); nearest upsampling keeps it constant."""
    model = _single_channel(ndim, depth, factor, upsampling)
    _identity_everywhere(model)
    first = model.down[0][0]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.fill_(1.0)
    kernel = int(np.prod(model.config.factor))
    primes = iter(first_primes(depth * kernel))
    up: Upsample
    for up in model.up:
        with torch.no_grad():
            up.conv.bias.zero_()
            if upsampling == "learnt":
                w = up.conv.weight  # (c_in, c_out, *factor)
                w.zero_()
                for pos in itertools.product(*(range(f) for f in w.shape[2:])):
                    w[(0, 0, *pos)] = float(next(primes))
            else:
                _set_identity(up.conv)
    return model


def _forward(model: UNet, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))[None, None]
        return model(x)[0, 0].numpy()


def relative_outputs(model: UNet, image: np.ndarray, periods: int = 1) -> np.ndarray:
    """``u_{x-Δ}(T_{-Δ} I)`` for every shift ``Δ`` in ``{0 .. periods·f^l - 1}^d``.

    Shifting the image by ``Δ`` and reading the output at ``x - Δ`` follows one image point
    through the net; values differ only where the output functions are relative-distinct.
    """
    geometry = model.config.geometry
    grid = geometry.grid
    span = grid * periods
    net_in = geometry.input_size(span)
    needed = net_in + span
    if any(s < n for s, n in zip(image.shape, needed)):
        raise ValueError(f"image must be at least {tuple(needed)}")
    x = Coordinate(span)
    values = np.empty(tuple(span), dtype=np.float64)
    for delta in itertools.product(*(range(s) for s in span)):
        d = Coordinate(delta)
        crop = tuple(slice(a, a + n) for a, n in zip(d, net_in))
        out = _forward(model, image[crop])
        values[delta] = out[tuple(x - d - 1)]
    return values


def count_distinct(values: np.ndarray, decimals: int = 6) -> int:
    return int(np.unique(np.round(values.ravel(), decimals)).size)


def lemma1_count(ndim: int, depth: int, factor: int | Sequence[int], periods: int = 1) -> int:
    """Relative-distinct output functions found by Lemma 1's construction over shifts in
    ``periods`` grid periods per axis (``f^(d·l)`` for any ``periods``)."""
    model = lemma1_unet(ndim, depth, factor)
    geometry = model.config.geometry
    shape = geometry.input_size(geometry.grid * periods) + geometry.grid * periods
    return count_distinct(relative_outputs(model, cantor_image(tuple(shape)), periods))


def cor5_count(ndim: int, depth: int, factor: int | Sequence[int], upsampling: str = "learnt"
               ) -> int:
    """Distinct output values of Corollary 5's net on a constant image."""
    model = cor5_unet(ndim, depth, factor, upsampling)
    geometry = model.config.geometry
    shape = geometry.input_size(geometry.grid * 2)
    return count_distinct(_forward(model, np.zeros(tuple(shape))))
