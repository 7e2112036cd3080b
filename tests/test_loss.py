import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_shift_equivariance.errors import NSEError
from napari_shift_equivariance.loss import (
    TrainingLoss,
    discriminative_loss,
    foreground_loss,
    total_loss,
)


def reference_loss(emb, labels, delta_v, delta_d, w_var, w_dist, w_reg, background, ignore):
    """Slow, loop-based discriminative loss (one instance and one pair at a time)."""
    out = {"var": [], "dist": [], "reg": []}
    for b in range(emb.shape[0]):
        e = emb[b].reshape(emb.shape[1], -1).double()
        lab = labels[b].reshape(-1)
        ids = [int(i) for i in torch.unique(lab)]
        if background == "ignore":
            ids = [i for i in ids if i != 0]
        if ignore is not None:
            ids = [i for i in ids if i != ignore]
        means = [e[:, lab == i].mean(dim=1) for i in ids]
        var = 0.0
        for i, mu in zip(ids, means):
            pts = e[:, lab == i]
            d = torch.sqrt(((pts - mu[:, None]) ** 2).sum(0))
            var = var + (torch.clamp(d - delta_v, min=0) ** 2).mean()
        var = var / len(ids) if ids else torch.tensor(0.0)
        dist, pairs = 0.0, 0
        for a, c in itertools.permutations(range(len(ids)), 2):
            d = torch.sqrt(((means[a] - means[c]) ** 2).sum())
            dist = dist + torch.clamp(2 * delta_d - d, min=0) ** 2
            pairs += 1
        dist = dist / pairs if pairs else torch.tensor(0.0)
        reg = sum(torch.sqrt((mu**2).sum()) for mu in means) / len(ids) if ids else 0.0
        out["var"].append(float(var))
        out["dist"].append(float(dist))
        out["reg"].append(float(reg))
    res = {k: float(np.mean(v)) for k, v in out.items()}
    res["total"] = w_var * res["var"] + w_dist * res["dist"] + w_reg * res["reg"]
    return res


def two_instances(distance, e=3):
    """Instance 1 on the left half at the origin, instance 2 on the right at ``distance``."""
    emb = torch.zeros(1, e, 4, 6)
    emb[0, 0, :, 3:] = distance
    labels = torch.zeros(1, 4, 6, dtype=torch.long)
    labels[0, :, :3] = 1
    labels[0, :, 3:] = 2
    return emb, labels


@pytest.mark.parametrize("distance", [1.0, 4.0, 7.0])
def test_two_constant_instances_known_values(distance):
    emb, labels = two_instances(distance)
    out = discriminative_loss(emb, labels, delta_v=0.5, delta_d=3.0)
    assert float(out["var"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out["dist"]) == pytest.approx(max(6.0 - distance, 0.0) ** 2, rel=1e-5)
    assert float(out["reg"]) == pytest.approx(distance / 2, rel=1e-5)
    expected = max(6.0 - distance, 0.0) ** 2 + 1e-3 * distance / 2
    assert float(out["total"]) == pytest.approx(expected, rel=1e-5)


def test_pull_term_known_value():
    # one instance, half its pixels at 0 and half at 2: mean 1, every pixel 1 from it
    emb = torch.zeros(1, 2, 2, 4)
    emb[0, 1, :, 2:] = 2.0
    labels = torch.ones(1, 2, 4, dtype=torch.long)
    out = discriminative_loss(emb, labels, delta_v=0.25)
    assert float(out["var"]) == pytest.approx(0.75**2, rel=1e-5)
    assert float(out["dist"]) == 0.0


def test_zero_loss_when_tight_and_far():
    emb, labels = two_instances(6.5)
    emb = emb + 0.1 * torch.randn_like(emb).clamp(-1, 1)  # within delta_v of the means
    out = discriminative_loss(emb, labels, delta_v=0.5, delta_d=3.0, w_reg=0.0)
    assert float(out["total"]) == 0.0


def test_gradient_finite_even_at_coincident_points():
    emb = torch.zeros(2, 4, 5, 5, requires_grad=True)  # all means equal, all distances 0
    labels = torch.randint(0, 4, (2, 5, 5))
    out = discriminative_loss(emb, labels, delta_v=0.0)
    out["total"].backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() == 0  # symmetric configuration: no preferred direction
    emb2 = torch.randn(2, 4, 5, 5, requires_grad=True)
    discriminative_loss(emb2, labels)["total"].backward()
    assert torch.isfinite(emb2.grad).all() and emb2.grad.abs().sum() > 0


def test_empty_and_single_instance_items():
    emb = torch.randn(3, 4, 6, 6, requires_grad=True)
    labels = torch.zeros(3, 6, 6, dtype=torch.long)  # item 0: background only
    labels[1, 2:4, 2:4] = 5  # item 1: one instance
    labels[2, :3] = 1  # item 2: two instances
    labels[2, 3:] = 2
    out = discriminative_loss(emb, labels)
    for v in out.values():
        assert torch.isfinite(v)
    ref = reference_loss(emb.detach(), labels, 0.5, 1.5, 1, 1, 1e-3, "ignore", None)
    assert out["dist"].item() == pytest.approx(ref["dist"], rel=1e-5)
    out["total"].backward()
    assert torch.isfinite(emb.grad).all()
    # an all-background batch still gives a zero loss that can be back-propagated
    z = discriminative_loss(emb, torch.zeros_like(labels))
    assert float(z["total"]) == 0.0
    z["total"].backward()


def test_label_permutation_invariance():
    torch.manual_seed(0)
    emb = torch.randn(2, 5, 8, 8)
    labels = torch.randint(0, 6, (2, 8, 8))
    perm = torch.tensor([0, 40, 3, 17, 2, 99])  # background stays 0, ids change and reorder
    a = discriminative_loss(emb, labels)
    b = discriminative_loss(emb, perm[labels])
    for k in a:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-5)


