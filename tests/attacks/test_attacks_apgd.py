"""Auto-PGD (ℓ∞, ℓ2, ℓ1 "Mind the box"): contract, determinism, errors, analytic oracles and
strength against PGD."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from _helpers import CountingModel
from unionrobust.attacks.apgd import APGD, large_eps_stages, to_surface
from unionrobust.attacks.apgd_rules import L1SparsityRule, StepSizeRule, checkpoints
from unionrobust.attacks.pgd import PGD
from unionrobust.errors import UnionRobustError
from unionrobust.losses import cw_margin
from unionrobust.threats import L1, L2, Linf

FIXTURE_OK = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _threat(norm: str, eps: float):
    return {"linf": Linf, "l2": L2, "l1": L1, "l1-large": L1}[norm](eps)


def _large(norm: str) -> dict:
    """APGD keywords of a variant: "l1-large" is ℓ1 with the large-ε schedule."""
    return {"large_eps": True} if norm == "l1-large" else {}


VARIANTS = ["linf", "l2", "l1", "l1-large"]


def _predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Labels the model gets right, so that the attack has work to do (model left in its mode)."""
    was = model.training
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    model.train(was)
    return y


# -- the schedule ------------------------------------------------------------------------------


def test_checkpoints_follow_the_paper_recursion():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020 §3.2), w = ⌈pN⌉
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert checkpoints(1) == [1]
    assert all(1 <= w <= n for n in (1, 3, 10, 37) for w in checkpoints(n))


def test_large_eps_stages_follow_autoattack():
    # Croce & Hein 2021 / AutoAttack use_largereps: ⌈0.3N⌉ at 3ε, ⌈0.3N⌉ at 2ε, the rest at ε
    assert large_eps_stages(100) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert large_eps_stages(10) == [(3.0, 3), (2.0, 3), (1.0, 4)]
    assert large_eps_stages(7) == [(3.0, 3), (2.0, 3), (1.0, 1)]
    assert large_eps_stages(3) == [(3.0, 1), (2.0, 1), (1.0, 1)]
    assert large_eps_stages(2) == [(1.0, 2)]  # too few steps for three stages
    assert all(sum(n for _, n in large_eps_stages(s)) == s for s in range(1, 60))


def test_l1_rule_warm_start_takes_the_sparsity_of_the_start():
    x = torch.full((2, 100), 0.5)
    rule = L1SparsityRule(L1(5.0), 100, x, sparsity=0.2)
    delta = torch.zeros(2, 100)
    delta[0, :30] = 0.1
    delta[1, :3] = 0.1
    rule.begin(torch.zeros(2), delta)
    assert rule.k.tolist() == [20, 2] and rule.kmax == 20
    assert rule.sparsity_old.tolist() == [30.0, 3.0]


def test_l1_rule_shrinks_k_when_the_best_point_stalls_at_the_smallest_step():
    x = torch.full((2, 100), 0.5)
    rule = L1SparsityRule(L1(5.0), 100, x, sparsity=0.2)
    rule.begin(torch.zeros(2))
    delta = torch.zeros(2, 100)
    delta[:, :30] = 0.1
    assert rule.checkpoint(4, torch.tensor([1.0, 1.0]), delta).tolist() == [True, True]
    assert rule.k.tolist() == [20, 20]
    rule.eta = torch.tensor([0.5, 5.0])  # row 0's η at its floor ε/10
    # f_max stalled for both rows, whose x_max keeps its sparsity: only row 0, out of step
    # size to shrink, shrinks k by 1.5 and restarts from x_max; row 1 shrinks η as usual
    restart = rule.checkpoint(8, torch.tensor([1.0, 1.0]), delta)
    assert restart.tolist() == [True, False]
    assert rule.k.tolist() == [13, 20]
    assert torch.allclose(rule.eta, torch.tensor([0.5, 5.0 / 1.5]))
    ks = []
    for t in range(12, 32, 4):  # stalled ever since: row 0's k = ⌊k/1.5⌋ down to 1
        rule.checkpoint(t, torch.tensor([1.0, 1.0]), delta)
        ks.append(rule.k[0].item())
    assert ks == [8, 5, 3, 2, 1]
    assert not rule.checkpoint(32, torch.tensor([1.0, 1.0]), delta)[0]  # k = 1: no restart
    assert rule.k.tolist()[0] == 1 and rule.k.tolist()[1] < 20  # row 1's η reached its floor
    rule.checkpoint(36, torch.tensor([2.0, 1.0]), delta)  # f_max rose: k follows x_max again
    assert rule.k.tolist()[0] == 20


