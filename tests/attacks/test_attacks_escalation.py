"""The attacks of ``standard``'s escalation: FAB-T, Square (ℓ∞, ℓ2 and ℓ1) and the decision-based
boundary search.

Oracles on linear models: for a multiclass linear classifier whose decision boundaries all pass
near the points (so the box does not bind), the smallest misclassifying perturbation in ℓp has
norm min_k (f_y − f_k) / ‖w_y − w_k‖_q (q the dual exponent): the misclassified set is the union
of the half-spaces {f_k ≥ f_y}. No attack may report less; the minimum-norm ones must get close.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from unionrobust.attacks.decision import BoundarySearch
from unionrobust.attacks.linearised import FAB
from unionrobust.attacks.registry import make_attack
from unionrobust.attacks.square import Square, meta_patch
from unionrobust.errors import UnionRobustError
from unionrobust.threats import L1, L2, Linf

FAST = settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
D, B, C = 16, 6, 4
DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}
THREAT = {"l2": L2, "linf": Linf, "l1": L1}


def multiclass_setup(linear_model, seed: int, spread: float = 0.02):
    """A C-class linear model whose pairwise boundaries all pass through x = 0.5, points near
    it labelled by the model, and the exact minimal ℓp norms per norm."""
    model = linear_model(dim=D, classes=C, seed=seed).double()
    with torch.no_grad():
        model.bias.copy_(-0.5 * model.weight.sum(dim=1))
    g = torch.Generator().manual_seed(seed + 7)
    x = 0.5 + spread * (2 * torch.rand(B, D, generator=g, dtype=torch.float64) - 1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.weight.detach()

    def exact(norm: str) -> torch.Tensor:
        gap = logits.gather(1, y[:, None]) - logits  # (B, C) ≥ 0
        diff = (w[y][:, None, :] - w[None, :, :]).norm(p=DUAL[norm], dim=2)  # (B, C)
        d = gap / diff.clamp_min(1e-300)
        d[torch.arange(B), y] = math.inf
        return d.amin(dim=1)

    return model, x, y, exact


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@FAST
@given(seed=st.integers(0, 10_000))
def test_fab_t_finds_the_exact_minimum_on_a_multiclass_linear_model(norm, seed, linear_model):
    model, x, y, exact = multiclass_setup(linear_model, seed)
    opt = exact(norm)
    # ball membership allows 1e-6 of absolute slack (float32 rounding): a point drawn within
    # ~1e-6 of a boundary (seed 2645, ℓ1) has no radius below its minimum that means anything
    assume(float(opt.min()) > 1e-4)
    # a radius below every minimum: every target pass runs on every point (later passes skip
    # the points broken within ε, as in AutoAttack)
    res = FAB(THREAT[norm](float(opt.min()) / 2), steps=30, n_targets=C - 1)(model, x, y)
    assert not bool(res.success.any())
    assert bool((res.norms >= opt * (1 - 1e-6)).all()), (res.norms / opt).tolist()
    assert bool((res.norms <= opt * 1.03).all()), (res.norms / opt).tolist()


def test_fab_t_uses_only_the_targets_it_is_given(linear_model):
    """With one target, FAB-T finds the distance to that target's boundary, not a closer one."""
    model, x, y, _ = multiclass_setup(linear_model, 3)
    with torch.no_grad():
        logits = model(x)
    target = logits.scatter(1, y[:, None], -math.inf).argmax(1)
    w = model.weight.detach()
    gap = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    pair = gap / (w[y] - w[target]).norm(dim=1)
    res = FAB(L2(10.0), steps=30, n_targets=1)(model, x, y)
    assert bool((res.norms >= pair * (1 - 1e-6)).all())
    assert bool((res.norms <= pair * 1.03).all())


def test_fab_t_early_stop_keeps_the_verdicts_at_eps(linear_model):
    model, x, y, exact = multiclass_setup(linear_model, 5)
    opt = exact("l2")
    eps = float(opt.median())
    full = FAB(L2(eps), steps=30, n_targets=C - 1)(model, x, y)
    fast = FAB(L2(eps), steps=30, n_targets=C - 1, early_stop=True)(model, x, y)
    assert torch.equal(full.success, fast.success)
    assert not bool(fast.success[opt > eps * (1 + 1e-6)].any())
    assert bool(fast.success[opt < eps / 1.05].all())


def test_fab_t_registry_defaults_are_autoattacks():
    a = make_attack("fab-t", "l2:2")
    assert isinstance(a, FAB)
    assert (a.steps, a.n_targets, a.restarts) == (100, 9, 1)
    assert (a.eta, a.beta, a.alpha_max) == (1.05, 0.9, 0.1)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: FAB(L2(1.0), n_targets=0), "n_targets"),
        (lambda: FAB(L2(1.0), n_targets=3, candidates=4), "not both"),
    ],
)
def test_bad_parameters_raise(build, match):
    with pytest.raises(UnionRobustError, match=match):
        build()


