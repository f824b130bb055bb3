"""Tramèr & Boneh §2 (synthetic task, Theorem 1) and §4 (OPT bounds)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unionrobust.errors import UnionRobustError
from unionrobust.theory import (
    LinearClassifier,
    SyntheticTask,
    coupling_risks,
    exact_linear_risks,
    linear_family,
    monte_carlo_linear_risks,
    natural_classifier,
    opt_bounds,
    theorem1_experiment,
    union_risk_range,
)
from unionrobust.theory.synthetic import coupling_perturbations
from unionrobust.theory.theorem1 import (
    l1_robust_classifier,
    linf_robust_classifier,
    nonlinear_family,
)

PHI = NormalDist().cdf  # an implementation independent of the module's erfc-based one


def test_generator_statistics():
    task = SyntheticTask(d=20, alpha=1.5, p0=0.8)
    n = 40_000
    x, y = task.sample(n, seed=3)
    assert x.shape == (n, 21) and x.dtype == np.float64 and y.shape == (n,)
    assert set(np.unique(y)) == {-1, 1}
    assert abs((y == 1).mean() - 0.5) < 4 * math.sqrt(0.25 / n)
    assert set(np.unique(x[:, 0])) == {-1.0, 1.0}
    agree = (x[:, 0] == y).mean()
    assert abs(agree - 0.8) < 4 * math.sqrt(0.16 / n)
    z = x[:, 1:] * y[:, None]  # y·x_i ~ N(η, 1) for both classes
    assert abs(z.mean() - task.eta) < 4 / math.sqrt(z.size)
    assert abs(z.var() - 1.0) < 0.02
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 4 / math.sqrt(n)  # independent features
    assert task.eta == pytest.approx(1.5 / math.sqrt(20))
    assert (task.eps_inf, task.eps_1) == (pytest.approx(2 * task.eta), 2.0)
    x2, y2 = task.sample(n, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert not np.array_equal(task.sample(100, seed=4)[0], x[:100])


def test_section_2_3_classifiers_closed_forms():
    # hand-derived: f = sign(x0) keeps margin 1 > 2η under ℓ∞ and is flipped by ℓ1 with ε = 2;
    # h = sign(Σ x_i): y·Σx_i ~ N(α√d, d), ℓ∞ drop 2ηd = 2α√d, ℓ1 drop 2
    d, alpha, p0 = 64, 2.0, 0.85
    task = SyntheticTask(d, alpha, p0)
    f = exact_linear_risks(task, linf_robust_classifier(task))
    assert (f.clean, f.linf, f.l1, f.rmax) == pytest.approx((1 - p0, 1 - p0, 1.0, 1.0))
    h = exact_linear_risks(task, l1_robust_classifier(task))
    assert h.clean == pytest.approx(PHI(-alpha))
    assert h.linf == pytest.approx(PHI(alpha))
    assert h.l1 == pytest.approx(PHI(2 / math.sqrt(d) - alpha))
    assert h.rmax == pytest.approx(max(h.linf, h.l1))
    const = exact_linear_risks(task, LinearClassifier("c", 0.0, np.zeros(d), 1.0))
    assert (const.clean, const.linf, const.l1) == pytest.approx((0.5, 0.5, 0.5))


def test_natural_classifier_is_accurate_but_not_robust():
    task = SyntheticTask(d=100, alpha=2.0, p0=0.9)
    nat = exact_linear_risks(task, natural_classifier(task))
    assert (
        nat.clean < 0.02
    )  # the test below is not vacuous: a good classifier still has R_avg ≥ 1/2
    assert nat.avg >= 0.5
    for clf in linear_family(task, n_mix=5):  # and the Bayes classifier is the most accurate
        assert exact_linear_risks(task, clf).clean >= nat.clean - 1e-12


@pytest.mark.parametrize("index", [2, 3, 6, 10, 14, 16, 19, 21])
def test_exact_risks_match_monte_carlo(index):
    task = SyntheticTask(d=40, alpha=1.5, p0=0.75)
    clf = linear_family(task, n_mix=5)[index]
    n = 20_000
    exact = exact_linear_risks(task, clf)
    mc = monte_carlo_linear_risks(task, clf, n=n, seed=index)
    for a, b in [
        (exact.clean, mc.clean),
        (exact.linf, mc.linf),
        (exact.l1, mc.l1),
        (exact.rmax, mc.rmax),
    ]:
        assert abs(a - b) <= 4.5 * math.sqrt(max(a * (1 - a), 1e-4) / n), clf.name
    assert abs(exact.avg - mc.avg) <= 4.5 * mc.stderr + 1e-3


def test_worst_perturbation_in_ball_and_optimal():
    task = SyntheticTask(d=30)
    rng = np.random.default_rng(0)
    clf = LinearClassifier("r", 0.7, rng.standard_normal(30), 0.3)
    x, y = task.sample(50, seed=1)
    margin = y * clf.scores(x)
    for threat, eps, norm in [
        ("linf", 0.2, lambda r: np.abs(r).max(1)),
        ("l1", 2.0, lambda r: np.abs(r).sum(1)),
    ]:
        r = clf.worst_perturbation(y, threat, eps)
        assert (norm(r) <= eps * (1 + 1e-12)).all()
        drop = margin - y * clf.scores(x + r)
        assert drop == pytest.approx(np.full(50, clf.margin_drop(threat, eps)))
        for _ in range(200):  # no random point of the ball lowers any margin more
            if threat == "linf":
                q = eps * rng.uniform(0, 1, (50, 31)) ** 0.2 * rng.choice([-1, 1], (50, 31))
            else:
                q = rng.standard_normal((50, 31)) ** 3
                q *= eps / np.abs(q).sum(1, keepdims=True)
            assert (margin - y * clf.scores(x + q) <= clf.margin_drop(threat, eps) + 1e-9).all()
    with pytest.raises(UnionRobustError, match="valid: l1, linf"):
        clf.margin_drop("l2", 1.0)


def test_coupling_perturbations_norms_and_lower_bounds():
    task = SyntheticTask(d=50, alpha=2.0, p0=0.8)
    x, y = task.sample(100, seed=0)
    r_inf, r_1 = coupling_perturbations(task, x, y)
    assert np.abs(r_inf).max(1) == pytest.approx(np.full(100, task.eps_inf))
    assert np.abs(r_1).sum(1) == pytest.approx(np.full(100, 2.0))
    n = 10_000
    for clf in [natural_classifier(task), *linear_family(task, n_mix=4)[4:8]]:
        exact = exact_linear_risks(task, clf)
        lower = coupling_risks(task, clf.predict, clf.name, n=n, seed=1)
        for a, b in [(exact.linf, lower.linf), (exact.l1, lower.l1), (exact.rmax, lower.rmax)]:
            assert b <= a + 4.5 * math.sqrt(max(a * (1 - a), 1e-4) / n)
        assert lower.avg >= 0.5 - 3 * lower.stderr


def test_theorem1_experiment_holds_at_the_theorem_radii():
    task = SyntheticTask(d=100, alpha=2.0, p0=0.9)
    res = theorem1_experiment(task, n_mix=7, n_samples=6000, seed=0)
    assert res.holds
    assert {r.method for r in res.rows} == {"exact", "coupling-lower-bound"}
    assert len(res.rows) >= 20
    for r in res.rows:
        assert r.avg >= 0.5 - 3 * r.stderr - 1e-12, r.name
        assert r.rmax >= max(r.linf, r.l1) - 1e-12  # R_max ≥ R_avg
    # the single-threat optimum is far better than 1/2: the trade-off is real
    assert res.best_single["linf"] == pytest.approx(0.1)
    assert res.best_single["l1"] < 0.1
    bounds = res.as_dict()["opt_bounds"]
    assert bounds["opt_avg"] < 0.1 and bounds["opt_max"] == pytest.approx(0.1)
    for name, fn in nonlinear_family(task):  # non-linear models are accurate, so not vacuous
        assert (fn(task.sample(2000, seed=9)[0]) != 0).all(), name


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 400), alpha=st.floats(0.1, 5.0), p0=st.floats(0.5, 0.99))
def test_theorem1_exact_family_any_parameters(d, alpha, p0):
    res = theorem1_experiment(SyntheticTask(d, alpha, p0), n_mix=6, n_samples=0)
    assert res.min_avg >= 0.5 - 1e-12


def test_bound_fails_below_the_theorem_radii():
    # with the ℓ1 radius below 1, f = sign(x0) keeps risk 1 − p0 under both types
    task = SyntheticTask(d=100, alpha=2.0, p0=0.9)
    res = theorem1_experiment(task, n_mix=5, n_samples=0, radius_scale=0.4)
    assert not res.holds
    assert res.min_avg == pytest.approx(0.1)


def test_opt_bounds():
    b = opt_bounds({"linf": 1 - 0.914, "rt": 1 - 0.946})  # the paper's MNIST ℓ∞/RT example
    assert 1 - b.opt_max == pytest.approx(0.914)
    assert 1 - b.opt_avg == pytest.approx(0.93)
    assert opt_bounds([0.2, 0.4, 0.9]).opt_avg == pytest.approx(0.5)
    assert opt_bounds([0.2, 0.4, 0.9]).opt_max == 0.9
    assert opt_bounds([0.3]).as_dict()["opt_max_accuracy"] == pytest.approx(0.7)
    assert union_risk_range([0.2, 0.3]) == pytest.approx((0.3, 0.5))
    assert union_risk_range({"a": 0.7, "b": 0.6}) == (0.7, 1.0)
    for bad in ([], [1.5], [-0.1], {"x": float("nan")}, ["a"]):
        with pytest.raises(UnionRobustError):
            opt_bounds(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"d": 0}, "integer >= 1"),
        ({"alpha": -1.0}, "alpha"),
        ({"p0": 0.3}, "p0"),
        ({"p0": 1.0}, "p0"),
    ],
)
def test_bad_task_parameters(kwargs, match):
    with pytest.raises(UnionRobustError, match=match):
        SyntheticTask(**kwargs)


def test_bad_experiment_arguments():
    task = SyntheticTask(d=10)
    with pytest.raises(UnionRobustError, match="radius_scale"):
        theorem1_experiment(task, radius_scale=-1)
    with pytest.raises(UnionRobustError, match="n_mix"):
        theorem1_experiment(task, n_mix=1)
    with pytest.raises(UnionRobustError, match="weak-feature weights"):
        exact_linear_risks(task, LinearClassifier("bad", 1.0, np.ones(3)))
    with pytest.raises(UnionRobustError, match="samples"):
        task.sample(-1)
