"""Rotation-translation threat, grid and worst-of-k attacks, and their use in unions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _helpers import CountingModel
from unionrobust.attacks.registry import make_attack
from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.errors import UnionRobustError
from unionrobust.threats import Linf, RotationTranslation, parse
from unionrobust.threats.spatial import rotate_translate

SIDE = 12


def noise_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, SIDE, SIDE, generator=g)
    x[..., :2, :] = 0  # a dark frame, so translations lose little content
    x[..., -2:, :] = 0
    x[..., :, :2] = 0
    x[..., :, -2:] = 0
    return x


class Template(nn.Module):
    """Class 1 iff cos(x, template) >= tau; logit gap scaled by 100 (the loss grows with cos)."""

    def __init__(self, template: torch.Tensor, tau: float) -> None:
        super().__init__()
        self.register_buffer("u", template.reshape(-1) / template.norm())
        self.tau = tau
        self.lin = nn.Linear(1, 1)  # a parameter, for the untouched-model check

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        cos = flat @ self.u / flat.norm(dim=1).clamp_min(1e-12)
        gap = 100 * (cos - self.tau)
        return torch.stack([torch.zeros_like(gap), gap], dim=1) + 0 * self.lin.bias


def test_rotate_translate_matches_exact_ops():
    x = torch.rand(3, 2, 7, 7)
    assert torch.equal(rotate_translate(x, torch.zeros(3)), x)
    r90 = rotate_translate(x, torch.tensor([90.0, 0, 0]))
    assert torch.allclose(r90, torch.rot90(x, -1, (2, 3)), atol=1e-5)
    shifted = rotate_translate(x, torch.tensor([0.0, 2.0, -1.0]))
    ref = torch.zeros_like(x)
    ref[..., :-1, 2:] = x[..., 1:, :-2]
    assert torch.allclose(shifted, ref, atol=1e-5)


def test_spec_parse_and_scaling():
    u = parse("linf:0.3, rt:30:3")
    assert isinstance(u[1], RotationTranslation) and u.spec == "linf:0.3, rt:30:3"
    assert parse("rt:20")[0].spec == "rt:20:2"
    assert parse(u[1].spec)[0] == u[1]
    half = u[1].scaled(0.5)
    assert (half.max_rot, half.max_trans) == (15.0, 1.5)
    assert u[1].scaled(0.0) is None
    assert u[1].with_size(10).spec == "rt:10:1"
    assert u[1].grid().shape == (775, 3)
    with pytest.raises(UnionRobustError, match="rt:30:3"):
        parse("rt:30:3:1")
    with pytest.raises(UnionRobustError, match="searched"):
        u[1].project(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


def worst_point_model(theta_star: torch.Tensor, x0: torch.Tensor, rt: RotationTranslation):
    """A model fooled only at the lattice point θ* for x0 (tau between the best and the
    second-best cosine over the lattice)."""
    u = rotate_translate(x0, theta_star)
    g = rt.grid()
    cands = rotate_translate(x0.expand(g.shape[0], -1, -1, -1), g).reshape(g.shape[0], -1)
    cos = cands @ u.reshape(-1) / (cands.norm(dim=1) * u.norm())
    top = cos.topk(2).values
    assert top[0] > 0.9999 and top[1] < top[0] - 1e-3  # θ* is the unique best point
    return Template(u, float((top[0] + top[1]) / 2))


@pytest.mark.parametrize("shrink", [True, False])
def test_grid_attack_finds_the_worst_grid_point(shrink):
    rt = RotationTranslation(30, 3)
    theta_star = torch.tensor([-16.0, 1.5, -3.0], dtype=torch.float64)
    assert (rt.grid() == theta_star).all(dim=1).any()
    x0 = noise_images(1, seed=4)
    model = worst_point_model(theta_star, x0, rt)
    x = torch.cat([x0, noise_images(2, seed=9)])
    y = torch.zeros(3, dtype=torch.int64)
    res = GridAttack(rt, shrink=shrink, max_batch=500)(model, x, y)
    assert res.success.tolist() == [True, False, False]
    assert torch.equal(res.params[0], theta_star)
    assert torch.allclose(res.x_adv[0], rotate_translate(x0, theta_star)[0].clamp(0, 1))
    # every returned input is re-checked by the threat, with and without the recorded θ
    assert rt.contains(res.x_adv - x, x).all()
    assert rt.contains(res.x_adv - x, x, params=res.params).all()
    if not shrink:  # the loss-maximising point for the robust rows too: brute force agrees
        g = rt.grid()
        for i in (1, 2):
            xs = rotate_translate(x[i : i + 1].expand(g.shape[0], -1, -1, -1), g)
            loss = nn.functional.cross_entropy(
                model(xs), y[:1].expand(g.shape[0]), reduction="none"
            )
            assert torch.allclose(res.loss[i], loss.max())


def test_contains_rejects_non_lattice_and_out_of_bounds():
    rt = RotationTranslation(30, 3)
    x = noise_images(2)
    xa = rotate_translate(x, torch.tensor([7.3, 0.4, 0.0]))  # off the lattice
    assert not rt.contains(xa - x, x).any()
    p = torch.tensor([[7.3, 0.4, 0.0]] * 2)
    assert rt.contains(xa - x, x, params=p).all()
    far = torch.tensor([[45.0, 0.0, 0.0]] * 2)
    xf = rotate_translate(x, far)
    assert not rt.contains(xf - x, x, params=far).any()
    assert not rt.contains(xa * 0.5 - x, x, params=p).any()
    assert rt.contains(torch.zeros_like(x), x).all()


def test_shrinking_gives_the_same_verdicts_with_fewer_forwards():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 3))
    x = noise_images(6, seed=2)
    y = net(x).argmax(1)  # clean-correct everywhere
    rt = RotationTranslation(20, 2, n_rot=9, n_trans=3)
    a, b = CountingModel(net), CountingModel(net)
    r1 = GridAttack(rt, shrink=True, max_batch=12)(a, x, y)
    r2 = GridAttack(rt, shrink=False, max_batch=12)(b, x, y)
    assert torch.equal(r1.success, r2.success)
    assert r1.success.any()
    assert sum(a.sizes) < sum(b.sizes)


def test_worst_of_k_deterministic_batch_independent_and_model_untouched():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 3), nn.Dropout(0.2)).train()
    x = noise_images(5, seed=3)
    x_before = x.clone()
    y = torch.tensor([0, 1, 2, 0, 1])
    flags = [p.requires_grad for p in net.parameters()]
    rt = RotationTranslation(30, 3)
    atk = WorstOfK(rt, k=4, seed=7)
    r1, r2 = atk(net, x, y), atk(net, x, y)
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.params, r2.params)
    part = atk(net, x[2:], y[2:], example_ids=torch.arange(2, 5))
    assert torch.equal(part.params, r1.params[2:])
    assert r1.x_adv.min() >= 0 and r1.x_adv.max() <= 1
    assert rt.contains(r1.x_adv - x, x).all()
    assert torch.equal(x, x_before)
    assert net.training and [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert WorstOfK(rt, k=4, seed=8)(net, x, y).params.ne(r1.params).any()


def test_union_with_lp_member_in_evaluation_and_registry():
    from unionrobust.evaluation.engine import evaluate
    from unionrobust.evaluation.suites import get_suite

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 3))
    x = noise_images(8, seed=5)
    y = net(x).argmax(1)
    suite = get_suite("quick", "linf:0.05, rt:10:1")
    assert [e.attack for e in suite.entries] == ["pgd", "spatial-grid"]
    paper = get_suite("msd-paper", "rt:30:3, l2:2")
    assert [(e.threat_index, e.attack) for e in paper.entries] == [(0, "spatial-grid"), (1, "pgd")]
    assert [e.attack for e in get_suite("standard", "rt:30:3").entries] == ["spatial-grid"]
    report = evaluate(net, x, y, "linf:0.05, rt:10:1", suite="quick", progress=False)
    acc = report.per_threat_accuracy
    assert set(acc) == {"linf:0.05", "rt:10:1"}
    # the engine's independent re-check accepted the grid attack's outputs
    direct = GridAttack(RotationTranslation(10, 1))(net, x, y)
    assert acc["rt:10:1"] == pytest.approx(1 - direct.success.double().mean().item())
    assert 0 < acc["rt:10:1"] < 1 and report.rejected == [0, 0]
    assert isinstance(make_attack("spatial-grid", "rt:30:3"), GridAttack)
    both = make_attack("pgd", "linf:0.05, rt:10:1", steps=3)  # rt members get the grid attack
    assert isinstance(both.attacks[1], GridAttack)
    res = both(net, x, y)
    assert (parse("linf:0.05, rt:10:1").contains(res.x_adv - x, x) | ~res.success).all()
    with pytest.raises(UnionRobustError, match="rotation-translation"):
        GridAttack(Linf(0.1))


def test_worst_of_k_training_through_max_strategy():
    from unionrobust.training.strategies import make_strategy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 3)).train()
    x = noise_images(4, seed=6)
    y = torch.tensor([0, 1, 2, 0])
    strat = make_strategy("max", "linf:0.05, rt:30:3", steps=3)
    out = strat(net, x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and net[1].weight.grad is not None
    assert set(out.stats) == {"won_linf", "won_rt"}
