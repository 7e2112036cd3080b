import numpy as np
import pytest
import torch

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.geometry import UNetGeometry
from napari_shift_equivariance.tiling import DEFAULT_TILES, default_tile, device_kind, plan_tiles

G = UNetGeometry.create(2, 3, 2)  # grid 8, context 88


def _coverage(plan):
    cover = np.zeros(tuple(plan.image_shape), dtype=int)
    for t in plan.tiles:
        cover[t.output_roi.to_slices()] += 1
    return cover


@pytest.mark.parametrize("mode, tile", [("correct", 20), ("correct", 64), ("naive", 13),
                                        ("naive", 100), ("whole", None)])
def test_tiles_cover_every_pixel_once(mode, tile):
    plan = plan_tiles((77, 91), G, tile, mode)
    assert (_coverage(plan) == 1).all()
    for t in plan.tiles:
        assert t.input_roi.shape == plan.net_input
        assert t.crop.shape == t.output_roi.shape
        # the output is centred in the input: half the context on each side
        assert t.input_roi.begin == t.output_roi.begin - G.half_context


def test_correct_tiles_on_the_global_grid():
    plan = plan_tiles((77, 91), G, 21, "correct")
    assert plan.tile_shape == (16, 16)  # 21 rounded down to n * 8
    assert all(plan.on_grid(t) for t in plan.tiles)
    assert G.is_valid_input(plan.net_input)
    # the last tiles are clipped, not shifted off the grid
    assert max(t.output_roi.end[0] for t in plan.tiles) == 77
    assert {t.output_roi.begin[0] for t in plan.tiles} == set(range(0, 77, 16))


def test_naive_tiles_at_multiples_of_the_request():
    plan = plan_tiles((77, 91), G, 13, "naive")
    assert plan.tile_shape == (13, 13)
    assert {t.output_roi.begin[1] for t in plan.tiles} == set(range(0, 91, 13))
    assert any(not plan.on_grid(t) for t in plan.tiles)
    assert plan.borders()[0] == list(range(13, 77, 13))


def test_border_mask():
    plan = plan_tiles((40, 40), G, 16, "correct")
    mask = plan.border_mask(1)
    assert mask[15, 5] and mask[16, 5] and not mask[14, 5] and not mask[5, 5]
    assert mask[5, 31] and mask[5, 32]


def test_correct_below_grid_is_refused():
    with pytest.raises(NSEError, match="below the grid"):
        plan_tiles((77, 91), G, 5, "correct")


def test_big_tile_on_small_image_is_one_tile():
    plan = plan_tiles((30, 20), G, 256, "correct")
    assert len(plan) == 1 and plan.tile_shape == (32, 24)


def test_per_axis_tiles_3d():
    g = UNetGeometry.create(3, 2, (1, 2, 2))
    plan = plan_tiles((5, 30, 30), g, (2, 8, 12), "correct")
    assert plan.tile_shape == (2, 8, 12)
    assert (_coverage(plan) == 1).all()


def test_bad_requests():
    with pytest.raises(NSEError):
        plan_tiles((30, 30), G, 16, "fancy")
    with pytest.raises(NSEError):
        plan_tiles((30, 30, 30), G, 16, "correct")
    with pytest.raises(NSEError):
        plan_tiles((0, 30), G, 16, "correct")
    with pytest.raises(NSEError):
        plan_tiles((30, 30), G, (16, 16, 16), "correct")


def test_default_tile_is_multiple_of_grid():
    assert default_tile(G) == (512, 512)
    g = UNetGeometry.create(3, 3, 3)  # grid 27
    for device in ("cpu", "cuda"):
        assert all(t % 27 == 0 for t in default_tile(g, device))
        assert all(t % 27 == 0 for t in default_tile(g, device, (100, 1000, 3000)))


def test_default_tile_per_device_and_dimensionality():
    g2, g3 = UNetGeometry.create(2, 4, 2), UNetGeometry.create(3, 3, 2)
    assert default_tile(g2, "cpu") == (512, 512) and default_tile(g3, "cpu") == (128,) * 3
    assert default_tile(g2, "cuda:1") == (2048, 2048) and default_tile(g3, "cuda") == (256,) * 3
    assert default_tile(g2, torch.device("cpu")) == (512, 512)
    assert device_kind("mps") == device_kind(torch.device("cuda", 0)) == "gpu"
    gpu_here = torch.cuda.is_available() or torch.backends.mps.is_available()
    assert device_kind("auto") == ("gpu" if gpu_here else "cpu")
    assert set(DEFAULT_TILES["cpu"]) == set(DEFAULT_TILES["gpu"]) == {2, 3}


def _input_ratio(shape, geo, tile):
    """Whole-image input pixels over the tiles' input pixels: the throughput ratio where
    compute follows input pixels."""
    whole = plan_tiles(shape, geo, None, "whole")
    tiles = plan_tiles(shape, geo, tile, "correct")
    return (len(whole) * whole.net_input.prod()) / (len(tiles) * tiles.net_input.prod())


def test_gpu_default_tile_meets_the_throughput_arithmetic():
    """The issue's arithmetic for a depth-4 net: 512-tiles cap near 0.64x of a 2048^2
    pass; the GPU default reaches >= 0.85x on images it has to tile."""
    g = UNetGeometry.create(2, 4, 2)  # context 184
    assert abs(_input_ratio((2048, 2048), g, 512) - 0.64) < 0.01
    for side in (4096, 6000, 8192):
        gpu = plan_tiles((side, side), g, None, "correct", "cuda")
        assert len(gpu) > 1
        assert _input_ratio((side, side), g, gpu.tile_shape) >= 0.85


@pytest.mark.parametrize("side, tiles, tile", [(2100, 2, 1056), (2048, 1, 2048), (4100, 3, 1376),
                                               (100, 1, 112)])
def test_default_tile_is_balanced_over_the_image(side, tiles, tile):
    g = UNetGeometry.create(2, 4, 2)  # grid 16
    plan = plan_tiles((side, 300), g, None, "correct", "cuda")
    assert plan.tile_shape == (tile, 304)
    assert plan.borders()[0] == [tile * k for k in range(1, tiles)]
    assert (_coverage(plan) == 1).all()
    # no more tiles than the largest default tile needs, and each no larger than needed
    assert tiles == -(-side // 2048) and tile - side / tiles < 16
    # an explicit tile is taken as asked
    assert plan_tiles((side, 300), g, 2048, "correct", "cuda").tile_shape[0] == min(
        2048, -(-side // 16) * 16)


def test_plan_json_roundtrip():
    d = plan_tiles((40, 50), G, 16, "correct").to_dict()
    assert d["n_tiles"] == len(d["tiles"]) == 3 * 4
    assert d["tiles"][0]["output"] == [[0, 16], [0, 16]]
    assert d["tiles"][0]["input"] == [[-44, 16 + 44 + 4], [-44, 64]]