def test_ignore_index_pixels_do_not_matter():
    torch.manual_seed(1)
    emb = torch.randn(2, 4, 10, 10)
    labels = torch.randint(0, 5, (2, 10, 10))
    labels[:, :3] = -1
    out = discriminative_loss(emb, labels, ignore_index=-1, background="instance")
    emb2 = emb.clone()
    emb2[:, :, :3] = 100.0  # values under ignored pixels are irrelevant
    out2 = discriminative_loss(emb2, labels, ignore_index=-1, background="instance")
    cropped = discriminative_loss(emb[:, :, 3:], labels[:, 3:], background="instance")
    for k in out:
        assert float(out[k]) == pytest.approx(float(out2[k]), rel=1e-6)
        assert float(out[k]) == pytest.approx(float(cropped[k]), rel=1e-6)
    # and without ignore_index they do matter
    assert float(discriminative_loss(emb2, labels, background="instance")["total"]) != (
        pytest.approx(float(out["total"]))
    )


@pytest.mark.parametrize("background,ignore", [("ignore", None), ("instance", None),
                                               ("ignore", 3), ("instance", -1)])
def test_matches_reference_loop(background, ignore):
    torch.manual_seed(2)
    emb = torch.randn(3, 6, 9, 7) * 2
    labels = torch.randint(0, 7, (3, 9, 7))
    labels[0, 0] = -1
    kw = dict(delta_v=0.3, delta_d=1.5, w_var=1.0, w_dist=0.7, w_reg=0.01)
    out = discriminative_loss(emb, labels, background=background, ignore_index=ignore, **kw)
    ref = reference_loss(emb, labels, kw["delta_v"], kw["delta_d"], kw["w_var"], kw["w_dist"],
                         kw["w_reg"], background, ignore)
    for k in ("total", "var", "dist", "reg"):
        assert float(out[k]) == pytest.approx(ref[k], rel=1e-4), k


def test_background_modes_differ_and_3d_works():
    torch.manual_seed(3)
    emb = torch.randn(1, 3, 4, 5, 6)
    labels = torch.randint(0, 3, (1, 4, 5, 6))
    a = discriminative_loss(emb, labels, background="ignore")
    b = discriminative_loss(emb, labels, background="instance")
    assert float(a["dist"]) != pytest.approx(float(b["dist"]))


