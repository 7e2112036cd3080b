"""Memory budgets: parse ``--memory-limit`` and decide when a run must go blockwise."""

from __future__ import annotations

import ctypes
import math
import re
import sys
from collections.abc import Sequence

from ..errors import NSEError

_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6,
          "mib": 2**20, "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12,
          "tib": 2**40}
#: share of the machine's memory an in-memory run may use before blockwise is chosen
DEFAULT_SHARE = 0.5


def parse_size(text: str | int | float | None) -> int | None:
    """``"8GB"``, ``"512MiB"``, ``"2e9"`` or a number of bytes; ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, int | float):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise NSEError(f"memory size must look like 8GB, 512MiB or a number of bytes, "
                           f"got {text!r}")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise NSEError(f"memory size must be positive, got {text!r}")
    return size


def default_budget() -> int:
    """:data:`DEFAULT_SHARE` of the machine's total memory."""
    import psutil

    return int(DEFAULT_SHARE * psutil.virtual_memory().total)


def in_memory_bytes(image_shape: Sequence[int], out_channels: int, ndim: int) -> int:
    """What :func:`segment` holds at once for an image of ``(*leading, *spatial)``: the
    float32 prediction (``out_channels`` per pixel) plus the labels and foreground mask."""
    pixels = math.prod(int(s) for s in image_shape)
    return pixels * (4 * out_channels + 4 + 1)


def needs_blockwise(image_shape: Sequence[int], out_channels: int, ndim: int,
                    limit: int | None = None) -> bool:
    """Whether the in-memory run would exceed ``limit`` bytes (default :func:`default_budget`)."""
    budget = default_budget() if limit is None else limit
    return in_memory_bytes(image_shape, out_channels, ndim) > budget


#: glibc: buffers at least this large come straight from mmap and go back to the system
MMAP_THRESHOLD = 2**25


def fixed_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Stop glibc from raising its mmap threshold after large frees (its default), which makes
    block-sized buffers land in a fragmenting heap: the peak then creeps up block after block
    (measured over 8 planes of 1024²: 927 -> 1055 MB; with 32 MB: 854 -> 882 MB, flat after
    the third block, at the same speed; with 1 MB: 772 -> 806 MB but ~1.5x slower, as torch's
    buffers are then mapped and zeroed afresh). Process-wide, so only for processes this
    package owns (the ``nse`` command, its local workers); ``MALLOC_MMAP_THRESHOLD_=33554432``
    in the environment does the same for any process.
    Returns whether it was applied (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, int(size)))
