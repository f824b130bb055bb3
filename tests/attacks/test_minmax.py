"""Min-max attack over domains (Wang et al. 2020, Algorithm 1)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unionrobust.attacks.minmax import (
    DomainMinMax,
    ModelEnsemble,
    TransformDomains,
    UniversalGroups,
    ensemble_attack,
    transform_attack,
    universal_attack,
)
from unionrobust.attacks.pgd import PGD
from unionrobust.attacks.transforms import make_transforms
from unionrobust.attacks.weighted import WeightRule
from unionrobust.errors import UnionRobustError
from unionrobust.reporting.plots import plot_weights
from unionrobust.threats import L1, L2, Linf, parse
from unionrobust.training.strategies import make_strategy


def small_net(seed: int, side: int = 6, classes: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * side * side, classes),
    )


def data(n: int = 8, side: int = 6, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, side, side, generator=g), torch.randint(0, classes, (n,), generator=g)


def model_state(m: nn.Module):
    return (
        {k: v.clone() for k, v in m.state_dict().items()},
        [mod.training for mod in m.modules()],
        [(p.requires_grad, p.grad) for p in m.parameters()],
    )


def assert_same_state(m: nn.Module, before) -> None:
    sd, modes, grads = before
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert [mod.training for mod in m.modules()] == modes
    assert [(p.requires_grad, p.grad) for p in m.parameters()] == grads


@pytest.mark.parametrize("threat", [Linf(0.05), L2(0.4), L1(2.0)])
@pytest.mark.parametrize("start", ["zero", "random"])
def test_one_domain_equals_pgd(threat, start):
    model = small_net(1).eval()
    x, y = data()
    kw = dict(steps=6, alpha=threat.default_alpha(6) * 0.7, start=start, loss="ce")
    ref = PGD(threat, seed=3, **kw)(model, x, y)
    for domains in (ModelEnsemble([model]), TransformDomains(model, "ori")):
        res = DomainMinMax(threat, seed=3, **kw)(domains, x, y)
        assert torch.equal(res.x_adv, ref.x_adv)
        assert torch.equal(res.success, ref.success)
        assert torch.allclose(res.weights, torch.ones_like(res.weights))


def two_linear_models(dim: int = 16):
    """Model A: very easy to fool along u_A, loss gradient 100x larger than B's; model B: needs a
    0.3 step along u_B (orthogonal). Label 0 everywhere, x0 = 0.5 (box never binds)."""
    u_a = torch.zeros(dim)
    u_a[0] = 1.0
    u_b = torch.zeros(dim)
    u_b[1] = 1.0

    def linear(u, scale, margin):
        m = nn.Linear(dim, 2)
        with torch.no_grad():
            m.weight.copy_(torch.stack([torch.zeros(dim), scale * u]))
            m.bias.copy_(torch.tensor([0.0, -scale * float(u @ torch.full((dim,), 0.5)) - margin]))
        return nn.Sequential(nn.Flatten(), m)

    return linear(u_a, 100.0, 1.0), linear(u_b, 1.0, 0.3)


def test_weights_move_to_the_hard_model_and_beat_the_average():
    easy, hard = two_linear_models()
    x = torch.full((6, 1, 4, 4), 0.5)
    y = torch.zeros(6, dtype=torch.int64)
    kw = dict(steps=40, alpha=0.05, loss="ce", w_lr=0.05, gamma=1.0)
    avg = ensemble_attack([easy, hard], x, y, L2(0.8), weights="uniform", **kw)
    mm = ensemble_attack([easy, hard], x, y, L2(0.8), weights="minmax", **kw)
    assert avg.metrics()["asr_all"] == 0.0  # the averaged step follows the easy model
    assert mm.metrics()["asr_all"] == 100.0
    assert bool((mm.weights[:, 1] > 0.9).all())  # the hard model gets the weight
    assert L2(0.8).contains(mm.x_adv - x, x).all()


def test_gamma_to_infinity_is_the_uniform_attack():
    models = [small_net(s) for s in (1, 2, 3)]
    x, y = data(10)
    kw = dict(steps=8, loss="ce", start="random", seed=1)
    uni = DomainMinMax(L2(0.5), weights="uniform", **kw)(ModelEnsemble(models), x, y)
    big = DomainMinMax(L2(0.5), gamma=1e7, w_lr=1e-7, **kw)(ModelEnsemble(models), x, y)
    small = DomainMinMax(L2(0.5), gamma=0.1, w_lr=1.0, **kw)(ModelEnsemble(models), x, y)
    assert torch.allclose(big.trajectory, torch.full_like(big.trajectory, 1 / 3), atol=1e-5)
    assert torch.allclose(big.x_adv, uni.x_adv, atol=1e-4)
    assert torch.equal(big.fooled, uni.fooled)
    # the learned weights do matter when γ is small (the comparison above can fail)
    assert (small.trajectory[-1] - 1 / 3).abs().max() > 0.1
    assert not torch.allclose(small.x_adv, uni.x_adv, atol=1e-4)


@settings(max_examples=12, deadline=None)
@given(
    k=st.integers(1, 4),
    gamma=st.floats(0.0, 20.0),
    w_lr=st.floats(0.0, 3.0),
    loss=st.sampled_from(["ce", "cw"]),
    seed=st.integers(0, 100),
)
def test_weights_stay_on_the_simplex(k, gamma, w_lr, loss, seed):
    models = [small_net(seed + i) for i in range(k)]
    x, y = data(4, seed=seed)
    res = DomainMinMax(Linf(0.1), steps=4, gamma=gamma, w_lr=w_lr, loss=loss, kappa=5.0)(
        ModelEnsemble(models), x, y
    )
    t = res.trajectory.double()
    assert t.shape == (5, 4, k)
    assert bool((t >= 0).all())
    assert torch.allclose(t.sum(dim=2), torch.ones(5, 4, dtype=torch.float64), atol=1e-6)


def test_fixed_weights_never_change_and_validate():
    models = [small_net(1), small_net(2)]
    x, y = data(4)
    res = DomainMinMax(Linf(0.1), steps=3, weights=[3, 1])(ModelEnsemble(models), x, y)
    assert torch.allclose(res.trajectory, torch.tensor([0.75, 0.25]).expand_as(res.trajectory))
    with pytest.raises(UnionRobustError, match="fixed weights"):
        DomainMinMax(Linf(0.1), weights=[-1, 2])
    with pytest.raises(UnionRobustError, match="2 domains"):
        DomainMinMax(Linf(0.1), weights=[1, 1, 1])(ModelEnsemble(models), x, y)
    with pytest.raises(UnionRobustError, match="weights must be one of"):
        DomainMinMax(Linf(0.1), weights="avg")


@pytest.mark.parametrize("threat", [Linf(0.1), L2(0.6), L1(3.0)])
def test_outputs_valid_model_and_input_untouched_deterministic(threat):
    models = [small_net(1).train(), small_net(2)]
    x, y = data(8)
    x0 = x.clone()
    states = [model_state(m) for m in models]
    kw = dict(steps=4, start="random", seed=5)
    runs = [
        lambda: DomainMinMax(threat, **kw)(ModelEnsemble(models), x, y),
        lambda: DomainMinMax(threat, **kw)(UniversalGroups(models[0], 4), x, y),
        lambda: DomainMinMax(threat, **kw)(
            TransformDomains(models[1], make_transforms("ori,flh,rot,crop", random=True)), x, y
        ),
    ]
    for run in runs:
        a, b = run(), run()
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.trajectory, b.trajectory)
        assert a.x_adv.min() >= 0 and a.x_adv.max() <= 1
        assert threat.contains(a.x_adv - x, x).all()
    assert torch.equal(x, x0)
    for m, s in zip(models, states, strict=True):
        assert_same_state(m, s)


def test_universal_shares_one_perturbation_per_group():
    model = small_net(4)
    x, y = data(12)
    res = universal_attack(model, x, y, Linf(0.2), group_size=3, steps=5, start="random")
    assert res.delta.shape == (4, 1, 6, 6) and res.fooled.shape == (4, 3)
    assert Linf(0.2).norm(res.delta).max() <= 0.2 + 1e-6
    expect = (x.reshape(4, 3, 1, 6, 6) + res.delta[:, None]).clamp(0, 1).reshape(x.shape)
    assert torch.equal(res.x_adv, expect)
    # ASR_gp counts a group only if every member is fooled
    with torch.no_grad():
        fooled = (model.eval()(res.x_adv).argmax(1) != y).reshape(4, 3)
    assert torch.equal(fooled, res.fooled)
    assert res.metrics()["asr_gp"] == pytest.approx(100 * fooled.all(1).double().mean().item())
    with pytest.raises(UnionRobustError, match="multiple of the group size"):
        universal_attack(model, x[:5], y[:5], Linf(0.2), group_size=3)


def test_universal_weights_go_to_the_hard_input():
    """Two inputs share δ; on a linear model the one with the larger clean margin is harder, so
    its weight must grow (with the sign of eq. 14 flipped it would go to the easy one)."""
    dim = 16
    lin = nn.Linear(dim, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(dim), torch.ones(dim)]))
        lin.bias.copy_(torch.tensor([9.0, 0.0]))  # z1 - z0 = sum(x) - 9
    model = nn.Sequential(nn.Flatten(), lin)
    x = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.3)])  # easy, hard
    y = torch.tensor([0, 0])
    res = universal_attack(
        model, x, y, Linf(0.1), 2, steps=10, alpha=0.01, loss="ce", w_lr=0.5, gamma=1.0
    )
    assert res.trajectory[-1, 0, 1] > 0.6
    assert bool((res.trajectory[1:, 0, 1] >= res.trajectory[1:, 0, 0]).all())


def test_transform_domains_and_plot(tmp_path):
    model = small_net(2)
    x, y = data(6)
    res = transform_attack(model, x, y, L2(1.0), "ori, flh, flv, bri, gam, crop, rot", steps=3)
    assert res.labels == ["ori", "flh", "flv", "bri", "gam", "crop", "rot"]
    assert res.fooled.shape == (6, 7)
    out = tmp_path / "w.png"
    plot_weights(res, out, title="t")
    assert out.stat().st_size > 1000
    with pytest.raises(UnionRobustError, match="unknown transformation"):
        make_transforms("ori, spin")


def test_rejects_bad_input():
    model = small_net(1)
    x, y = data(4)
    with pytest.raises(UnionRobustError, match=r"\[0, 1\]"):
        DomainMinMax(Linf(0.1))(ModelEnsemble([model]), x + 2, y)
    with pytest.raises(UnionRobustError, match="labels"):
        DomainMinMax(Linf(0.1))(ModelEnsemble([model]), x, y + 10)
    with pytest.raises(UnionRobustError, match="non-empty"):
        ModelEnsemble([])
    with pytest.raises(UnionRobustError, match="one threat model"):
        DomainMinMax(Linf(0.1) | L2(1.0))


# -- one core for the attack and min-max training (attacks/weighted.py) ------------------------


@pytest.mark.parametrize("spec", ["linf:0.1", "l2:0.6", "l1:3"])
@pytest.mark.parametrize("start", ["zero", "random"])
def test_minmax_training_step_equals_the_attack_step(spec, start):
    """The min-max training's inner maximisation and the min-max attack, on the same inputs and
    seed, take the same steps: with one member, the training's adversarial input is the attack's
    last iterate (same init and step counters, same step rule, same frozen model). The two copies
    this replaced drew their starts and steps from different counters, kept different iterates
    and disagreed on the weight sign; this test fails on any such divergence."""
    model = small_net(1).train()
    x, y = data(8)
    ids = torch.arange(100, 108)
    strat = make_strategy("minmax", spec, steps=5, start=start, gamma=2.0, w_lr=0.1)
    advs, w = strat.ampgd(model, x, y, ids, seed=11)
    attack = DomainMinMax(
        parse(spec)[0], steps=5, alpha=strat.member_alpha(0), loss="ce", start=start, seed=11,
        target="worst", order="simultaneous",
    )  # fmt: skip
    res = attack(ModelEnsemble([model]), x, y, ids)
    assert torch.equal(advs[0], res.last)
    assert torch.equal(w, torch.ones_like(w))
    assert model.training  # both restore the model


def test_weight_step_sign_is_the_papers_problem():
    """Eq. 14 with φ = −ℓ (problem 4, attack: the hardest domain = the lowest loss gets the
    weight) and φ = +ℓ (problem 15, training: the highest loss gets it); mirror images."""
    w = torch.full((3, 2), 0.5)
    loss = torch.tensor([[1.0, 2.0], [0.5, 0.1], [3.0, 3.0]])
    attack = WeightRule(0.1, 1.0, "all").step(w, loss)
    train = WeightRule(0.1, 1.0, "worst").step(w, loss)
    assert bool((attack[:2].argmax(1) == loss[:2].argmin(1)).all())
    assert bool((train[:2].argmax(1) == loss[:2].argmax(1)).all())
    assert torch.equal(attack, WeightRule(0.1, 1.0, "worst").step(w, -loss))
    assert torch.equal(attack[2], w[2]) and torch.equal(train[2], w[2])
    with pytest.raises(UnionRobustError, match="target"):
        WeightRule(0.1, 1.0, "best")


def test_two_member_training_weights_follow_the_attack_core():
    """K = 2 ℓ∞ members (a union lists each ball once): sign steps do not depend on the
    weights, so each member's input is the K = 1 attack's last iterate for its own ball (zero
    start: no random draws differ), and the weights (eq. 14, target "worst") favour the larger
    ball, whose loss is higher."""
    model = small_net(2)
    x, y = data(6)
    strat = make_strategy("minmax", "linf:0.1, linf:0.05", steps=4, start="zero", gamma=1.0)
    advs, w = strat.ampgd(model, x, y, None, seed=3)
    for i, spec in enumerate(("linf:0.1", "linf:0.05")):
        res = DomainMinMax(
            parse(spec)[0], steps=4, alpha=strat.member_alpha(i), loss="ce", seed=3,
            target="worst", order="simultaneous",
        )(ModelEnsemble([model]), x, y)  # fmt: skip
        assert torch.equal(advs[i], res.last)
    assert torch.allclose(w.sum(dim=1), torch.ones(w.shape[0], dtype=w.dtype))
    assert bool((w[:, 0] > w[:, 1]).all())
