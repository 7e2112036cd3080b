"""Tile plans: which input box each tile reads and which output box it writes.

Three modes:

``correct``
    Output tiles of ``n * f^l`` (the request rounded down, never below ``f^l``) with origins on
    the global ``f^l`` grid anchored at the image origin. By Cor. 4 of Rumberger et al. the
    stitched result *equals* one pass over the whole (padded) image.
``naive``
    Output tiles of exactly the requested size at multiples of that size, the way most tools
    tile. When the request is no valid network output size the network runs at the next valid
    size and the surplus is dropped. Tiles whose origin is off the ``f^l`` grid use other output
    functions than their neighbours: seams.
``whole``
    One pass over the whole padded image.

Every tile of a plan has the same input size, so tiles batch. Input boxes may extend beyond
the image; the predictor fills those pixels by padding (reflect by default), identically for
every mode, so that the modes differ only in how the image is cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import NSEError
from .geometry import Coordinate, Roi, UNetGeometry, as_tuple, snap_down

MODES = ("correct", "naive", "whole")
# Largest default output tile per device kind and dimensionality. CPU: measured (512 tiles
# are as fast as one whole-image pass there, docs/benchmarks.md). GPU: where compute follows
# input pixels a tile pays ((out + context) / out)^d, so a depth-4 2D net (context 184) caps
# 512-tiles near 0.64x of a 2048^2 pass and needs ~1000+ px for 0.85x; 2048 gives ~0.92x on
# 4096^2 images. 3D stays at 256^3 (~15 GB of activations at 16 base channels): larger would
# pay off but not fit most GPUs; an out-of-memory error halves the tile (predict.py).
DEFAULT_TILES = {"cpu": {2: 512, 3: 128}, "gpu": {2: 2048, 3: 256}}
DEFAULT_TILE = DEFAULT_TILES["cpu"]  # the CPU sizes; also the default block of scope="block"


@dataclass(frozen=True)
class Tile:
    """One tile: ``input_roi`` is read (image coordinates, may leave the image), the network
    output's ``crop`` (relative to the network output) is written to ``output_roi``."""

    index: tuple[int, ...]
    input_roi: Roi
    output_roi: Roi
    crop: Roi

    def to_dict(self) -> dict:
        return {
            "index": list(self.index),
            "input": self.input_roi.to_list(),
            "output": self.output_roi.to_list(),
            "crop": self.crop.to_list(),
        }


@dataclass(frozen=True)
class TilePlan:
    mode: str
    image_shape: Coordinate
    requested: Coordinate | None
    tile_shape: Coordinate
    net_input: Coordinate
    net_output: Coordinate
    geometry: UNetGeometry
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def ndim(self) -> int:
        return len(self.image_shape)

    def borders(self) -> list[list[int]]:
        """Per axis, the coordinates ``p`` where a tile starts inside the image (seam between
        ``p - 1`` and ``p``)."""
        return [
            sorted({t.output_roi.begin[a] for t in self.tiles} - {0})
            for a in range(self.ndim)
        ]

    def border_mask(self, width: int = 1) -> np.ndarray:
        """Bool mask of the pixels within ``width`` of a tile border (both sides)."""
        mask = np.zeros(tuple(self.image_shape), dtype=bool)
        for a, positions in enumerate(self.borders()):
            for p in positions:
                sl = [slice(None)] * self.ndim
                sl[a] = slice(max(p - width, 0), p + width)
                mask[tuple(sl)] = True
        return mask

    def on_grid(self, tile: Tile) -> bool:
        """Whether the tile's origin lies on the global ``f^l`` grid."""
        return all(b % g == 0 for b, g in zip(tile.output_roi.begin, self.geometry.grid))

    @property
    def efficiency(self) -> float:
        """Output pixels written / network output pixels computed."""
        computed = len(self.tiles) * self.net_output.prod()
        return self.image_shape.prod() / computed if computed else 0.0

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "image_shape": list(self.image_shape),
            "requested_tile": list(self.requested) if self.requested is not None else None,
            "tile_shape": list(self.tile_shape),
            "net_input": list(self.net_input),
            "net_output": list(self.net_output),
            "grid": list(self.geometry.grid),
            "context": list(self.geometry.context),
            "n_tiles": len(self.tiles),
            "tiles": [t.to_dict() for t in self.tiles],
        }


