"""Geometry of unions (Croce & Hein 2022 Prop. 3.1 / Thm. 3.1, Wang App. E.3) vs brute force.

The references here never use the closed forms: the union is tested through its radial function
along sampled directions (x ∈ U iff ‖x‖_1 ≤ ε1 or ‖x‖_∞ ≤ ε∞), the convex hull through a linear
program over its vertices (±ε1·e_i and ε∞·{±1}^d), and containment by sampling.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unionrobust.errors import UnionRobustError
from unionrobust.geometry.unions import (
    ball_contains,
    eat_covers_l2,
    hull_boundary_point,
    largest_lp_ball_in_hull,
    largest_lp_ball_in_union,
    overlap_range,
    regime,
    union_boundary_point,
)

scipy_optimize = pytest.importorskip("scipy.optimize")
scipy_spatial = pytest.importorskip("scipy.spatial")

PS = [1.0, 1.5, 2.0, 3.0, math.inf]


def _norms(x: np.ndarray, p: float) -> np.ndarray:
    a = np.abs(x)
    return a.max(axis=-1) if math.isinf(p) else (a**p).sum(axis=-1) ** (1 / p)


def _sphere(n: int, d: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """n points on the ℓp unit sphere (random directions plus the extreme ones e_1, 1, mixes)."""
    u = rng.standard_normal((n, d)) * rng.exponential(size=(n, 1)) ** rng.uniform(0, 3, (n, 1))
    extra = [np.eye(d)[0], np.ones(d)]
    for m in range(1, d):
        extra.append(np.r_[np.ones(m), rng.uniform(0, 1), np.zeros(d - m - 1)])
    u = np.vstack([u, *extra])
    return u / _norms(u, p)[:, None]


def _union_radial(u: np.ndarray, eps1: float, epsinf: float) -> np.ndarray:
    """Distance (in units of u) from 0 to the boundary of B_1 ∪ B_∞ along each row u."""
    with np.errstate(divide="ignore"):
        return np.maximum(eps1 / _norms(u, 1), epsinf / _norms(u, math.inf))


def _hull_vertices(d: int, eps1: float, epsinf: float) -> np.ndarray:
    cols = [s * eps1 * np.eye(d)[i] for i in range(d) for s in (1.0, -1.0)]
    cols += [epsinf * np.array(s) for s in itertools.product((1.0, -1.0), repeat=d)]
    return np.array(cols).T


def _hull_gauge(x: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Minkowski gauge of conv(vertices) at the rows of x (x ∈ hull iff ≤ 1), from Qhull's facets
    ``n·z + b ≤ 0`` (b < 0 as 0 is interior): gauge(x) = max_f n_f·x / (−b_f)."""
    eq = scipy_spatial.ConvexHull(vertices.T).equations
    return (np.atleast_2d(x) @ eq[:, :-1].T / -eq[:, -1]).max(axis=1)


def _in_union(x: np.ndarray, eps1: float, epsinf: float, tol: float = 1e-12) -> bool:
    return bool(_norms(x, 1) <= eps1 * (1 + tol) or _norms(x, math.inf) <= epsinf * (1 + tol))


radii = st.floats(0.05, 5.0)


@settings(max_examples=40, deadline=None)
@given(d=st.integers(2, 4), eps1=radii, ratio=st.floats(0.3, 6.0), p=st.sampled_from(PS))
def test_union_radius_matches_radial_brute_force(d, eps1, ratio, p):
    epsinf = eps1 / ratio / d * 2  # covers all three regimes (k = ε1/ε∞ from d/12 to 3.3d)
    r = largest_lp_ball_in_union(d, eps1, epsinf, p)
    rng = np.random.default_rng(0)
    rho = _union_radial(_sphere(4000, d, p, rng), eps1, epsinf)
    assert rho.min() >= r * (1 - 1e-9)  # B_p(r) ⊆ U along every sampled direction
    # a slightly larger radius fails: the boundary point has ‖x‖_p = r and (1+1e-6)x ∉ U
    x = union_boundary_point(d, eps1, epsinf)
    assert _norms(x, p) == pytest.approx(r, rel=1e-12)
    assert _in_union(x, eps1, epsinf, tol=1e-9)
    assert not _in_union(x * (1 + 1e-6), eps1, epsinf, tol=0)


