"""The `full` suite's native attacks: minimum-norm (DeepFool, FAB, DDN) and gradient-free
(Gaussian noise, salt & pepper, Pointwise, Square).

Oracles: on a linear 2-class classifier the smallest breaking perturbation has norm
|margin| / ‖w‖_q (q the dual exponent) when the box does not bind; no input closer than that
is misclassified, so every attack's reported norm is bounded below by it, and the min-norm
attacks must reach it within a few per cent. The hyperplane ∩ box projection is checked against
linear programs (scipy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from unionrobust.attacks.apgd import APGD
from unionrobust.attacks.blackbox import GaussianNoise, Pointwise, SaltPepper
from unionrobust.attacks.ddn import DDN
from unionrobust.attacks.decision import BoundarySearch
from unionrobust.attacks.linearised import FAB, DeepFool, project_hyperplane_box
from unionrobust.attacks.minnorm import MinNormResult
from unionrobust.attacks.registry import attack_names, make_attack
from unionrobust.attacks.square import Square, fill_l2, square_p
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.engine import evaluate
from unionrobust.evaluation.suites import FULL_NATIVE, get_suite
from unionrobust.losses import cw_margin
from unionrobust.threats import L0, L1, L2, Linf

FAST = settings(
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
D, B = 16, 6
DUAL = {"l2": 2.0, "linf": 1.0, "l1": math.inf}
THREAT = {"l2": L2, "linf": Linf, "l1": L1}


def linear_setup(linear_model, seed: int, spread: float = 0.02):
    """A binary linear model whose boundary passes through x = 0.5, and points near it (so the
    box never binds), labelled by the model (all correctly classified)."""
    model = linear_model(dim=D, classes=2, seed=seed).double()
    with torch.no_grad():
        w = model.weight[1] - model.weight[0]
        model.bias[1] = model.bias[0] - 0.5 * w.sum()
    g = torch.Generator().manual_seed(seed + 7)
    x = 0.5 + spread * (2 * torch.rand(B, D, generator=g, dtype=torch.float64) - 1)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    margin = (logits[:, 0] - logits[:, 1]).abs()
    return model, w.detach(), x, y, margin


def exact_min_norm(margin: torch.Tensor, w: torch.Tensor, norm: str) -> torch.Tensor:
    return margin / w.norm(p=DUAL[norm])


MIN_NORM = {
    ("deepfool", "l2"): lambda t: DeepFool(t),
    ("deepfool", "linf"): lambda t: DeepFool(t),
    ("fab", "l2"): lambda t: FAB(t),
    ("fab", "linf"): lambda t: FAB(t),
    ("fab", "l1"): lambda t: FAB(t),
    ("ddn", "l2"): lambda t: DDN(t, steps=100),
}


@pytest.mark.parametrize("key", sorted(MIN_NORM))
@FAST
@given(seed=st.integers(0, 10_000))
def test_min_norm_attacks_find_the_exact_minimum_on_a_linear_model(key, seed, linear_model):
    _, norm = key
    model, w, x, y, margin = linear_setup(linear_model, seed)
    opt = exact_min_norm(margin, w, norm)
    res = MIN_NORM[key](THREAT[norm](10.0))(model, x, y)
    assert isinstance(res, MinNormResult)
    assert bool(res.success.all())
    assert bool((res.norms >= opt * (1 - 1e-6)).all()), (res.norms / opt).tolist()
    assert bool((res.norms <= opt * 1.03).all()), (res.norms / opt).tolist()
    threat = THREAT[norm](10.0)
    # the reported norm is the threat's norm of x_min − x; x_adv = x_min inside a big ball
    assert torch.allclose(res.norms, threat.norm(res.x_min - x), rtol=1e-12, atol=0)
    assert torch.equal(res.x_adv, res.x_min)
    with torch.no_grad():
        assert bool((model(res.x_min).argmax(1) != y).all())


@pytest.mark.parametrize("key", sorted(MIN_NORM))
def test_threat_bound_result_counts_only_inside_the_ball(key, linear_model):
    _, norm = key
    model, w, x, y, margin = linear_setup(linear_model, 3)
    opt = exact_min_norm(margin, w, norm)
    eps = float(opt.median())
    big = MIN_NORM[key](THREAT[norm](10.0))(model, x, y)
    small = MIN_NORM[key](THREAT[norm](eps))(model, x, y)
    threat = THREAT[norm](eps)
    assert bool(threat.contains(small.x_adv - x, x).all())
    assert bool(((small.x_adv >= 0) & (small.x_adv <= 1)).all())
    # nothing inside the ball breaks a point farther than eps; the rest are found
    assert not bool(small.success[opt > eps * (1 + 1e-6)].any())
    assert bool(small.success[opt < eps / 1.05].all())
    unbroken = ~small.success
    assert torch.equal(small.x_adv[unbroken], x[unbroken])
    # one run gives the whole curve: the search does not depend on the radius (only the final
    # projection onto the smaller ball may find a slightly smaller breaking point)
    assert bool((small.norms <= big.norms * (1 + 1e-12)).all())
    assert torch.allclose(small.norms, big.norms, rtol=1e-2, atol=0)
    assert bool(small.success[big.norms <= eps].all())


@pytest.mark.parametrize(
    "make,norm",
    [
        (lambda t: GaussianNoise(t, steps=10, repeats=3), "l2"),
        (lambda t: SaltPepper(t, steps=30, repeats=3, max_p=1.0), "l1"),
        (lambda t: Pointwise(t, sp_steps=30, sp_repeats=2), "l1"),
        (lambda t: Pointwise(t, sp_steps=30, sp_repeats=2), "l2"),
        (lambda t: Pointwise(t, sp_steps=30, sp_repeats=1, restarts=3), "l1"),
    ],
)
def test_gradient_free_norms_are_never_below_the_exact_minimum(make, norm, linear_model):
    model, w, x, y, margin = linear_setup(linear_model, 11, spread=0.1)
    opt = exact_min_norm(margin, w, norm)
    threat = THREAT[norm](50.0)
    res = make(threat)(model, x, y)
    found = torch.isfinite(res.norms)
    assert bool(found.any())
    assert bool((res.norms[found] >= opt[found] * (1 - 1e-6)).all())
    assert torch.allclose(res.norms[found], threat.norm(res.x_min - x)[found])
    with torch.no_grad():
        assert bool((model(res.x_min[found]).argmax(1) != y[found]).all())


def test_pointwise_is_sparser_than_its_salt_and_pepper_start(linear_model):
    model, _, x, y, _ = linear_setup(linear_model, 2, spread=0.1)
    sp = SaltPepper(L0(D), steps=30, repeats=2, max_p=1.0)(model, x, y)
    pw = Pointwise(L0(D), sp_steps=30, sp_repeats=2, max_p=1.0, binary_steps=0)(model, x, y)
    assert bool((pw.norms <= sp.norms).all())
    assert bool((pw.norms < sp.norms).any())


def test_pointwise_restarts_keep_the_smallest_run(linear_model):
    """Restart 0 replays the single run's draws, so more restarts never end farther; on a
    linear model other visiting orders end in other (smaller) sparse points."""
    model, _, x, y, _ = linear_setup(linear_model, 12, spread=0.1)
    one = Pointwise(L1(50.0), sp_steps=30, sp_repeats=1, seed=3)(model, x, y)
    many = Pointwise(L1(50.0), sp_steps=30, sp_repeats=1, restarts=4, seed=3)(model, x, y)
    assert bool((many.norms <= one.norms * (1 + 1e-12)).all())
    assert bool((many.norms < one.norms * (1 - 1e-6)).any())
    with pytest.raises(UnionRobustError, match="restarts"):
        Pointwise(L1(1.0), restarts=0)


def test_square_finds_the_linf_vertex_of_a_linear_model(linear_model):
    model, w, x, y, margin = linear_setup(linear_model, 5)
    opt = exact_min_norm(margin, w, "linf")
    eps = float(opt.max()) * 1.5
    xi = x.reshape(B, 1, 4, 4)
    res = Square(Linf(eps), steps=300)(model, xi, y)
    assert bool(res.success.all())
    assert bool(Linf(eps).contains(res.x_adv - xi, xi).all())
    assert not bool(Square(Linf(float(opt.min()) * 0.99), steps=50)(model, xi, y).success.any())


def test_square_l2_breaks_a_linear_model_inside_the_ball(linear_model):
    model, w, x, y, margin = linear_setup(linear_model, 6)
    opt = exact_min_norm(margin, w, "l2")
    eps = float(opt.max()) * 2
    xi = x.reshape(B, 1, 4, 4)
    res = Square(L2(eps), steps=300)(model, xi, y)
    assert bool(res.success.all())
    assert bool(L2(eps).contains(res.x_adv - xi, xi).all())
    assert not bool(Square(L2(float(opt.min()) * 0.99), steps=50)(model, xi, y).success.any())


def test_square_schedule_halves():
    assert square_p(0.8, 0, 10_000) == 0.8
    assert square_p(0.8, 11, 10_000) == 0.4
    assert square_p(0.8, 9_999, 10_000) == 0.8 / 2**9
    assert square_p(0.8, 100, 1000, rescale=True) == 0.8 / 16  # 100/1000 ↔ 1000/10000


def test_square_schedule_counts_queries_as_autoattack_does():
    """AutoAttack's Square (resc_schedule=False) ends 5,000 queries at p_init / 128; the rescaled
    schedule halved twice more and lost points to it on a masked model (issue 16)."""
    assert square_p(0.8, 4_999, 5_000) == 0.8 / 128
    assert square_p(0.8, 1_500, 5_000) == 0.8 / 32
    assert square_p(0.8, 100, 1000) == 0.8 / 4
    assert square_p(0.8, 4_999, 5_000, rescale=True) == 0.8 / 512
    assert Square("l2:2").rescale is False
    seen = []
    import unionrobust.attacks.square as sq

    real = sq.square_p
    try:
        sq.square_p = lambda *a: seen.append(real(*a)) or seen[-1]
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        x = torch.full((2, 1, 4, 4), 0.5)
        Square("l2:0.001", steps=300)(model, x, model(x).argmax(1))
    finally:
        sq.square_p = real
    assert min(seen) == 0.8 / 8  # step 299 is in AutoAttack's (200, 500] bracket


# -- projection onto hyperplane ∩ box vs linear programs -----------------------------------------


def _lp_reference(w, c, z, norm):
    import numpy as np
    from scipy.optimize import linprog

    d = w.numel()
    lo, hi = (-z).numpy(), (1 - z).numpy()
    wn = w.numpy()
    if norm == "l1":  # variables (δ, t): min Σt, |δ| ≤ t
        cost = np.r_[np.zeros(d), np.ones(d)]
        eye = np.eye(d)
        a_ub = np.block([[eye, -eye], [-eye, -eye]])
        bounds = [(lo[i], hi[i]) for i in range(d)] + [(0, None)] * d
        a_eq = np.r_[wn, np.zeros(d)][None]
    else:  # variables (δ, s): min s, |δ_i| ≤ s
        cost = np.r_[np.zeros(d), 1.0]
        eye = np.eye(d)
        one = np.ones((d, 1))
        a_ub = np.block([[eye, -one], [-eye, -one]])
        bounds = [(lo[i], hi[i]) for i in range(d)] + [(0, None)]
        a_eq = np.r_[wn, 0.0][None]
    out = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=a_eq, b_eq=[float(c)], bounds=bounds)
    assert out.status == 0
    return float(out.fun)


@pytest.mark.parametrize("norm", ["l1", "linf", "l2"])
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    frac=st.floats(0.05, 0.95),
    sign=st.sampled_from([-1.0, 1.0]),
    sparse=st.booleans(),
)
def test_hyperplane_box_projection_is_optimal(norm, seed, frac, sign, sparse):
    g = torch.Generator().manual_seed(seed)
    d = 7
    w = torch.randn(d, generator=g, dtype=torch.float64)
    if sparse:
        w[:3] = 0.0
    z = torch.rand(d, generator=g, dtype=torch.float64)
    z[0], z[1] = 0.0, 1.0  # pinned coordinates
    # the largest reachable ⟨w, δ⟩ in direction `sign` inside the box
    reach = torch.where(sign * w > 0, (1 - z) * w.abs(), z * w.abs()).sum()
    c = torch.tensor([sign * frac * float(reach)], dtype=torch.float64)
    delta = project_hyperplane_box(w[None], c, z[None], norm)[0]
    assert abs(float(delta @ w) - float(c)) <= 1e-7 * max(1.0, abs(float(c)))
    assert bool(((z + delta) >= -1e-12).all() and ((z + delta) <= 1 + 1e-12).all())
    if norm == "l2":  # KKT: δ = clip(t·w) — check optimality against perturbed feasible points
        ours = float(delta.norm())
        for _ in range(20):
            v = torch.randn(d, generator=g, dtype=torch.float64) * 1e-3
            v -= (v @ w) / (w @ w) * w  # stay on the hyperplane
            other = (delta + v).clamp(-z, 1 - z)
            if abs(float(other @ w) - float(c)) < 1e-12:
                assert float(other.norm()) >= ours - 1e-9
        # and it matches the closed form without the box when the box does not bind
        free = float(c.abs()) / float(w.norm())
        assert ours >= free - 1e-9
    else:
        ref = _lp_reference(w, c, z, norm)
        ours = float(delta.abs().sum() if norm == "l1" else delta.abs().max())
        assert ours == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_hyperplane_projection_when_infeasible_goes_as_far_as_the_box_allows():
    w = torch.tensor([[1.0, -2.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    for norm in ("l1", "l2", "linf"):
        delta = project_hyperplane_box(w, torch.tensor([100.0], dtype=torch.float64), z, norm)
        assert torch.allclose(delta, torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64))


# -- the attack contract on a small CNN ------------------------------------------------------------


def predicted(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own labels (eval mode), so every point is clean-correct; mode restored."""
    mode = model.training
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    model.train(mode)
    return y