def test_step_size_rule_conditions():
    x = torch.zeros(3, 4)
    rule = StepSizeRule(Linf(0.1), 100, x, rho=0.75, momentum=0.75)
    rule.begin(torch.zeros(3))
    # 22 steps: row 0 rose 22 times (keeps η), row 1 rose 10 times (cond. 1), row 2 rose 22
    # times but is checked for cond. 2 at the next checkpoint
    for i in range(22):
        rule.observe(torch.tensor([True, i < 10, True]))
    assert rule.checkpoint(21, torch.ones(3), x) is None
    halve = rule.checkpoint(22, torch.tensor([1.0, 1.0, 1.0]), x)
    assert halve.tolist() == [False, True, False]
    assert torch.allclose(rule.eta, torch.tensor([0.2, 0.1, 0.2]))
    for _ in range(19):
        rule.observe(torch.tensor([True, True, True]))
    # f_max did not improve for row 2 and its η was not halved last time: cond. 2
    halve = rule.checkpoint(41, torch.tensor([2.0, 2.0, 1.0]), x)
    assert halve.tolist() == [False, False, True]
    assert torch.allclose(rule.eta, torch.tensor([0.2, 0.1, 0.1]))


def test_l1_rule_adapts_sparsity_and_step():
    x = torch.full((2, 100), 0.5)
    rule = L1SparsityRule(L1(5.0), 100, x, sparsity=0.2)
    assert rule.k.tolist() == [20, 20] and rule.every == 4
    delta = torch.zeros(2, 100)
    delta[0, :30] = 0.1  # sparsity fell from 100 to 30: reset η, restart
    delta[1, :99] = 0.01  # sparsity 99 ≥ 0.95·100: shrink η
    reset = rule.checkpoint(4, torch.zeros(2), delta)
    assert reset.tolist() == [True, False]
    assert torch.allclose(rule.eta, torch.tensor([5.0, 5.0 / 1.5]))
    assert rule.k.tolist() == [20, 66] and rule.kmax == 66
    assert rule.checkpoint(5, torch.zeros(2), delta) is None


# -- the attack contract -----------------------------------------------------------------------


@FIXTURE_OK
@given(
    norm=st.sampled_from(VARIANTS),
    eps=st.floats(0.01, 3.0),
    loss=st.sampled_from(["ce", "dlr", "dlr-targeted", "cw"]),
    start=st.sampled_from(["random", "surface"]),
)
def test_outputs_in_box_and_ball(tiny_cnn, toy_images, norm, eps, loss, start):
    if norm == "linf":
        eps = min(eps, 1.0)
    model = tiny_cnn()
    x, y = toy_images(6)
    y[:4] = _predicted(model, x)[:4]
    threat = _threat(norm, eps)
    attack = APGD(threat, steps=6, restarts=2, loss=loss, n_targets=2, start=start, **_large(norm))
    res = attack(model, x, y)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert threat.contains(res.x_adv - x, x).all()
    with torch.no_grad():
        pred = model.eval()(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_model_and_inputs_untouched(tiny_cnn, toy_images, norm):
    model = tiny_cnn()
    x, _ = toy_images(5)
    y = _predicted(model, x)
    model.train()
    model.net[1].eval()  # a mixed mode must come back as it was
    model.net[0].weight.requires_grad_(False)
    marker = torch.full_like(model.net[5].weight, 3.0)
    model.net[5].weight.grad = marker.clone()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x0, y0 = x.clone(), y.clone()
    APGD(_threat(norm, 0.5), steps=5, restarts=2, loss="dlr")(model, x, y)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("norm", VARIANTS)
def test_same_seed_same_result_other_seed_differs(tiny_cnn, toy_images, norm):
    model = tiny_cnn()
    x, _ = toy_images(6)
    y = _predicted(model, x)
    threat = _threat(norm, 0.5 if norm != "linf" else 0.05)
    a = APGD(threat, steps=8, seed=3, **_large(norm))(model, x, y)
    b = APGD(threat, steps=8, seed=3, **_large(norm))(model, x, y)
    c = APGD(threat, steps=8, seed=4, **_large(norm))(model, x, y)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.loss, b.loss)
    assert torch.equal(a.success, b.success)
    assert not torch.equal(a.x_adv, c.x_adv)


