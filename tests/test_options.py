"""options: validated, picklable value types for prediction and clustering."""

import pickle

import pytest

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.model import ModelConfig
from napari_shift_equivariance.options import (
    DEFAULT_MIN_SIZE,
    SCOPES,
    STITCH_MODES,
    ClusterOptions,
    PredictOptions,
)


def test_cluster_options_resolve_from_the_models_calibration():
    cfg = ModelConfig(ndim=2, depth=2, extra={"bandwidth": 2.5, "fg_threshold": 0.3,
                                              "min_size": 7, "spatial_radius": 9.0,
                                              "relative_min_size": 0.2})
    got = ClusterOptions().resolve(cfg)
    assert (got.bandwidth, got.fg_threshold, got.min_size, got.spatial_radius,
            got.relative_min_size) == (2.5, 0.3, 7, 9.0, 0.2)
    assert got.resolved and not ClusterOptions().resolved
    # what the user sets wins over the model's (0 switches the positions off)
    mine = ClusterOptions(bandwidth=1.0, fg_threshold=0.6, min_size=0,
                          spatial_radius=0, relative_min_size=0).resolve(cfg)
    assert mine.relative_min_size == 0.0
    assert (mine.bandwidth, mine.fg_threshold, mine.min_size, mine.spatial_radius) == (
        1.0, 0.6, 0, 0.0)


def test_a_relative_bandwidth_is_the_models_unless_a_bandwidth_is_given():
    cfg = ModelConfig(ndim=2, depth=2, extra={"bandwidth": 1.4, "relative_bandwidth": 0.2})
    assert ClusterOptions().resolve(cfg).relative_bandwidth == 0.2
    # a bandwidth given by hand is meant as it is, unless a relative one is given too
    assert ClusterOptions(bandwidth=2.0).resolve(cfg).relative_bandwidth == 0.0
    both = ClusterOptions(bandwidth=2.0, relative_bandwidth=0.3).resolve(cfg)
    assert (both.bandwidth, both.relative_bandwidth) == (2.0, 0.3)
    assert ClusterOptions(relative_bandwidth=0).resolve(cfg).relative_bandwidth == 0.0
    assert ClusterOptions().resolve(ModelConfig(ndim=2, depth=2)).relative_bandwidth == 0.0
    assert not ClusterOptions(bandwidth=1, fg_threshold=0.5, min_size=0, spatial_radius=0,
                              coord_scale=0, relative_min_size=0).resolved  # still open


def test_coord_scale_comes_from_the_models_loss_settings():
    cfg = ModelConfig(ndim=2, depth=2, loss={"delta_v": 0.5, "delta_d": 1.5,
                                             "coord_scale": 0.25})
    assert ClusterOptions().resolve(cfg).coord_scale == 0.25
    assert ClusterOptions(coord_scale=0).resolve(cfg).coord_scale == 0.0  # for comparisons
    assert not ClusterOptions(bandwidth=1, fg_threshold=0.5, min_size=0,
                              spatial_radius=0).resolved  # the coordinate scale is open


def test_cluster_options_without_calibration_use_margins_and_defaults():
    from napari_shift_equivariance.clustering import estimate_bandwidth_from_margins

    cfg = ModelConfig(ndim=3, depth=1, factor=2, loss={"delta_v": 0.5, "delta_d": 3.0})
    got = ClusterOptions(scope="block").resolve(cfg)
    assert got.bandwidth == estimate_bandwidth_from_margins(0.5, 3.0)
    assert got.fg_threshold == 0.5 and got.min_size == DEFAULT_MIN_SIZE[3]
    assert got.spatial_radius == 0.0  # embeddings only
    assert got.relative_min_size == 0.0  # no relative size filter
    assert got.coord_scale == 0.0  # a model trained without coordinates
    assert got.block_shape is not None and len(got.block_shape) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"bandwidth": 0}, "bandwidth"), ({"bandwidth": float("nan")}, "bandwidth"),
    ({"bandwidth": "wide"}, "bandwidth"), ({"fg_threshold": 1.0}, "threshold"),
    ({"min_size": -1}, "min size"), ({"min_size": 2.5}, "min size"),
    ({"scope": "everywhere"}, "scope"), ({"backend": "cuda"}, "backend"),
    ({"block_shape": (8, 0)}, "block shape"), ({"spatial_radius": -1}, "spatial radius"),
    ({"spatial_radius": float("inf")}, "spatial radius"), ({"spatial_radius": "far"}, "spatial"),
    ({"coord_scale": -0.1}, "coordinate scale"), ({"coord_scale": "x"}, "coordinate scale"),
    ({"relative_min_size": 1.5}, "relative min size .* fraction"),
    ({"relative_min_size": -0.1}, "relative min size"),
    ({"relative_bandwidth": -0.2}, "relative bandwidth"),
    ({"relative_bandwidth": "wide"}, "relative bandwidth"),
])
def test_cluster_options_reject_bad_values(kwargs, match):
    with pytest.raises(NSEError, match=match):
        ClusterOptions(**kwargs)


def test_predict_options_validate():
    assert PredictOptions(tile=96).tile == (96,)
    for kwargs, match in (({"mode": "sloppy"}, "stitch mode"), ({"pad": "wrap"}, "pad"),
                          ({"batch_size": 0}, "batch size"), ({"amp": "fp8"}, "amp"),
                          ({"tile": (64, -1)}, "tile")):
        with pytest.raises(NSEError, match=match):
            PredictOptions(**kwargs)
    assert set(STITCH_MODES) == {"correct", "naive", "whole"}
    assert SCOPES[0] == "component"


def test_options_round_trip_and_pickle():
    c = ClusterOptions(bandwidth=2.0, scope="block", block_shape=(16, 32))
    assert ClusterOptions.from_dict(c.to_dict()) == c
    assert pickle.loads(pickle.dumps(c)) == c
    p = PredictOptions(mode="naive", tile=(60, 64), batch_size=4)
    assert PredictOptions.from_dict(p.to_dict()) == p
    assert p.replace(mode="correct").mode == "correct" and p.mode == "naive"
    with pytest.raises(NSEError, match="unknown"):
        ClusterOptions.from_dict({"seed": 3})
    with pytest.raises(AttributeError):  # frozen
        c.bandwidth = 3.0