def _model_state(model: nn.Module):
    return (
        [m.training for m in model.modules()],
        {k: v.clone() for k, v in model.named_buffers()},
        [p.requires_grad for p in model.parameters()],
        [p.detach().clone() for p in model.parameters()],
    )


def _assert_same_state(model: nn.Module, before) -> None:
    flags, buffers, req, params = before
    assert [m.training for m in model.modules()] == flags
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert [p.requires_grad for p in model.parameters()] == req
    assert all(p.grad is None for p in model.parameters())
    for p, v in zip(model.parameters(), params, strict=True):
        assert torch.equal(p.detach(), v)


CONTRACT = {
    "deepfool-l2": lambda: DeepFool(L2(0.5), steps=5, candidates=4),
    "deepfool-linf": lambda: DeepFool(Linf(0.05), steps=5),
    "fab-l1": lambda: FAB(L1(1.0), steps=5, restarts=2),
    "fab-linf": lambda: FAB(Linf(0.05), steps=5, candidates=3),
    "fab-t-l2": lambda: FAB(L2(0.5), steps=12, n_targets=3, early_stop=True, restarts=2),
    "fab-t-l1": lambda: FAB(L1(1.0), steps=5, n_targets=2),
    "ddn": lambda: DDN(L2(0.5), steps=10),
    "gaussian": lambda: GaussianNoise(L2(1.0), steps=4, repeats=2),
    "salt-pepper-l0": lambda: SaltPepper(L0(6), steps=10, repeats=2),
    "salt-pepper-l1": lambda: SaltPepper(L1(2.0), steps=10, repeats=2),
    "pointwise": lambda: Pointwise(L1(2.0), sp_steps=10, sp_repeats=1, binary_steps=2),
    "pointwise-restarts": lambda: Pointwise(L1(2.0), sp_steps=10, sp_repeats=1, restarts=3),
    "square": lambda: Square(Linf(0.05), steps=20, restarts=2),
    "square-l2": lambda: Square(L2(0.5), steps=20, restarts=2),
    "square-l1": lambda: Square(L1(2.0), steps=20, restarts=2),
    "square-l2-side-by-side": lambda: Square(L2(0.5), steps=20, restarts=3, parallel=True),
    "square-near-miss": lambda: Square(Linf(0.05), steps=20, restarts=3, near_miss=0.9),
    "square-near-miss-side-by-side": lambda: Square(
        L1(2.0), steps=20, restarts=3, near_miss=0.9, parallel=True
    ),
    "apgd-t-early-stop": lambda: APGD(
        L2(0.5), steps=10, loss="dlr-targeted", n_targets=3, restarts=2, early_stop=True
    ),
    "boundary-search-l2": lambda: BoundarySearch(L2(0.5), steps=3, grad_queries=8, start_steps=3),
    "boundary-search-l1": lambda: BoundarySearch(L1(2.0), steps=3, grad_queries=8, start="noise"),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_box_ball_model_input_seed(name, tiny_cnn, toy_images):
    model = tiny_cnn().double()
    x, _ = toy_images(n=6)
    x = x.double()
    y = predicted(model, x)
    x0 = x.clone()
    before = _model_state(model)
    attack = CONTRACT[name]()
    res = attack(model, x, y)
    _assert_same_state(model, before)
    assert torch.equal(x, x0)
    assert bool(((res.x_adv >= 0) & (res.x_adv <= 1)).all())
    assert bool(attack.threat.contains(res.x_adv - x, x).all())
    model.eval()
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    model.train()
    assert torch.equal(res.success, pred != y)
    assert bool(res.success.any())  # the attack did some work
    again = CONTRACT[name]()(model, x, y)
    assert torch.equal(again.x_adv, res.x_adv)
    # an example's result does not depend on its batch
    ids = torch.arange(40, 46)
    batch = CONTRACT[name]()(model, x, y, example_ids=ids)
    for i in (0, 4):
        alone = CONTRACT[name]()(model, x[i : i + 1], y[i : i + 1], example_ids=ids[i : i + 1])
        assert torch.allclose(alone.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-9)
        assert bool(alone.success[0]) == bool(batch.success[i])


def test_keyed_attacks_change_with_the_seed(tiny_cnn, toy_images):
    model = tiny_cnn()
    x, _ = toy_images(n=4)
    y = predicted(model, x)
    a = GaussianNoise(L2(8.0), steps=8, repeats=1, seed=0)(model, x, y)
    b = GaussianNoise(L2(8.0), steps=8, repeats=1, seed=1)(model, x, y)
    assert bool(torch.isfinite(a.norms).any())
    assert not torch.equal(a.x_min, b.x_min)


def test_clean_misclassified_points_have_norm_zero(linear_model):
    model, _, x, y, _ = linear_setup(linear_model, 1)
    res = DeepFool(L2(1.0))(model, x, 1 - y)
    assert bool((res.norms == 0).all()) and bool(res.success.all())
    assert torch.equal(res.x_adv, x)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: DDN(Linf(0.1)), "supports l2"),
        (lambda: DeepFool(L1(1.0)), "supports linf, l2"),
        (lambda: Square(L0(3)), "linf, l2 and l1"),
        (lambda: FAB(L2(1.0), beta=1.5), "beta"),
        (lambda: DDN(L2(1.0), steps=0), "steps"),
        (lambda: SaltPepper(L1(1.0), max_p=2.0), "max_p"),
        (lambda: make_attack("ddn", "linf:0.1"), "supports l2"),
    ],
)
def test_bad_parameters_raise(build, match):
    with pytest.raises(UnionRobustError, match=match):
        build()