@pytest.mark.parametrize("p", PS)
def test_union_radius_tight_in_2d_dense_grid(p):
    # no help from the closed form: the minimum of the radial function over a fine grid of angles
    theta = np.linspace(0, 2 * np.pi, 100_001)
    u = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    u /= _norms(u, p)[:, None]
    for eps1, epsinf in [(1.5, 1.0), (1.0, 0.7), (3.0, 1.0), (0.5, 1.0)]:
        brute = _union_radial(u, eps1, epsinf).min()
        assert brute == pytest.approx(largest_lp_ball_in_union(2, eps1, epsinf, p), rel=1e-4)


def test_union_radius_vs_local_optimisation_d4():
    # derivative-free local minimisation of the radial function from many random starts
    rng = np.random.default_rng(1)
    d, eps1, epsinf = 4, 2.0, 0.8
    for p in (1.5, 2.0, 3.0):
        r = largest_lp_ball_in_union(d, eps1, epsinf, p)

        def f(u, p=p):
            u = np.asarray(u)
            return float(_union_radial((u / _norms(u, p))[None], eps1, epsinf)[0])

        best = min(
            scipy_optimize.minimize(f, rng.standard_normal(d), method="Nelder-Mead").fun
            for _ in range(15)
        )
        assert best >= r * (1 - 1e-9)
        assert best == pytest.approx(r, rel=1e-3)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 4), eps1=radii, ratio=st.floats(0.3, 6.0), p=st.sampled_from(PS))
def test_hull_radius_matches_lp_brute_force(d, eps1, ratio, p):
    epsinf = eps1 / ratio / d * 2
    r = largest_lp_ball_in_hull(d, eps1, epsinf, p)
    vertices = _hull_vertices(d, eps1, epsinf)
    rng = np.random.default_rng(2)
    # B_p(r) ⊆ hull: every sampled point of radius r is inside
    assert _hull_gauge(r * _sphere(4000, d, p, rng), vertices).max() <= 1 + 1e-9
    x = hull_boundary_point(d, eps1, epsinf, p)  # a slightly larger radius fails
    assert _norms(x, p) == pytest.approx(r, rel=1e-12)
    assert _hull_gauge(x, vertices)[0] == pytest.approx(1.0, abs=1e-9)
    assert _hull_gauge(x * (1 + 1e-6), vertices)[0] > 1
    # the same facts from an LP over the vertices (no Qhull): min Σλ s.t. Vλ = x, λ ≥ 0
    res = scipy_optimize.linprog(
        np.ones(vertices.shape[1]), A_eq=vertices, b_eq=x, bounds=(0, None), method="highs"
    )
    assert res.status == 0 and res.fun == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("p", PS)
def test_hull_radius_tight_in_2d_dense_grid(p):
    theta = np.linspace(0, 2 * np.pi, 100_001)
    u = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    u /= _norms(u, p)[:, None]
    for eps1, epsinf in [(1.5, 1.0), (1.2, 0.9), (0.5, 1.0), (3.0, 1.0)]:
        brute = (1 / _hull_gauge(u, _hull_vertices(2, eps1, epsinf))).min()
        assert brute == pytest.approx(largest_lp_ball_in_hull(2, eps1, epsinf, p), rel=1e-4)


@settings(max_examples=60, deadline=None)
@given(d=st.integers(1, 50), eps1=radii, epsinf=st.floats(0.01, 2.0), p=st.sampled_from(PS))
def test_monotone_and_ordered(d, eps1, epsinf, p):
    u = largest_lp_ball_in_union(d, eps1, epsinf, p)
    h = largest_lp_ball_in_hull(d, eps1, epsinf, p)
    single = max(epsinf, eps1 * d ** ((0 if math.isinf(p) else 1 / p) - 1))  # bigger ball alone
    assert single * (1 - 1e-12) <= u <= h * (1 + 1e-12)
    for f in (largest_lp_ball_in_union, largest_lp_ball_in_hull):
        r = f(d, eps1, epsinf, p)
        assert f(d, eps1 * 1.1, epsinf, p) >= r * (1 - 1e-12)
        assert f(d, eps1, epsinf * 1.1, p) >= r * (1 - 1e-12)
        assert f(d, eps1, epsinf, min(p * 1.5, math.inf)) <= r * (1 + 1e-12)  # ‖·‖_p ↓ in p