def device_kind(device: Any = "cpu") -> str:
    """``"cpu"`` or ``"gpu"`` (cuda, mps) for a device name or ``torch.device``; ``"auto"``
    is resolved (cuda > mps > cpu)."""
    name = str(device).strip().lower()
    if name == "auto":
        from .model import resolve_device  # torch only when asked to look at the machine

        name = str(resolve_device("auto"))
    return "gpu" if name.startswith(("cuda", "mps")) else "cpu"


def default_tile(geometry: UNetGeometry, device: Any = "cpu",
                 image_shape: Sequence[int] | None = None) -> Coordinate:
    """The default output tile for ``device`` (see :data:`DEFAULT_TILES`), ``n * f^l`` per axis.

    Large tiles keep the valid-padding context overhead ``((out + context) / out)^d`` small.
    With ``image_shape`` the tile is balanced: the fewest tiles of at most the default size,
    each as small as covers the image (2100 px in 2048-tiles: two 1056-px tiles, not
    2048 + 52 px computed as two 2048-px tiles).
    """
    want = DEFAULT_TILES[device_kind(device)][geometry.ndim]
    tile = [max(g, (want // g) * g) for g in geometry.grid]
    if image_shape is not None:
        tile = [min(t, g * -(-s // (g * -(-s // t))))
                for t, g, s in zip(tile, geometry.grid, image_shape)]
    return Coordinate(tile)


def plan_tiles(
    image_shape: Sequence[int],
    geometry: UNetGeometry,
    tile: int | Sequence[int] | None = None,
    mode: str = "correct",
    device: Any = "cpu",
) -> TilePlan:
    """Plan the tiles that cover an image of ``image_shape`` (spatial axes only).

    ``tile=None``: :func:`default_tile` for ``device``, balanced over the image."""
    if mode not in MODES:
        raise NSEError(f"stitch mode must be one of {', '.join(MODES)}, got {mode!r}")
    shape = Coordinate(image_shape)
    if len(shape) != geometry.ndim:
        raise NSEError(f"image has {len(shape)} spatial axes, the model needs {geometry.ndim}")
    if any(s < 1 for s in shape):
        raise NSEError(f"image is empty (shape {tuple(shape)})")
    half = geometry.half_context
    grid = geometry.grid

    requested = None
    if mode == "whole":
        tile_shape = shape
    else:
        requested = Coordinate(
            as_tuple(tile, geometry.ndim, "tile") if tile is not None
            else default_tile(geometry, device, shape)
        )
        if any(t < 1 for t in requested):
            raise NSEError(f"tile size must be positive, got {tuple(requested)}")
        if mode == "correct":
            if any(t < g for t, g in zip(requested, grid)):
                raise NSEError(
                    f"output tile {tuple(requested)} is below the grid f^l = {tuple(grid)}: "
                    f"correct stitching needs tiles of n*f^l (e.g. {tuple(grid)})"
                )
            # a tile larger than the image gains nothing: one grid-aligned tile covers it
            cover = Coordinate(-(-s // g) * g for s, g in zip(shape, grid))
            tile_shape = Coordinate(min(t, c) for t, c in zip(snap_down(requested, grid), cover))
        else:
            tile_shape = Coordinate(min(t, s) for t, s in zip(requested, shape))

    net_output = geometry.valid_output_above(tile_shape)
    net_input = net_output + geometry.context
    starts = [range(0, s, t) for s, t in zip(shape, tile_shape)]
    tiles = []
    for index, origin in zip(
        itertools.product(*(range(len(r)) for r in starts)), itertools.product(*starts)
    ):
        origin = Coordinate(origin)
        out_shape = Coordinate(min(t, s - o) for t, s, o in zip(tile_shape, shape, origin))
        tiles.append(
            Tile(
                index=tuple(index),
                input_roi=Roi(origin - half, net_input),
                output_roi=Roi(origin, out_shape),
                crop=Roi([0] * len(shape), out_shape),
            )
        )
    return TilePlan(
        mode, shape, requested, tile_shape, net_input, net_output, geometry, tuple(tiles)
    )