def test_square_needs_images(linear_model):
    model, _, x, y, _ = linear_setup(linear_model, 0)
    with pytest.raises(UnionRobustError, match="images"):
        Square(Linf(0.1), steps=2)(model, x, y)


# -- registry, suite and engine ----------------------------------------------------------------


def test_registered_names_build():
    names = attack_names()
    for n in ("deepfool", "fab", "ddn", "gaussian-noise", "salt-pepper", "pointwise", "square"):
        assert n in names
    assert isinstance(make_attack("fab", "l1:2"), FAB)
    assert isinstance(make_attack("square", "linf:0.1", steps=3), Square)


def test_full_suite_has_the_native_attacks_per_norm():
    suite = get_suite("full", "linf:0.3, l2:2, l1:10")
    for i, norm in enumerate(("linf", "l2", "l1")):
        names = [e.attack for e in suite.entries if e.threat_index == i]
        assert names[:2] == ["apgd-ce", "apgd-t"]
        assert "pgd" in names
        for n, _ in FULL_NATIVE[norm]:
            assert n in names
    for e in suite.entries:  # every entry builds
        e.build(suite.threats[e.threat_index], 0)


def test_engine_rechecks_min_norm_attacks(linear_model):
    model, w, x, y, margin = linear_setup(linear_model, 4)
    opt = exact_min_norm(margin, w, "l2")
    eps = float(opt.median())
    report = evaluate(model, x, y, threats=f"l2:{eps!r}", suite=["deepfool", "ddn"], progress=False)
    assert report.rejected == [0, 0]
    broken = report.broken.any(dim=1)
    assert not bool(broken[opt > eps * (1 + 1e-6)].any())
    assert bool(broken[opt < eps / 1.05].all())


