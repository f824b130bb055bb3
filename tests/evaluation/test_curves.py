"""Robustness curves: monotone, exact on a linear model, one run with a minimum-norm attack."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unionrobust.attacks.base import Attack, AttackResult, misclassified
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.curves import robustness_curve, union_curve

DUAL = {"linf": 1, "l2": 2, "l1": float("inf")}


@pytest.fixture(scope="module")
def linear():
    """Binary linear model on 1x4x4 inputs in [0.35, 0.65]; exact radii (box never binds for
    radii <= 0.3 in linf/l2) and two misclassified points."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=g)
    b = 0.1
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), w]))
        model[1].bias.copy_(torch.tensor([0.0, b]))
    x = 0.35 + 0.3 * torch.rand(60, 1, 4, 4, generator=g)
    f = x.flatten(1) @ w + b
    y = (f > 0).long()
    y[:2] = 1 - y[:2]
    margin = (2 * y - 1) * f  # < 0 where misclassified
    return model, x, y, w, margin


def analytic_robust(w, margin, norm, grid):
    r = margin / torch.linalg.vector_norm(w, DUAL[norm])
    return torch.stack([r > e for e in grid], dim=1), r


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_curve_matches_analytic_and_per_eps_pgd(linear, norm):
    model, x, y, w, margin = linear
    grid = [0.0, 0.02, 0.05, 0.1, 0.2]
    curve = robustness_curve(model, x, y, norm, grid, "pgd", steps=20)
    want, r = analytic_robust(w, margin, norm, grid)
    far = torch.stack([(r - e).abs() > 1e-3 for e in grid], dim=1)
    assert torch.equal(curve.robust[far], want[far])
    assert curve.method == "per-eps"
    assert curve.accuracy[0] == pytest.approx(58 / 60)
    assert all(a >= b for a, b in zip(curve.accuracy, curve.accuracy[1:], strict=False))
    assert curve.accuracy[-1] < curve.accuracy[0]
    for e, acc in zip(grid[1:], curve.accuracy[1:], strict=True):
        rep = evaluate(
            model, x, y, threats=f"{norm}:{e}", suite=["pgd"], progress=False, diagnostics=False
        )
        assert rep.union_accuracy == pytest.approx(acc)


class LuckyAt(Attack):
    """Breaks (exact linear ℓ∞ step) only when the radius is ``lucky``; else returns x."""

    def __init__(self, threat, w, lucky, seed=0):
        super().__init__(threat, seed=seed)
        self.w, self.lucky = w, lucky

    def _run(self, model, x, y, rand, clean_logits):
        if abs(self.threat.size - self.lucky) > 1e-12:
            return AttackResult(x.clone(), torch.zeros(x.shape[0], dtype=torch.bool), x[:, 0, 0, 0])
        s = (2 * y - 1).float().reshape(-1, 1, 1, 1)
        x_adv = (x - s * self.threat.size * self.w.sign().reshape(1, 1, 4, 4)).clamp(0, 1)
        with torch.no_grad():
            ok = misclassified(model(x_adv), y)
        return AttackResult(x_adv, ok, x[:, 0, 0, 0])


def test_curve_is_monotone_even_for_a_non_monotone_attack(linear):
    model, x, y, w, margin = linear
    grid = [0.02, 0.05, 0.1, 0.2]
    curve = robustness_curve(model, x, y, "linf", grid, lambda t, s: LuckyAt(t, w, 0.1, s))
    want, _ = analytic_robust(w, margin, "linf", grid)
    assert curve.accuracy[0] == curve.accuracy[1] == pytest.approx(58 / 60)  # nothing broken
    assert curve.accuracy[2] < curve.accuracy[1]
    # broken at 0.1 => broken at 0.2 although the attack fails there
    assert curve.accuracy[2] == curve.accuracy[3]
    assert torch.equal(curve.robust[:, 2], want[:, 2])
    assert torch.equal(curve.robust[:, 3], want[:, 2])


@dataclass
class FakeMinNormResult(AttackResult):
    norms: torch.Tensor | None = None
    x_min: torch.Tensor | None = None