@pytest.mark.parametrize("norm,factor", [("linf", 1.5), ("l2", 2.0), ("l1", 3.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_square_breaks_what_is_within_its_budget_and_nothing_below(
    norm, factor, seed, linear_model
):
    """Margins within the budget (a factor above the exact minimum: random search, not
    optimisation) are broken; nothing closer than the exact minimum ever is."""
    model, x, y, exact = multiclass_setup(linear_model, seed)
    opt = exact(norm)
    xi = x.reshape(B, 1, 4, 4)
    threat = THREAT[norm](float(opt.max()) * factor)
    res = Square(threat, steps=300)(model, xi, y)
    assert bool(res.success.all())
    assert bool(threat.contains(res.x_adv - xi, xi).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    below = Square(THREAT[norm](float(opt.min()) * 0.99), steps=50)(model, xi, y)
    assert not bool(below.success.any())


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_square_near_miss_retries_on_a_linear_model(norm, linear_model):
    """A linear classifier with ε at the median of the exact minimal perturbations: the
    retries on every unbroken point (``near_miss=1``, side by side) break exactly what three
    restarts one after another break, at least what one run breaks, and never a point whose
    exact minimum exceeds ε."""
    model, x, y, exact = multiclass_setup(linear_model, 1)
    opt = exact(norm)
    xi = x.reshape(B, 1, 4, 4)
    eps = float(opt.median())
    threat = THREAT[norm](eps)
    one = Square(threat, steps=10)(model, xi, y)  # short runs: the retries matter
    three = Square(threat, steps=10, restarts=3)(model, xi, y)
    near = Square(threat, steps=10, restarts=3, near_miss=1.0, parallel=True)(model, xi, y)
    assert torch.equal(near.success, three.success)
    assert bool((near.success | ~one.success).all())
    assert int(near.success.sum()) > int(one.success.sum())
    assert not bool(near.success[opt > eps * (1 + 1e-4)].any())
    assert bool(threat.contains(near.x_adv - xi, xi).all())
    assert bool(((near.x_adv >= 0) & (near.x_adv <= 1)).all())


def test_square_defaults_are_autoattacks():
    a = make_attack("square", "l1:10")
    assert (a.steps, a.p_init, a.restarts) == (5000, 0.8, 1)


def test_l1_meta_patch_is_sparser_than_l2():
    x = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    p1, p2 = meta_patch(7, x, "l1"), meta_patch(7, x, "l2")
    assert float(p1.abs().sum()) == pytest.approx(1.0)
    assert float(p2.pow(2).sum()) == pytest.approx(1.0)
    # ℓ1's bumps put more of their mass on the centre coordinates
    top = lambda p: float(p.abs().flatten().topk(4).values.sum() / p.abs().sum())  # noqa: E731
    assert top(p1) > top(p2)


@pytest.mark.parametrize("norm,tol", [("l2", 1.05), ("l1", 1.15)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decision_search_from_noise_closes_in_on_the_exact_minimum(norm, tol, seed, linear_model):
    """Decisions only (blended-noise start): the median distance within a few per cent of the
    exact minimum, never below it."""
    model, x, y, exact = multiclass_setup(linear_model, seed)
    opt = exact(norm)
    threat = THREAT[norm](float(opt.min()) / 2)
    res = BoundarySearch(threat, start="noise", steps=30)(model, x, y)
    ratio = res.norms / opt
    assert bool((ratio >= 1 - 1e-6).all()), ratio.tolist()
    assert float(ratio.median()) <= tol, ratio.tolist()
    with torch.no_grad():
        assert bool((model(res.x_min).argmax(1) != y).all())


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_decision_search_counts_only_inside_the_ball(norm, linear_model):
    model, x, y, exact = multiclass_setup(linear_model, 4)
    opt = exact(norm)
    eps = float(opt.median())
    threat = THREAT[norm](eps)
    res = BoundarySearch(threat, steps=10)(model, x, y)
    assert bool(threat.contains(res.x_adv - x, x).all())
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert not bool(res.success[opt > eps * (1 + 1e-6)].any())
    assert bool(res.success[opt < eps / 1.05].all())
    assert torch.equal(res.x_adv[~res.success], x[~res.success])


def test_decision_search_starts_from_the_fab_t_point(linear_model):
    model, x, y, exact = multiclass_setup(linear_model, 6)
    opt = exact("l2")
    res = BoundarySearch(L2(float(opt.min()) / 2), start="fab-t", steps=0)(model, x, y)
    assert bool((res.norms <= opt * 1.03).all())


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: BoundarySearch(Linf(0.1)), "supports l2, l1"),
        (lambda: BoundarySearch(L2(1.0), start="boundary"), "start"),
        (lambda: BoundarySearch(L2(1.0), grad_queries=0), "grad_queries"),
        (lambda: make_attack("boundary-search", "l1:2", l1_fraction=2.0), "l1_fraction"),
    ],
)
def test_decision_search_bad_parameters_raise(build, match):
    with pytest.raises(UnionRobustError, match=match):
        build()


def test_seeded_normal_is_keyed_by_example():
    from unionrobust.rng import KeyedRandom

    batch = KeyedRandom(3, torch.arange(20)).seeded_normal(7, (5, 2))
    part = KeyedRandom(3, torch.arange(10, 15)).seeded_normal(7, (5, 2))
    assert torch.equal(part, batch[10:15])
    assert not torch.equal(batch, KeyedRandom(3, torch.arange(20)).seeded_normal(8, (5, 2)))
    assert not torch.equal(batch, KeyedRandom(4, torch.arange(20)).seeded_normal(7, (5, 2)))