def test_bad_shapes_raise():
    with pytest.raises(NSEError):
        discriminative_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(NSEError):
        discriminative_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4), background="x")
    with pytest.raises(NSEError):
        TrainingLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_foreground_bce_and_ignore():
    torch.manual_seed(4)
    logits = torch.randn(2, 6, 6)
    labels = torch.randint(0, 3, (2, 6, 6))
    expected = F.binary_cross_entropy_with_logits(logits, (labels > 0).float())
    assert float(foreground_loss(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    labels_ig = labels.clone()
    labels_ig[:, :2] = -1
    got = foreground_loss(logits, labels_ig, ignore_index=-1)
    expected = F.binary_cross_entropy_with_logits(logits[:, 2:], (labels[:, 2:] > 0).float())
    assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_foreground_dice():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    perfect = (labels.float() * 2 - 1) * 50
    assert float(foreground_loss(perfect, labels, kind="dice")) == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert float(foreground_loss(wrong, labels, kind="dice")) > 0.9
    both = foreground_loss(wrong, labels, kind="bce+dice")
    assert float(both) == pytest.approx(
        float(foreground_loss(wrong, labels)) + float(foreground_loss(wrong, labels, kind="dice"))
    )
    with pytest.raises(NSEError):
        foreground_loss(perfect, labels, kind="focal")


def test_training_loss_splits_channels():
    torch.manual_seed(5)
    out = torch.randn(2, 5, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8))
    loss = TrainingLoss(w_fg=0.5)
    terms = loss(out, labels)
    disc = discriminative_loss(out[:, :4], labels)
    fg = foreground_loss(out[:, 4], labels)
    assert set(terms) == {"total", "var", "dist", "reg", "fg"}
    assert float(terms["fg"]) == pytest.approx(float(fg))
    assert float(terms["total"]) == pytest.approx(float(disc["total"]) + 0.5 * float(fg))
    terms["total"].backward()
    assert out.grad[:, 4].abs().sum() > 0 and out.grad[:, :4].abs().sum() > 0
    functional = total_loss(out, labels, w_fg=0.5)
    assert float(functional["total"]) == pytest.approx(float(terms["total"]))
    assert TrainingLoss.from_config(loss.config()).config() == loss.config()
    with pytest.raises(NSEError):
        total_loss(out, labels, delta_x=1.0)


def test_coordinates_are_centred_positions_on_the_first_channels():
    from napari_shift_equivariance.loss import with_coordinates

    emb = torch.zeros(1, 3, 3, 5)
    got = with_coordinates(emb, 0.5)
    assert torch.equal(got[0, 0, :, 0], torch.tensor([-0.5, 0.0, 0.5]))
    assert torch.equal(got[0, 1, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert (got[0, 2] == 0).all() and (emb == 0).all()
    assert with_coordinates(emb, 0.0) is emb
    with pytest.raises(NSEError, match="at least 2 embedding channels"):
        with_coordinates(torch.zeros(1, 1, 4, 4), 0.5)


def test_coordinate_loss_is_zero_for_offsets_that_point_at_each_centre():
    # two touching instances with equal embeddings: without coordinates the push term costs;
    # with them, outputs that cancel each pixel's offset from its centre cost nothing
    labels = torch.zeros(1, 8, 24, dtype=torch.long)
    labels[0, :, :12], labels[0, :, 12:] = 1, 2
    pos = torch.stack(torch.meshgrid(torch.arange(8.0) - 3.5, torch.arange(24.0) - 11.5,
                                     indexing="ij"))
    out = torch.zeros(1, 4, 8, 24)
    scale = 0.5
    for i in (1, 2):
        m = labels[0] == i
        centre = pos[:, m].mean(1)
        out[0, :2, m] = -scale * (pos[:, m] - centre[:, None])
    plain = TrainingLoss(w_fg=0.0)(out, labels)
    coords = TrainingLoss(w_fg=0.0, w_reg=0.0, coord_scale=scale)(out, labels)
    assert float(plain["var"]) > 0 and float(plain["dist"]) > 0
    assert float(coords["var"]) == pytest.approx(0.0, abs=1e-9)
    assert float(coords["dist"]) == 0.0  # centres 12 px apart: 6 units >= 2 * delta_d
    assert TrainingLoss.from_config(TrainingLoss(coord_scale=scale).config()).coord_scale == 0.5
    with pytest.raises(NSEError, match="coordinate scale"):
        TrainingLoss(coord_scale=-1.0)


def test_optimising_the_loss_separates_instances():
    torch.manual_seed(6)
    labels = torch.randint(1, 5, (1, 8, 8))
    emb = torch.nn.Parameter(0.01 * torch.randn(1, 8, 8, 8))
    opt = torch.optim.Adam([emb], lr=0.1)
    for _ in range(150):
        opt.zero_grad()
        discriminative_loss(emb, labels)["total"].backward()
        opt.step()
    out = discriminative_loss(emb, labels, w_reg=0.0)
    assert float(out["var"]) < 1e-3 and float(out["dist"]) < 1e-3


def test_half_precision_inputs_are_computed_in_float32():
    torch.manual_seed(7)
    emb = torch.randn(1, 4, 16, 16)
    labels = torch.randint(0, 4, (1, 16, 16))
    out = TrainingLoss()(torch.cat([emb, emb[:, :1]], 1).bfloat16(), labels)
    ref = TrainingLoss()(torch.cat([emb, emb[:, :1]], 1).bfloat16().float(), labels)
    assert out["total"].dtype == torch.float32
    assert out["total"].item() == pytest.approx(ref["total"].item(), rel=1e-6)