def test_nested_regimes_reduce_to_one_ball():
    d = 9
    assert regime(d, 0.5, 1.0) == "l1-inside-linf"
    assert regime(d, 9.0, 1.0) == "linf-inside-l1"
    assert regime(d, 3.0, 1.0) == "non-trivial"
    for p in PS:  # union == hull == the bigger ball
        assert largest_lp_ball_in_union(d, 0.5, 1.0, p) == pytest.approx(1.0)
        assert largest_lp_ball_in_hull(d, 0.5, 1.0, p) == pytest.approx(1.0)
        inner = 20.0 * d ** ((0 if math.isinf(p) else 1 / p) - 1)
        assert largest_lp_ball_in_union(d, 20.0, 1.0, p) == pytest.approx(inner)
        assert largest_lp_ball_in_hull(d, 20.0, 1.0, p) == pytest.approx(inner)


@settings(max_examples=60, deadline=None)
@given(
    d=st.integers(1, 5),
    p=st.sampled_from(PS),
    q=st.sampled_from(PS),
    eps_p=st.floats(0.1, 3.0),
    eps_q=st.floats(0.1, 3.0),
)
def test_ball_contains_consistent_with_sampling(d, p, q, eps_p, eps_q):
    pts = eps_p * _sphere(3000, d, p, np.random.default_rng(3))
    worst = _norms(pts, q).max()
    if ball_contains(p, eps_p, q, eps_q, d):
        assert worst <= eps_q * (1 + 1e-9)
    else:
        assert worst > eps_q * (1 - 1e-9)


def test_ball_contains_boundary_cases():
    assert ball_contains(2, 1.0, 1, 2.0, 4)  # ‖x‖_1 ≤ √4 ‖x‖_2, equality at 1/2·(1,1,1,1)
    assert not ball_contains(2, 1.0, 1, 1.999, 4)
    assert ball_contains(math.inf, 1.0, 2, 3.0, 9)
    assert not ball_contains(math.inf, 1.0, 2, 2.99, 9)
    assert ball_contains(1, 5.0, math.inf, 5.0, 100)


@pytest.mark.parametrize(("p", "q"), [(2, math.inf), (2, 1), (1, math.inf), (math.inf, 2)])
def test_overlap_range_is_exactly_the_non_nested_range(p, q):
    d, radius = 3, 1.0
    lo, hi = overlap_range(d, radius, p, q)
    assert lo < hi
    rng = np.random.default_rng(4)
    sp, sq = _sphere(5000, d, p, rng), _sphere(5000, d, q, rng)
    for eps in np.linspace(lo * 0.5, hi * 1.5, 23):
        q_in_p = _norms(eps * sq, p).max() <= radius * (1 + 1e-9)
        p_in_q = _norms(radius * sp, q).max() <= eps * (1 + 1e-9)
        assert (not q_in_p and not p_in_q) == (lo * (1 + 1e-9) < eps < hi * (1 - 1e-9))
        assert q_in_p == ball_contains(q, eps, p, radius, d)
        assert p_in_q == ball_contains(p, radius, q, eps, d)
    assert overlap_range(784, 2.0) == pytest.approx((2.0 / 28, 2.0))


def test_eat_rule():
    d, eps1, epsinf = 100, 2.0, 0.1  # k = 20: hull radius 2/√20 ≈ 0.447, union ≈ 0.2236
    cov = eat_covers_l2(d, eps1, epsinf, 0.4)
    assert cov.covered_by_hull and not cov.covered_by_union and bool(cov)
    assert cov.hull_radius == pytest.approx(2 / math.sqrt(20))
    assert cov.union_radius == pytest.approx(math.sqrt(0.01 + 1.9**2 / 99))
    assert not eat_covers_l2(d, eps1, epsinf, 0.5)
    assert eat_covers_l2(d, eps1, epsinf, 0.2).covered_by_union
    assert set(cov.as_dict()) >= {"hull_radius", "union_radius", "covered_by_hull"}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: largest_lp_ball_in_union(0, 1, 1), "dimension"),
        (lambda: largest_lp_ball_in_union(3, -1, 1), "eps1"),
        (lambda: largest_lp_ball_in_hull(3, 1, float("nan")), "epsinf"),
        (lambda: largest_lp_ball_in_hull(3, 1, 1, p=0.5), "p must be >= 1"),
        (lambda: ball_contains("x", 1, 2, 1, 3), "p must be a number"),
        (lambda: overlap_range(2.5, 1), "dimension"),
        (lambda: eat_covers_l2(3, 1, 1, -2), "eps2"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(UnionRobustError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_p_accepts_names():
    assert largest_lp_ball_in_hull(10, 3, 0.5, "linf") == largest_lp_ball_in_hull(10, 3, 0.5, "inf")
    assert largest_lp_ball_in_union(10, 3, 0.5, "l2") == largest_lp_ball_in_union(10, 3, 0.5, 2)