class ExactMinNorm(Attack):
    """Exact minimum-ℓ∞ perturbation of the linear model (1 + 1e-4 overshoot); counts calls."""

    calls = 0

    def __init__(self, threat, w, seed=0):
        super().__init__(threat, seed=seed)
        self.w = w

    def _run(self, model, x, y, rand, clean_logits):
        type(self).calls += 1
        f = clean_logits[:, 1] - clean_logits[:, 0]
        m = (2 * y - 1) * f
        r = (m / self.w.abs().sum()).clamp_min(0) * (1 + 1e-4)
        s = (2 * y - 1).float()
        delta = -(s * r).reshape(-1, 1, 1, 1) * self.w.sign().reshape(1, 1, 4, 4)
        x_min = x + delta
        inside = r <= self.threat.size
        x_adv = torch.where(inside.reshape(-1, 1, 1, 1), x_min, x)
        with torch.no_grad():
            ok = misclassified(model(x_adv), y)
        return FakeMinNormResult(x_adv, ok, r, None, r, x_min)


def test_min_norm_attack_gives_the_curve_from_one_run(linear):
    model, x, y, w, margin = linear
    grid = [0.0, 0.02, 0.05, 0.1, 0.2]
    ExactMinNorm.calls = 0
    curve = robustness_curve(model, x, y, "linf", grid, lambda t, s: ExactMinNorm(t, w, s))
    assert curve.method == "min-norm" and ExactMinNorm.calls == 1
    want, r = analytic_robust(w, margin, "linf", grid)
    far = torch.stack([(r - e).abs() > 1e-3 for e in grid], dim=1)
    assert torch.equal(curve.robust[far], want[far])


def test_deepfool_min_norm_curve(linear):
    minnorm = pytest.importorskip("unionrobust.attacks.linearised")
    model, x, y, w, margin = linear
    grid = [0.05, 0.1, 0.2]
    curve = robustness_curve(model, x, y, "l2", grid, lambda t, s: minnorm.DeepFool(t, seed=s))
    assert curve.method == "min-norm"
    want, r = analytic_robust(w, margin, "l2", grid)
    far = torch.stack([(r - e).abs() > 0.05 * e for e in grid], dim=1)
    assert torch.equal(curve.robust[far], want[far])


def test_union_curve_is_the_and_of_members(linear):
    model, x, y, _, _ = linear
    curves = union_curve(model, x, y, "linf:0.1, l2:0.2", scales=[0.5, 1.0], steps=10)
    assert [c.label for c in curves] == ["linf", "l2", "union"]
    assert curves[0].eps == [0.05, 0.1] and curves[1].eps == [0.1, 0.2]
    both = curves[0].robust & curves[1].robust
    assert torch.equal(curves[2].robust, both)
    for k in range(2):
        assert curves[2].accuracy[k] <= min(curves[0].accuracy[k], curves[1].accuracy[k])
    rep = evaluate(
        model, x, y, threats="linf:0.1, l2:0.2", suite=["pgd"], progress=False, diagnostics=False
    )
    # same attacks at s = 1 on every point as the engine: the same union accuracy
    assert curves[2].accuracy[1] <= rep.union_accuracy + 1e-12


@pytest.mark.parametrize("grid", [[], [0.1, 0.05], [-0.1, 0.2], [0.1, float("nan")]])
def test_bad_grids_are_refused(linear, grid):
    model, x, y, _, _ = linear
    with pytest.raises(UnionRobustError, match="eps grid"):
        robustness_curve(model, x, y, "linf", grid)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    norm=st.sampled_from(["linf", "l2", "l1"]),
    grid=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=4, unique=True).map(sorted),
)
def test_curves_of_a_random_mlp_are_monotone(seed, norm, grid):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(12, 1, 4, 4)
    y = torch.arange(12) % 3
    curve = robustness_curve(model, x, y, norm, grid, "fgsm", seed=seed)
    r = curve.robust.int()
    assert bool((r[:, 1:] <= r[:, :-1]).all())  # per example: once broken, broken after
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double().mean().item()
    assert all(a <= clean + 1e-12 for a in curve.accuracy)
    if grid[0] == 0.0:
        assert curve.accuracy[0] == pytest.approx(clean)