#: radii small enough that δ·ε/‖δ‖ stays in the box for x ∈ [0.4, 0.6]; and large ones
SURFACE_EPS_INNER = {"linf": 0.05, "l2": 0.1, "l1": 0.2}
SURFACE_EPS_BOX = {"linf": 0.9, "l2": 3.0, "l1": 8.0}


@settings(max_examples=40, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    seed=st.integers(0, 2**31 - 1),
    inner=st.booleans(),
)
def test_surface_start_is_the_scaled_point_projected(norm, seed, inner):
    """to_surface against a slow reference: δ·ε/‖δ‖ when that stays in the box (x in the
    middle, small ε), else that point projected onto ball ∩ box (the projection has its own
    reference tests); zero rows stay zero."""
    g = torch.Generator().manual_seed(seed)
    d = 20
    eps = (SURFACE_EPS_INNER if inner else SURFACE_EPS_BOX)[norm]
    threat = _threat(norm, eps)
    x = torch.rand(4, d, generator=g, dtype=torch.float64)
    if inner:
        x = 0.4 + 0.2 * x
    delta = threat.project((torch.rand(4, d, generator=g, dtype=torch.float64) - 0.5) * eps, x)
    delta[3] = 0.0
    out = to_surface(threat, delta, x)
    assert threat.contains(out, x).all()
    assert torch.equal(out[3], torch.zeros(d, dtype=out.dtype))
    for i in range(3):
        size = {"linf": delta[i].abs().max(), "l2": delta[i].norm(), "l1": delta[i].abs().sum()}
        expected = delta[i] * (eps / float(size[norm]))
        if inner:  # the box does not bind: exactly on the sphere, same direction
            assert torch.allclose(out[i], expected, atol=1e-9)
        else:
            assert float(threat.norm(out[i : i + 1])[0]) <= eps * (1 + 1e-9)
            projected = threat.project(expected[None], x[i : i + 1])[0]
            assert torch.allclose(out[i], projected, atol=1e-9)


def test_surface_start_changes_the_run(tiny_cnn, toy_images):
    model = tiny_cnn()
    x, _ = toy_images(6)
    y = _predicted(model, x)
    a = APGD(L2(0.5), steps=1, seed=3)(model, x, y)
    b = APGD(L2(0.5), steps=1, seed=3, start="surface")(model, x, y)
    assert not torch.allclose(a.x_adv, b.x_adv)
    assert "start='surface'" in repr(APGD(L2(0.5), start="surface"))