def test_square_l2_fills_the_budget_the_box_cuts_off():
    """Issue 16: scaled to ε and then clipped, an ℓ2 Square perturbation on a dark image kept a
    fraction of its budget; :func:`fill_l2` keeps ball ∩ box and reaches ε where the box allows."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 1, 8, 8, generator=g) < 0.8).double()  # mostly at the box's faces
    delta = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = 2.0
    old = (x + eps * delta / delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    new = fill_l2(x, delta, eps)
    n_old, n_new = (old - x).flatten(1).norm(dim=1), (new - x).flatten(1).norm(dim=1)
    assert bool((n_old < 0.9 * eps).all())  # the authors' rule wastes budget here
    assert torch.allclose(n_new, torch.full_like(n_new, eps), rtol=1e-4)
    assert bool(L2(eps).contains(new - x, x).all())
    assert new.min() >= 0 and new.max() <= 1
    # the direction is kept: new − x is a clipped positive multiple of δ
    assert bool(((new - x) * delta >= 0).all())


def _fill_reference(x: np.ndarray, d: np.ndarray, eps: float) -> float:
    """Slow reference for :func:`fill_l2` on one flat row: the largest t with
    ‖clip(x + t·d) − x‖₂ ≤ ε by walking the breakpoints of the piecewise quadratic in order
    (float64, a Python loop); returns t (inf when the whole box-clip fits)."""
    room = np.where(d > 0, 1.0 - x, x)
    moving = d != 0
    tau = np.where(moving, room / np.where(moving, np.abs(d), 1.0), np.inf)
    order = [int(i) for i in np.argsort(tau, kind="stable") if moving[i]]
    clipped = 0.0
    for k, i in enumerate(order):
        free = sum(d[j] ** 2 for j in order[k:])  # summed afresh: no cancellation
        if clipped + tau[i] ** 2 * free > eps**2:
            return float(np.sqrt(max(eps**2 - clipped, 0.0) / free))
        clipped += room[i] ** 2
    return np.inf


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float64, (3, 12), elements=st.sampled_from([0.0, 1.0, 0.3, 0.999, 0.5])),
    d=hnp.arrays(np.float64, (3, 12), elements=st.floats(-2.0, 2.0, width=32)),
    eps=st.floats(0.01, 6.0),
)
def test_fill_l2_matches_a_slow_reference(x, d, eps):
    """The exact box-filling rescale of the ℓ2 Square: same point as the reference's largest
    t, inside ball ∩ box, in float64 and float32."""
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        xt, dt = torch.from_numpy(x).to(dtype), torch.from_numpy(d).to(dtype)
        out = fill_l2(xt, dt, eps).double().numpy()
        for i in range(x.shape[0]):
            xi, di = xt[i].double().numpy(), dt[i].double().numpy()
            t = _fill_reference(xi, di, eps)
            full_clip = np.where(di > 0, 1.0, np.where(di < 0, 0.0, xi))
            want = np.clip(xi + t * di, 0.0, 1.0) if np.isfinite(t) else full_clip
            assert np.allclose(out[i], want, atol=tol * 10), (i, out[i], want)
            assert np.linalg.norm(out[i] - xi) <= eps * (1 + tol) + 1e-6
            assert out[i].min() >= 0.0 and out[i].max() <= 1.0


@pytest.mark.parametrize("threat", [L2(0.3), Linf(0.03)])
def test_square_side_by_side_restarts_never_end_above_one_run(threat, tiny_cnn, toy_images):
    """Restart 0 of the side-by-side run draws what a single run draws and runs to the end
    unless another restart breaks its example first, so every example left unbroken ends at
    least as close to misclassification as the single run; the broken set only grows."""
    model = tiny_cnn().double().eval()
    x, _ = toy_images(n=12)
    x = x.double()
    y = predicted(model, x)
    one = Square(threat, steps=60, seed=2)(model, x, y)
    both = Square(threat, steps=60, restarts=3, parallel=True, seed=2)(model, x, y)
    kept = ~both.success  # loss: the CW margin, higher = closer
    assert bool((both.loss[kept] >= one.loss[kept] - 1e-9).all())
    assert bool((both.loss[kept] > one.loss[kept] + 1e-6).any())  # other restarts did better
    assert bool((both.success | ~one.success).all())
    assert bool(threat.contains(both.x_adv - x, x).all())


def _square_fixture(tiny_cnn, toy_images, n: int = 12):
    model = tiny_cnn().double().eval()
    x, _ = toy_images(n=n)
    x = x.double()
    return model, x, predicted(model, x)


@pytest.mark.parametrize("threat", [L2(0.3), Linf(0.03), L1(1.0)])
def test_square_side_by_side_restarts_draw_what_they_draw_one_after_another(
    threat, tiny_cnn, toy_images
):
    """Restart r's rows of the side-by-side run are keyed as restart r run alone, and a row
    stops only when its example is broken: the same examples fall, and an example no restart
    breaks ends at the same best margin."""
    model, x, y = _square_fixture(tiny_cnn, toy_images)
    ids = torch.arange(12) * 7919 + (1 << 50)  # large ids: keys are not limited to 2**48
    seq = Square(threat, steps=60, restarts=3, seed=4)(model, x, y, example_ids=ids)
    par = Square(threat, steps=60, restarts=3, parallel=True, seed=4)(model, x, y, ids)
    assert torch.equal(seq.success, par.success)
    assert bool(seq.success.any()) and not bool(seq.success.all())
    kept = ~seq.success
    assert torch.allclose(seq.loss[kept], par.loss[kept], rtol=0, atol=1e-9)
    assert bool(threat.contains(par.x_adv - x, x).all())


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("threat", [L2(0.3), Linf(0.03)])
def test_square_near_miss_restarts_only_the_first_runs_near_misses(
    threat, parallel, tiny_cnn, toy_images
):
    """With ``near_miss`` f the first run goes on every example, the later restarts only on
    the unbroken ones whose margin it brought to ≤ f × their clean margin: those end as all
    restarts end, the others as the first run ends."""
    model, x, y = _square_fixture(tiny_cnn, toy_images, n=16)
    one = Square(threat, steps=40, seed=6)(model, x, y)
    every = Square(threat, steps=40, restarts=3, seed=6)(model, x, y)
    f = 0.6
    near_ = Square(threat, steps=40, restarts=3, seed=6, near_miss=f, parallel=parallel)
    got = near_(model, x, y)
    with torch.no_grad():
        clean = -cw_margin(model(x), y)
    near = ~one.success & (-one.loss <= f * clean)
    assert bool(near.any()) and bool((~near & ~one.success).any())
    far = ~near
    assert torch.equal(got.success[far], one.success[far])
    assert torch.allclose(got.loss[far], one.loss[far], rtol=0, atol=1e-9)
    assert torch.equal(got.success[near], every.success[near])
    kept = near & ~every.success
    assert torch.allclose(got.loss[kept], every.loss[kept], rtol=0, atol=1e-9)
    assert bool(threat.contains(got.x_adv - x, x).all())


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "x"])
def test_square_near_miss_must_be_a_fraction(bad):
    with pytest.raises(UnionRobustError, match="near_miss"):
        Square(Linf(0.1), near_miss=bad)


@pytest.mark.parametrize("threat", [L2(0.3), Linf(0.03), L1(1.0)])
def test_square_windowed_draws_change_nothing(threat, tiny_cnn, toy_images, monkeypatch):
    """Square draws the keyed uniforms of 64 steps at once; one step at a time (window 1)
    gives bit-identical results, with rows dropping out and side-by-side restarts."""
    import unionrobust.attacks.square as square_module

    model = tiny_cnn().double().eval()
    x, _ = toy_images(n=10)
    x = x.double()
    y = predicted(model, x)
    attacks = [
        Square(threat, steps=150, seed=3),
        Square(threat, steps=70, restarts=2, parallel=True),
    ]
    windowed = [a(model, x, y) for a in attacks]
    monkeypatch.setattr(square_module, "_WINDOW", 1)
    for a, w in zip(attacks, windowed, strict=True):
        one = a(model, x, y)
        assert torch.equal(one.x_adv, w.x_adv) and torch.equal(one.success, w.success)
