"""Geometry in one place: boxes, the ``f^l`` grid, network context and valid sizes.

Everything that reasons about where a pixel is lives here: the small value types
:class:`Coordinate` and :class:`Roi` (as in daisy/gunpowder), and :class:`UNetGeometry`,
the size arithmetic of a valid-convolution U-Net.

Size arithmetic of one axis with pooling factor ``f``, depth ``l`` and ``k`` valid convolutions
of size 3 per block (each removes 2 pixels, so a block removes ``c = 2k``)::

    input  s_0;   s_{i+1} = (s_i - c) / f      (s_i - c must be divisible by f, i < l)
    bottom x_l = s_l - c >= 1, and s_out >= 1
    up     x_i = f * x_{i+1} - c
    output s_out = x_0 = s_in - C_0,   with  C_l = c,  C_i = 2c + f * C_{i+1}

so valid inputs are ``s_in = c * (1 + f + ... + f^{l-1}) + f^l * s_l`` with ``s_l >= c + 1`` and
valid outputs step by ``f^l``. Output pixel ``j`` of a tile sees input pixels
``[j, j + C_0]`` of that tile, i.e. the output is centred with ``C_0 / 2`` context on each side.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import NSEError


class Coordinate(tuple):
    """An integer vector with element-wise arithmetic (``+ - * //`` with vectors or ints)."""

    def __new__(cls, *values: int | Iterable[int]) -> Coordinate:
        if len(values) == 1 and not isinstance(values[0], int | float):
            values = tuple(values[0])  # type: ignore[assignment]
        return super().__new__(cls, (int(v) for v in values))

    @property
    def dims(self) -> int:
        return len(self)

    def _zip(self, other: int | Sequence[int]) -> Iterable[tuple[int, int]]:
        if isinstance(other, int):
            return ((a, other) for a in self)
        if len(other) != len(self):
            raise ValueError(f"dimension mismatch: {tuple(self)} vs {tuple(other)}")
        return zip(self, other)

    def __add__(self, other):  # type: ignore[override]
        return Coordinate(a + b for a, b in self._zip(other))

    def __sub__(self, other):
        return Coordinate(a - b for a, b in self._zip(other))

    def __mul__(self, other):  # type: ignore[override]
        return Coordinate(a * b for a, b in self._zip(other))

    def __floordiv__(self, other):
        return Coordinate(a // b for a, b in self._zip(other))

    def __mod__(self, other):
        return Coordinate(a % b for a, b in self._zip(other))

    def __neg__(self):
        return Coordinate(-a for a in self)

    def prod(self) -> int:
        return math.prod(self)

    def __repr__(self) -> str:
        return f"Coordinate{tuple(self)}"


@dataclass(frozen=True)
class Roi:
    """An axis-aligned box ``[offset, offset + shape)`` in integer pixel coordinates."""

    offset: Coordinate
    shape: Coordinate

    def __init__(self, offset: Sequence[int], shape: Sequence[int]):
        object.__setattr__(self, "offset", Coordinate(offset))
        object.__setattr__(self, "shape", Coordinate(shape))
        if len(self.offset) != len(self.shape):
            raise ValueError("offset and shape must have the same length")

    @property
    def begin(self) -> Coordinate:
        return self.offset

    @property
    def end(self) -> Coordinate:
        return self.offset + self.shape

    @property
    def dims(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.shape.prod()

    def empty(self) -> bool:
        return any(s <= 0 for s in self.shape)

    def shift(self, by: Sequence[int]) -> Roi:
        return Roi(self.offset + by, self.shape)

    def grow(self, before: Sequence[int] | int, after: Sequence[int] | int) -> Roi:
        """Enlarge by ``before`` at the start and ``after`` at the end of every axis."""
        return Roi(self.offset - before, self.shape + before + after)

    def intersect(self, other: Roi) -> Roi:
        begin = Coordinate(max(a, b) for a, b in zip(self.begin, other.begin))
        end = Coordinate(min(a, b) for a, b in zip(self.end, other.end))
        return Roi(begin, Coordinate(max(0, e - b) for b, e in zip(begin, end)))

    def contains(self, other: Roi) -> bool:
        return all(a <= b for a, b in zip(self.begin, other.begin)) and all(
            a >= b for a, b in zip(self.end, other.end)
        )

    def to_slices(self, relative_to: Sequence[int] | None = None) -> tuple[slice, ...]:
        """Slices selecting this box in an array whose element 0 sits at ``relative_to``."""
        origin = Coordinate(relative_to if relative_to is not None else [0] * self.dims)
        b = self.begin - origin
        return tuple(slice(int(s), int(s + n)) for s, n in zip(b, self.shape))

    def to_list(self) -> list[list[int]]:
        """``[[start, stop], ...]`` per axis (the JSON form used by ``nse grid``)."""
        return [[int(b), int(e)] for b, e in zip(self.begin, self.end)]

    def __repr__(self) -> str:
        return f"Roi({self.to_list()})"


def object_diameter(size: float, ndim: int) -> float:
    """The diameter of a disk (2D) or ball (3D) of ``size`` pixels."""
    if ndim == 2:
        return 2.0 * math.sqrt(size / math.pi)
    return 2.0 * (3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0)


def central_roi(shape: Sequence[int], edge: int) -> Roi:
    """The box of at most ``edge`` pixels per axis at the centre of an array of ``shape``."""
    size = Coordinate(min(int(s), int(edge)) for s in shape)
    return Roi((Coordinate(shape) - size) // 2, size)


def as_tuple(value: int | Sequence[int], ndim: int, name: str = "value") -> tuple[int, ...]:
    """Broadcast one int to ``ndim`` axes, or check a per-axis sequence has ``ndim`` entries."""
    if isinstance(value, int | float):
        if int(value) != value:
            raise NSEError(f"{name} must be an integer, got {value}")
        return (int(value),) * ndim
    values = tuple(value)
    if len(values) == 1:
        return as_tuple(values[0], ndim, name)
    if len(values) != ndim:
        raise NSEError(f"{name} needs 1 or {ndim} values (one per axis), got {len(values)}")
    if any(int(v) != v for v in values):
        raise NSEError(f"{name} must be integers, got {values}")
    return tuple(int(v) for v in values)


MAX_DEPTH = 6
MAX_FACTOR = 8


@dataclass(frozen=True)
class UNetGeometry:
    """Size arithmetic of a valid-convolution U-Net.

    Parameters
    ----------
    ndim
        Spatial dimensions (2 or 3).
    depth
        Number of poolings ``l``.
    factor
        Pooling factor ``f`` per axis (kernel = stride = ``f``).
    convs_per_block
        Valid 3-wide convolutions per block (2 in the paper).
    """

    ndim: int
    depth: int
    factor: tuple[int, ...]
    convs_per_block: int = 2

    @classmethod
    def create(
        cls, ndim: int, depth: int, factor: int | Sequence[int], convs_per_block: int = 2
    ) -> UNetGeometry:
        if ndim not in (2, 3):
            raise NSEError(f"ndim must be 2 or 3, got {ndim}")
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise NSEError(f"depth must be an integer from 1 to {MAX_DEPTH}, got {depth}")
        f = as_tuple(factor, ndim, "factor")
        if any(v < 1 or v > MAX_FACTOR for v in f) or max(f) < 2:
            raise NSEError(
                f"factor must be from 2 to {MAX_FACTOR} (1 allowed on some axes of an "
                f"anisotropic net), got {f}"
            )
        if convs_per_block < 1:
            raise NSEError("convs_per_block must be at least 1")
        return cls(ndim, depth, f, convs_per_block)

    # -- per-axis constants ------------------------------------------------------------
    @property
    def _c(self) -> int:
        return 2 * self.convs_per_block

    @property
    def grid(self) -> Coordinate:
        """The period of shift equivariance, ``f^l`` per axis."""
        return Coordinate(f**self.depth for f in self.factor)

    @property
    def capacity(self) -> int:
        """Same-looking objects the net can tell apart: ``f^(d*l)`` (product over axes)."""
        return self.grid.prod()

    @property
    def context(self) -> Coordinate:
        """Input size minus output size per axis (``C_0``)."""
        out = []
        for f in self.factor:
            c_total = self._c
            for _ in range(self.depth):
                c_total = 2 * self._c + f * c_total
            out.append(c_total)
        return Coordinate(out)

    @property
    def half_context(self) -> Coordinate:
        return self.context // 2

    def _base(self, f: int) -> int:
        return self._c * sum(f**i for i in range(self.depth))

    @property
    def min_input(self) -> Coordinate:
        """Smallest valid input: every level non-empty and at least one output pixel."""
        out = []
        for f, ctx in zip(self.factor, self.context):
            g, b = f**self.depth, self._base(f)
            s_l = max(self._c + 1, -(-(ctx + 1 - b) // g))
            out.append(b + g * s_l)
        return Coordinate(out)

    @property
    def min_output(self) -> Coordinate:
        return self.min_input - self.context

    # -- conversions -------------------------------------------------------------------
    def is_valid_input(self, size: Sequence[int] | int) -> bool:
        size = as_tuple(size, self.ndim, "size")
        return all(
            s >= m and (s - self._base(f)) % (f**self.depth) == 0
            for s, m, f in zip(size, self.min_input, self.factor)
        )

    def is_valid_output(self, size: Sequence[int] | int) -> bool:
        size = as_tuple(size, self.ndim, "size")
        return self.is_valid_input(Coordinate(size) + self.context)

    def output_size(self, input_size: Sequence[int] | int) -> Coordinate:
        """Output size for a valid input size; an invalid one gets an error naming neighbours."""
        size = Coordinate(as_tuple(input_size, self.ndim, "input size"))
        if not self.is_valid_input(size):
            lo = self.valid_input_below(size)
            hi = self.valid_input_above(size)
            raise NSEError(
                f"input size {tuple(size)} is not valid for this network; nearest valid sizes: "
                f"{tuple(lo) if lo is not None else 'none'} and {tuple(hi)}"
            )
        return size - self.context

    def input_size(self, output_size: Sequence[int] | int) -> Coordinate:
        """Smallest valid input whose output is at least ``output_size`` on every axis."""
        size = Coordinate(as_tuple(output_size, self.ndim, "output size"))
        if any(s < 1 for s in size):
            raise NSEError(f"output size must be positive, got {tuple(size)}")
        return self.valid_input_above(size + self.context)

    def valid_output_above(self, output_size: Sequence[int] | int) -> Coordinate:
        """Smallest valid network output ``>=`` the request per axis."""
        return self.input_size(output_size) - self.context

    def valid_input_above(self, size: Sequence[int]) -> Coordinate:
        out = []
        for s, f, m in zip(size, self.factor, self.min_input):
            g, b = f**self.depth, self._base(f)
            out.append(max(m, b + -(-(s - b) // g) * g))
        return Coordinate(out)

    def valid_input_below(self, size: Sequence[int]) -> Coordinate | None:
        out = []
        for s, f, m in zip(size, self.factor, self.min_input):
            g, b = f**self.depth, self._base(f)
            v = b + ((s - b) // g) * g
            if v < m:
                return None
            out.append(v)
        return Coordinate(out)

    def valid_output_sizes(self, count: int = 5) -> list[list[int]]:
        """The first ``count`` valid output sizes per axis."""
        return [
            [int(m + i * f**self.depth) for i in range(count)]
            for m, f in zip(self.min_output, self.factor)
        ]

    def to_dict(self) -> dict:
        return {
            "ndim": self.ndim,
            "depth": self.depth,
            "factor": list(self.factor),
            "grid": list(self.grid),
            "capacity": self.capacity,
            "context": list(self.context),
            "min_input": list(self.min_input),
            "min_output": list(self.min_output),
            "valid_output_sizes": self.valid_output_sizes(),
        }


def snap_down(size: Sequence[int], grid: Sequence[int]) -> Coordinate:
    """Round ``size`` down to a multiple of ``grid`` per axis (``n * f^l``)."""
    return Coordinate((s // g) * g for s, g in zip(size, grid))


def grid_origins(extent: int, step: int) -> list[int]:
    """Tile origins ``0, step, 2*step, ...`` covering ``[0, extent)``."""
    return list(range(0, max(extent, 1), step))