@pytest.mark.parametrize("norm", VARIANTS)
def test_batch_independence(linear_model, norm):
    """An example's result depends on its id, not on the batch around it."""
    model = linear_model(dim=36, classes=5, seed=1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 6, 6, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    threat = _threat(norm, 0.5 if norm != "linf" else 0.05)
    attack = APGD(threat, steps=10, restarts=2, loss="dlr-targeted", n_targets=3, **_large(norm))
    full = attack(model, x, y)
    keep = torch.tensor([6, 1, 3])
    part = attack(model, x[keep], y[keep], example_ids=keep)
    assert torch.equal(part.success, full.success[keep])
    assert torch.allclose(part.x_adv, full.x_adv[keep], atol=1e-5)
    assert torch.allclose(part.loss, full.loss[keep], atol=1e-4)


def test_restarts_and_targets_run_only_on_robust_points(linear_model):
    model = CountingModel(linear_model(dim=16, classes=4, seed=2))
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model.inner(x).argmax(1)
    y[:3] = (y[:3] + 1) % 4  # three points misclassified from the start
    steps = 4
    # a radius too small to break anything: every pass runs on the 7 robust points, and
    # n_targets = 9 is clipped to classes - 1 = 3 targets, each with 2 restarts
    res = APGD(Linf(1e-4), steps=steps, restarts=2, loss="dlr-targeted")(model, x, y)
    assert res.success.tolist() == [True] * 3 + [False] * 7
    assert model.sizes == [10] + [7] * (3 * 2 * (steps + 1))
    assert torch.equal(res.x_adv[:3], x[:3])
    # a large radius breaks everything in the first pass: no further passes
    model.sizes.clear()
    res = APGD(Linf(1.0), steps=steps, restarts=3, loss="ce")(model, x, y)
    assert res.success.all()
    assert model.sizes == [10] + [7] * (steps + 1)
    # the large-ε schedule: every stage starts with a gradient at its warm start, so a pass
    # costs steps + 3 evaluations (as in AutoAttack)
    model.sizes.clear()
    res = APGD(L1(1e-4), steps=10, restarts=2, loss="ce", large_eps=True)(model, x, y)
    assert model.sizes == [10] + [7] * (2 * (10 + 3))


def _margin_setup(linear_model, norm: str, steps: int):
    """12 points of a 5-class linear model and a targeted APGD (3 targets × 2 restarts) whose
    ε breaks some of them and not others: (model, x, y, threat, APGD keywords)."""
    model = linear_model(dim=36, classes=5, seed=3)
    x = torch.rand(12, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    threat = _threat(norm, 0.6 if norm != "linf" else 0.04)
    kw = dict(steps=steps, restarts=2, loss="dlr-targeted", n_targets=3, seed=4, **_large(norm))
    return model, x, _predicted(model, x), threat, kw


@pytest.mark.parametrize("norm", VARIANTS)
def test_stacked_passes_give_the_verdicts_of_passes_one_after_another(linear_model, norm):
    """Passes side by side (a row budget above the batch) draw what they draw one after another:
    the same points break, and a point no pass breaks ends at the same best point and loss."""
    model, x, y, threat, kw = _margin_setup(linear_model, norm, steps=8)
    alone = APGD(threat, **kw)(model, x, y)
    stacked = APGD(threat, **kw).with_row_budget(1000)(model, x, y)
    assert 0 < int(alone.success.sum()) < 12  # some points break, some do not
    assert torch.equal(stacked.success, alone.success)
    kept = ~alone.success
    assert torch.allclose(stacked.x_adv[kept], alone.x_adv[kept], atol=1e-6)
    assert torch.allclose(stacked.loss[kept], alone.loss[kept], atol=1e-5)


@pytest.mark.parametrize("norm", VARIANTS)
@pytest.mark.parametrize("budget", [None, 1000])
def test_early_stop_changes_no_verdict_and_no_unbroken_point(linear_model, norm, budget):
    """``early_stop`` drops a row once it (or a row of the same example side by side) is
    misclassified: the same points break, each at a misclassified point in ball ∩ box, and the
    points no pass breaks end at the same best point and loss."""
    model, x, y, threat, kw = _margin_setup(linear_model, norm, steps=12)
    runs = []
    for early in (False, True):
        attack = APGD(threat, early_stop=early, **kw)
        runs.append(attack if budget is None else attack.with_row_budget(budget))
    full, early = (a(model, x, y) for a in runs)
    assert 0 < int(full.success.sum()) < 12
    assert torch.equal(early.success, full.success)
    kept = ~full.success  # the same run, up to the round-off of a smaller batch's matmul
    assert torch.allclose(early.x_adv[kept], full.x_adv[kept], atol=1e-6)
    assert torch.allclose(early.loss[kept], full.loss[kept], atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(early.x_adv).argmax(1) != y, early.success)
    assert bool(threat.contains(early.x_adv - x, x).all())
    assert bool(((early.x_adv >= 0) & (early.x_adv <= 1)).all())


def test_early_stop_runs_only_the_rows_not_broken(linear_model):
    """The loop carries only the rows still running: once a point breaks, later model calls
    are smaller, and a batch that all breaks stops calling the model."""
    model = CountingModel(linear_model(dim=16, classes=4, seed=2))
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model.inner(x).argmax(1)
    # ε = 1: every point breaks at the first step; calls: clean logits, start, 10 steps
    APGD(Linf(1.0), steps=10, loss="ce")(model, x, y)
    assert model.sizes == [10] * 12
    model.sizes.clear()
    APGD(Linf(1.0), steps=10, loss="ce", early_stop=True)(model, x, y)
    assert model.sizes == [10] * 3  # the loop ends once every row is broken


def test_stacked_passes_fill_the_row_budget_in_equal_groups(linear_model):
    model = CountingModel(linear_model(dim=16, classes=4, seed=2))
    x = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model.inner(x).argmax(1)
    y[:3] = (y[:3] + 1) % 4  # three points misclassified from the start: 7 robust rows
    steps = 4
    kw = dict(steps=steps, restarts=2, loss="dlr-targeted")  # 3 targets × 2 restarts
    # every pass fits 50 rows: all six at once
    APGD(Linf(1e-4), **kw).with_row_budget(50)(model, x, y)
    assert model.sizes == [10] + [42] * (steps + 1)
    # 30 rows: the first pass alone, then the five left in groups of 3 and 2 (not 4 and 1)
    model.sizes.clear()
    APGD(Linf(1e-4), **kw).with_row_budget(30)(model, x, y)
    assert model.sizes == [10] + [7] * (steps + 1) + [21] * (steps + 1) + [14] * (steps + 1)
    with pytest.raises(UnionRobustError, match="row budget must be an integer >= 1"):
        APGD(Linf(0.1)).with_row_budget(0)


# -- errors ------------------------------------------------------------------------------------


def test_dlr_needs_three_classes_targeted_four(linear_model):
    x = torch.rand(4, 1, 2, 2)
    y = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(UnionRobustError, match="at least 3 classes"):
        APGD(Linf(0.1), steps=2, loss="dlr")(linear_model(4, 2), x, y)
    with pytest.raises(UnionRobustError, match="at least 4 classes"):
        APGD(Linf(0.1), steps=2, loss="dlr-targeted")(linear_model(4, 3), x, y)
    APGD(Linf(0.1), steps=2, loss="dlr")(linear_model(4, 3), x, y)  # 3 classes suffice


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss": "hinge"}, "unknown APGD loss 'hinge'; valid: ce, cw, dlr, dlr-targeted"),
        ({"steps": 0}, "steps"),
        ({"restarts": 1.5}, "restarts"),
        ({"n_targets": 0}, "n_targets"),
        ({"rho": 1.0}, "rho"),
        ({"alpha": 0.0}, "alpha"),
        ({"l1_sparsity": 0.0}, "l1_sparsity"),
        ({"large_eps": True}, "large_eps is the ℓ1 schedule"),
        ({"large_eps": "yes"}, "large_eps must be True or False"),
        ({"start": "edge"}, "unknown APGD start 'edge'; valid: random, surface"),
        ({"early_stop": 1}, "early_stop must be True or False"),
        ({"early_stop": True, "eot": 4}, "drop one of them"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(UnionRobustError, match=match):
        APGD(Linf(0.1), **kwargs)


def test_union_of_several_threats_refused():
    with pytest.raises(UnionRobustError, match="one threat model"):
        APGD(Linf(0.1) | L2(0.5))


def test_single_member_union_accepted():
    from unionrobust.threats import Union

    assert APGD(Union([L2(0.5)])).threat == L2(0.5)


def test_spec_string_accepted_like_pgd_and_msd():
    assert APGD("l2:2").threat == L2(2.0)
    assert APGD("l1:10", large_eps=True).threat == L1(10.0)
    with pytest.raises(UnionRobustError, match="one threat model"):
        APGD("linf:0.3, l2:2")


# -- analytic oracles on linear classifiers ------------------------------------------------------


def _binary(linear_model, dim=16, seed=0, n=6, x=None):
    model = linear_model(dim=dim, classes=2, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    if x is None:
        x = 0.45 + 0.1 * torch.rand(n, 1, 4, 4, generator=g)  # interior: box never binds
    with torch.no_grad():
        y = model(x).argmax(1)
    w = (model.weight[1 - y] - model.weight[y]).detach()  # (n, d): margin gradient
    with torch.no_grad():
        m0 = cw_margin(model(x), y)
    return model, x, y, w, m0


@pytest.mark.parametrize(
    "threat, dual",
    [
        (Linf(0.2), lambda w: 0.2 * w.abs().sum(1)),
        (L2(0.4), lambda w: 0.4 * w.norm(dim=1)),
        (L1(0.4), lambda w: 0.4 * w.abs().amax(1)),
    ],
)
@pytest.mark.parametrize("loss", ["cw", "ce"])
def test_linear_oracle_without_box(linear_model, threat, dual, loss):
    """max over the ball of the margin z_o - z_y is m0 + ε‖w‖_dual (the box does not bind)."""
    model, x, y, w, m0 = _binary(linear_model)
    res = APGD(threat, steps=30, loss=loss)(model, x, y)
    with torch.no_grad():
        reached = cw_margin(model(res.x_adv), y)
    assert torch.allclose(reached, m0 + dual(w), atol=1e-4)


def _l1_box_oracle(x, w, eps):
    """Fractional knapsack: fill coordinates by decreasing |w_i| up to their box room."""
    xf = x.reshape(x.shape[0], -1)
    room = torch.where(w > 0, 1 - xf, xf)
    order = w.abs().argsort(dim=1, descending=True)
    r, a = room.gather(1, order), w.abs().gather(1, order)
    before = r.cumsum(1) - r
    take = (eps - before).clamp_min(0).minimum(r)
    return (take * a).sum(1)


def test_linear_oracle_with_box(linear_model):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 1, 4, 4, generator=g)
    model, x, y, w, m0 = _binary(linear_model, seed=5, x=x)
    xf = x.reshape(8, -1)
    # ℓ∞ ∩ box: δ_i = clip(ε sign(w_i), -x_i, 1 - x_i)
    eps = 0.3
    gain = torch.where(w > 0, (1 - xf).clamp(max=eps), -xf.clamp(max=eps)) * w
    res = APGD(Linf(eps), steps=20, loss="cw")(model, x, y)
    assert torch.allclose(cw_margin(model(res.x_adv), y), m0 + gain.sum(1), atol=1e-4)
    # ℓ1 ∩ box, ε a few pixels' room: "Mind the box" must fill the best coordinates in turn
    cases = [(0.4, 50, 1e-4), (2.0, 100, 0.05)]
    for (eps, steps, rel), large_eps in itertools.product(cases, (False, True)):
        best = _l1_box_oracle(x, w, eps)
        res = APGD(L1(eps), steps=steps, loss="cw", large_eps=large_eps)(model, x, y)
        gain = cw_margin(model(res.x_adv), y).detach() - m0
        assert (gain <= best + 1e-4).all()  # nothing beats the optimum (sanity of the oracle)
        assert (gain >= (1 - rel) * best - 1e-4).all(), (gain / best).tolist()


def _l1_threshold_case(linear_model, seed, eps, n=200, dim=64):
    """A 2-class linear model on points spread over the box, with the bias set so that the
    exact ℓ1 ∩ box worst case breaks about half of them: many points sit just past or short
    of the threshold. Returns model, x, y, breakable (the oracle's verdict), slack (how far
    past the threshold the optimum gets, relative to it)."""
    model = linear_model(dim=dim, classes=2, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 20)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        w = model.weight[1] - model.weight[0]
        m0 = x @ w + model.bias[1] - model.bias[0]
        best = _l1_box_oracle(x, w.expand(n, -1), eps)
        shift = -float(torch.quantile(m0 + best, 0.5))
        model.bias[1] += shift
    margin = m0 + shift  # class 1 minus class 0
    keep = margin < 0  # correctly classified as class 0
    y = torch.zeros(int(keep.sum()), dtype=torch.long)
    return model, x[keep], y, (margin + best)[keep] > 0, ((margin + best) / best)[keep]


@pytest.mark.parametrize(
    "seed, loss, large_eps",
    [(3, "ce", False), (3, "cw", False), (4, "ce", False), (4, "cw", False), (4, "ce", True)],
)
def test_l1_more_steps_never_weaker_on_the_box_oracle(linear_model, seed, loss, large_eps):
    """The adaptive sparsity must not freeze: with k = ⌊‖δ_max‖₀/1.5⌋ alone, a stalled x_max
    kept k (and the iterate on a spread point worse than x_max) while η shrank, so 300 steps
    found fewer points than 100 (issue 8)."""
    eps = 2.0
    model, x, y, breakable, slack = _l1_threshold_case(linear_model, seed, eps)
    found = {}
    for steps in (100, 300):
        res = APGD(L1(eps), steps=steps, loss=loss, large_eps=large_eps)(model, x, y)
        assert L1(eps).contains(res.x_adv - x, x).all()
        assert not (res.success & ~breakable).any()  # nothing beats the exact worst case
        found[steps] = res.success
    assert not (found[100] & ~found[300]).any(), "300 steps lost points that 100 steps broke"
    missed = breakable & ~found[300]
    assert not (missed & (slack > 0.01)).any(), slack[missed].tolist()
    assert int(missed.sum()) <= 1, slack[missed].tolist()


def test_large_eps_counts_only_the_original_ball(linear_model):
    """Points that the 3ε and 2ε stages break but no point of the ε ball ∩ box can break stay
    unbroken: only the last stage's iterates are results, and they lie in the ε ball."""
    eps = 2.0
    model, x, y, breakable, _ = _l1_threshold_case(linear_model, 4, eps)
    with torch.no_grad():
        logits = model(x)
        margin = logits[:, 1] - logits[:, 0]
        w = (model.weight[1] - model.weight[0]).expand(x.shape[0], -1)
    only_big = ~breakable & (margin + _l1_box_oracle(x, w, 3 * eps) > 0)
    assert int(only_big.sum()) >= 10
    xs, ys = x[only_big], y[only_big]
    res = APGD(L1(eps), steps=30, loss="cw", large_eps=True)(model, xs, ys)
    assert not res.success.any()
    assert L1(eps).contains(res.x_adv - xs, xs).all()


# -- strength against PGD on a trained model ---------------------------------------------------


@pytest.fixture(scope="module")
def trained_mlp():
    """A small MLP trained on 3-class Gaussian blobs in [0,1]^36 (200 full-batch Adam steps)."""
    g = torch.Generator().manual_seed(0)
    centers = 0.3 + 0.4 * torch.rand(3, 36, generator=g)
    y = torch.arange(600) % 3
    x = (centers[y] + 0.08 * torch.randn(600, 36, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    xt = (centers[y[:200]] + 0.08 * torch.randn(200, 36, generator=g)).clamp(0, 1)
    yt = y[:200]
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model, xt, yt


@pytest.mark.parametrize("threat", [Linf(0.08), L2(0.35), L1(1.2)], ids=str)
def test_apgd_at_least_as_strong_as_pgd(trained_mlp, threat):
    model, x, y = trained_mlp
    pgd = PGD(threat, steps=10)(model, x, y)
    apgd = APGD(threat, steps=10)(model, x, y)
    n_pgd, n_apgd = int(pgd.success.sum()), int(apgd.success.sum())
    # the radii are chosen so that PGD breaks some but not all points
    assert 20 <= n_pgd <= 180, n_pgd
    assert n_apgd >= n_pgd - 2, (n_apgd, n_pgd)
    assert threat.contains(apgd.x_adv - x, x).all()


def test_registered_names():
    from unionrobust.attacks import make_attack

    expected = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted", "apgd-cw": "cw"}
    for name, loss in expected.items():
        attack = make_attack(name, "l1:10", steps=7)
        assert isinstance(attack, APGD) and attack.loss == loss and attack.steps == 7
        assert attack.threat == L1(10)
