"""Block plans: which output box each block writes, which input box it reads, which tiles.

A block is one plane over the leading axes (a 2D model on a stack runs plane by plane) times a
spatial box of ``n * tile`` on the global ``f^l`` grid. Because the block is a multiple of the
tile of the whole-image plan (:func:`tiling.plan_tiles`), the correct tiles of that plan
partition every block: a block predicts exactly the tiles the in-memory run predicts, so its
output equals the whole-image output (Cor. 4 of Rumberger et al.). As in daisy, ``read_roi``
minus ``write_roi`` is the network's valid-convolution context.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import NSEError
from ..geometry import Coordinate, Roi, as_tuple
from ..tiling import Tile, TilePlan

#: default block edge (output pixels) when none is given, rounded to a multiple of the tile
DEFAULT_BLOCK = {2: 2048, 3: 256}


@dataclass(frozen=True)
class Block:
    """One unit of work: the plane ``lead`` and the spatial ``write_roi`` it owns; it reads
    ``read_roi`` (the hull of its tiles' input boxes, which may leave the image)."""

    index: int
    grid_index: tuple[int, ...]
    lead: tuple[int, ...]
    write_roi: Roi
    read_roi: Roi

    @property
    def slices(self) -> tuple[slice | int, ...]:
        """Index of the block's output in an array of shape ``(*leading, *spatial)``."""
        return (*self.lead, *self.write_roi.to_slices())


@dataclass(frozen=True)
class BlockPlan:
    """Blocks covering ``(*leading, *spatial)`` in C order over ``grid_shape``."""

    leading: tuple[int, ...]
    spatial: Coordinate
    block_shape: Coordinate
    tiles: TilePlan

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.leading, *self.spatial)

    @property
    def spatial_grid(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.spatial, self.block_shape))

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return (*self.leading, *self.spatial_grid)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Zarr chunks of a ``(*leading, *spatial)`` output: one chunk per block."""
        return (*(1 for _ in self.leading), *self.block_shape)

    def __len__(self) -> int:
        return int(np.prod(self.grid_shape, dtype=np.int64))

    def __iter__(self) -> Iterator[Block]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = tuple(int(v) for v in np.unravel_index(index, self.grid_shape))
        return self.block_at(g)

    def block_at(self, grid_index: Sequence[int]) -> Block:
        g = tuple(int(v) for v in grid_index)
        nl = len(self.leading)
        lead, sg = g[:nl], Coordinate(g[nl:])
        begin = sg * self.block_shape
        end = Coordinate(min(b + k, s) for b, k, s in zip(begin, self.block_shape, self.spatial))
        write = Roi(begin, end - begin)
        half = self.tiles.geometry.half_context
        last = Coordinate(-(-e // t) * t for e, t in zip(end, self.tiles.tile_shape))
        read = Roi(begin - half, last - begin + self.tiles.net_input - self.tiles.tile_shape)
        index = int(np.ravel_multi_index(g, self.grid_shape))
        return Block(index, g, lead, write, read)

    def index_of(self, grid_index: Sequence[int]) -> int | None:
        """Flat index of a grid position, ``None`` outside the grid."""
        if any(not 0 <= v < n for v, n in zip(grid_index, self.grid_shape)):
            return None
        return int(np.ravel_multi_index(tuple(grid_index), self.grid_shape))

    def tiles_of(self, block: Block) -> list[Tile]:
        """The tiles of the whole-image plan that partition ``block.write_roi``."""
        tgrid = tuple(-(-s // t) for s, t in zip(self.spatial, self.tiles.tile_shape))
        ranges = [
            range(b // t, -(-e // t))
            for b, e, t in zip(block.write_roi.begin, block.write_roi.end, self.tiles.tile_shape)
        ]
        return [self.tiles.tiles[int(np.ravel_multi_index(i, tgrid))]
                for i in itertools.product(*ranges)]

    def internal_faces(self, block: Block) -> list[tuple[bool, bool]]:
        """Per spatial axis, whether the lower / upper face borders another block."""
        return [(b > 0, e < s) for b, e, s in
                zip(block.write_roi.begin, block.write_roi.end, self.spatial)]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "block": list(self.block_shape),
                "tile": list(self.tiles.tile_shape), "grid": list(self.grid_shape),
                "n_blocks": len(self)}


def block_shape_for(tiles: TilePlan, block: int | Sequence[int] | None) -> Coordinate:
    """The block request rounded down to a multiple of the plan's tile (never below one tile,
    never beyond what covers the image)."""
    ndim = tiles.ndim
    want = as_tuple(block if block is not None else DEFAULT_BLOCK[ndim], ndim, "block")
    if any(b < 1 for b in want):
        raise NSEError(f"block size must be positive, got {want}")
    out = []
    for b, t, s in zip(want, tiles.tile_shape, tiles.image_shape):
        cover = -(-s // t) * t
        out.append(min(max(t, (b // t) * t), cover))
    return Coordinate(out)


def plan_blocks(leading: Sequence[int], tiles: TilePlan,
                block: int | Sequence[int] | None = None) -> BlockPlan:
    """Blocks for an image of shape ``(*leading, *tiles.image_shape)`` tiled by ``tiles``
    (a ``correct`` plan: its tiles sit on the global ``f^l`` grid)."""
    if tiles.mode != "correct":
        raise NSEError("blockwise work needs correct tiles (n*f^l on the global grid), "
                       f"not {tiles.mode!r}")
    return BlockPlan(tuple(int(v) for v in leading), tiles.image_shape,
                     block_shape_for(tiles, block), tiles)
