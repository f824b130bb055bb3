"""Affine attacks (Tramèr & Boneh 2019 §2.5): reductions at β ∈ {0, 1}, validity, Claim 3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unionrobust.attacks.affine import AffineLp, AffineSpatial, affine_contains
from unionrobust.attacks.pgd import PGD
from unionrobust.attacks.spatial import WorstOfK
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L1, L2, Linf, RotationTranslation


def net(seed: int = 0, side: int = 8, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * side * side, classes)
    )


def data(n: int = 6, side: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("start", ["zero", "random"])
@pytest.mark.parametrize("pair", [(Linf(0.05), L1(2.0)), (L2(0.5), Linf(0.03))])
def test_affine_lp_at_beta_0_and_1_is_the_single_attack(pair, start):
    s1, s2 = pair
    model = net(1)
    x, y = data()
    kw = dict(steps=5, start=start, seed=4, loss="ce")
    for beta, single in ((1.0, s1), (0.0, s2)):
        aff = AffineLp(s1, s2, betas=[beta], alpha=(0.02, 0.3), **kw)(model, x, y)
        alpha = 0.02 if single is s1 else 0.3
        ref = PGD(single, alpha=alpha, **kw)(model, x, y)
        assert torch.equal(aff.x_adv, ref.x_adv)
        assert torch.equal(aff.success, ref.success)


def test_affine_spatial_at_beta_0_and_1_is_the_single_attack():
    model = net(2)
    x, y = data(5)
    lp, rt = Linf(0.05), RotationTranslation(30, 3)
    a0 = AffineSpatial(lp, rt, betas=[1.0], k=3, steps=4, seed=2, shrink=False)(model, x, y)
    p0 = PGD(lp, steps=4, seed=2)(model, x, y)
    assert torch.equal(a0.x_adv, p0.x_adv)
    for shrink in (False, True):
        a1 = AffineSpatial(lp, rt, betas=[0.0], k=3, steps=4, seed=2, shrink=shrink)(model, x, y)
        w1 = WorstOfK(rt, k=3, seed=2, shrink=shrink)(model, x, y)
        assert torch.equal(a1.x_adv, w1.x_adv)
        assert torch.equal(a1.success, w1.success)
        assert torch.equal(a1.parts[0], w1.params)


@pytest.mark.parametrize("draw", [False, True])
def test_outputs_decompose_inside_scaled_budgets(draw):
    model = net(3).train()
    x, y = data(8)
    x0 = x.clone()
    betas = (0.0, 0.3, 0.6, 1.0)
    for atk in (
        AffineLp(Linf(0.06), L1(3.0), betas=betas, steps=6, draw=draw, start="random"),
        AffineSpatial(Linf(0.06), RotationTranslation(30, 3), betas=betas, k=2, steps=3, draw=draw),
    ):
        res = atk(model, x, y)
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        assert affine_contains(res, x, atk).all()
        again = atk(model, x, y)
        assert torch.equal(res.x_adv, again.x_adv)
    assert torch.equal(x, x0) and model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_affine_contains_catches_a_budget_violation():
    model = net(4)
    x, y = data(6)
    atk = AffineLp(Linf(0.06), L1(3.0), betas=[0.5], steps=6)
    res = atk(model, x, y)
    moved = ~torch.isnan(res.beta)
    assert moved.any()
    res.beta = torch.where(moved, torch.full_like(res.beta, 0.01), res.beta)  # claims β·ε∞ tiny
    assert not affine_contains(res, x, atk)[moved].any()


def binary_linear(dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(dim), w]))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin), w


@pytest.mark.parametrize("seed", [0, 2])
def test_claim3_affine_lp_never_beats_the_union_on_linear_models(seed):
    """Binary linear f: the best affine perturbation moves the margin by
    β·ε∞‖w‖1 + (1−β)·ε1‖w‖∞ <= max(ε∞‖w‖1, ε1‖w‖∞), the union's best (box slack: x = 0.5)."""
    dim, e_inf, e_1 = 16, 0.05, 0.2
    model, w = binary_linear(dim, seed)
    reach = max(e_inf * w.abs().sum().item(), e_1 * w.abs().max().item())
    # margins spread around the union's reach: labels 0 with z1 - z0 = s·w - b' < 0
    n = 16
    offsets = torch.linspace(-2.0, -0.2, n) * reach  # clean margins, beyond the sum of reaches
    with torch.no_grad():  # z1 - z0 = w·(x - 0.5): x = 0.5 + offset·w/‖w‖² has margin -offset
        model[1].bias.copy_(torch.tensor([0.0, -0.5 * w.sum().item()]))
    y = torch.zeros(n, dtype=torch.int64)
    x = (0.5 + (offsets.reshape(n, 1) * w / w.square().sum()).reshape(n, 1, 4, 4)).clamp(0, 1)
    assert x.min() > 0.25 and x.max() < 0.75  # the box never binds
    margin = -(model(x)[:, 1] - model(x)[:, 0]).detach()
    union_ok = margin < reach * (1 - 1e-3)  # analytic: the union breaks these
    atk = AffineLp(Linf(e_inf), L1(e_1), betas=(0.0, 0.5, 1.0), steps=25, shrink=False)
    res = atk(model, x, y)
    assert affine_contains(res, x, atk).all()
    # never stronger than the union ...
    assert not (res.success & (margin > reach * (1 + 1e-3))).any()
    # ... and as strong where the union's margin is clearly reachable
    assert res.success[margin < reach * 0.9].all()
    assert union_ok.any() and (~union_ok).any()


def test_bad_arguments():
    with pytest.raises(UnionRobustError, match="beta must lie"):
        AffineLp(Linf(0.1), L1(1.0), betas=[1.5])
    with pytest.raises(UnionRobustError, match="additive"):
        AffineLp(Linf(0.1), RotationTranslation())
    with pytest.raises(UnionRobustError, match="RotationTranslation"):
        AffineSpatial(Linf(0.1), L1(1.0))
