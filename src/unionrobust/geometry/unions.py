"""Geometry of unions of ℓp balls: which radii a union (or its convex hull) actually covers.

Pure float64 mathematics (no tensors, no models). All balls are centred at 0 in R^d and the
pixel box [0,1]^d is ignored: the results describe the perturbation sets themselves, as in
Croce & Hein (2022, §3.1) and Wang et al. (App. E.3). Near the box faces the sets B ∩ box are
smaller, so these radii are what the threat models allow *at most*.

Notation: ``B_p(ε) = {x : ‖x‖_p ≤ ε}``, ``U = B_1(ε1) ∪ B_∞(ε∞)``, ``C = conv(U)``,
``k = ε1/ε∞`` and ``1/p + 1/q = 1``. The non-trivial regime (neither ball inside the other) is
``ε∞ < ε1 < d·ε∞``; outside it the union is a single ball and every function below still gives
the exact answer for that ball.

Derivations (written out because the printed formulas of the paper are the target, not the
source — the tests check every function against brute force):

* **Largest ℓp ball in the union** (Croce & Hein 2022, Prop. 3.1). ``B_p(r) ⊆ U`` iff
  ``r ≤ r* = min{‖x‖_p : ‖x‖_1 ≥ ε1, ‖x‖_∞ ≥ ε∞}`` (the closure of the complement of U). By
  symmetry take ``x ≥ 0`` with ``x_1 = ‖x‖_∞``. For p > 1 the other coordinates are best spread
  equally, ``x_i = (ε1 − x_1)/(d−1)``, and ``x_1^p + (d−1)((ε1−x_1)/(d−1))^p`` increases for
  ``x_1 ≥ ε1/d``; hence ``x_1 = max(ε∞, ε1/d)`` and, in the non-trivial regime,
  ``r* = (ε∞^p + (ε1−ε∞)^p / (d−1)^(p−1))^(1/p)``; ``r* = ε1`` for p = 1, ``ε∞`` for p = ∞.
  The minimiser (:func:`union_boundary_point`) does not depend on p.
* **Largest ℓp ball in the convex hull** (Croce & Hein 2022, Thm. 3.1). ``B_p(r) ⊆ C`` iff
  ``r‖v‖_q ≤ h_C(v)`` for every v, with support function ``h_C(v) = max(ε1‖v‖_∞, ε∞‖v‖_1)``.
  Normalise ``‖v‖_∞ = 1`` and let ``S = ‖v‖_1 ∈ [1, d]``; the largest ``‖v‖_q`` with that S puts
  ⌊S⌋ coordinates at 1 and one at frac(S), so ``r* = min_S max(ε1, ε∞S) / (⌊S⌋ + frac(S)^q)^(1/q)``.
  The ratio decreases for S ≤ k and increases for S ≥ k, so ``S = clip(k, 1, d)`` and, in the
  non-trivial regime, ``r* = ε1 / (⌊k⌋ + α^q)^(1/q)`` with ``α = k − ⌊k⌋`` (for p = 2:
  ``ε1 / sqrt(k − α + α²)``). An affine classifier robust on B_1(ε1) and on B_∞(ε∞) is robust on
  C (a half-space containing both balls contains their hull) — E-AT's argument.
* **Ball containment**: ``B_p(a) ⊆ B_q(b)`` iff ``a·c_{p→q} ≤ b`` with the norm-equivalence
  constant ``c_{p→q} = max_{x≠0} ‖x‖_q/‖x‖_p`` = 1 if q ≥ p, else ``d^(1/q − 1/p)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from unionrobust.errors import UnionRobustError, check_finite, check_int

#: relative tolerance of the containment tests (float rounding of d^(1/q-1/p) etc.)
REL_TOL = 1e-12


def check_p(p: float | str, name: str = "p") -> float:
    """``p`` as a float in [1, ∞] (accepts ``math.inf``, "inf", "linf", "l2", 2, ...)."""
    value = p
    if isinstance(p, str):
        s = p.strip().lower()
        s = s[1:] if s.startswith("l") else s
        value = math.inf if s in ("inf", "∞") else s
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise UnionRobustError(f"{name} must be a number >= 1 or 'inf', got {p!r}") from None
    if math.isnan(out) or out < 1:
        raise UnionRobustError(f"{name} must be >= 1 (an ℓp norm), got {p!r}")
    return out


def check_dim(d: int) -> int:
    """``d`` as an int >= 1 (errors.py's integer check, named "dimension d")."""
    return check_int("dimension d", d, 1)


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (1 ↔ ∞)."""
    p = check_p(p)
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)


def _inv(p: float) -> float:
    return 0.0 if math.isinf(p) else 1.0 / p


def lp_norm(x: np.ndarray, p: float) -> float:
    """‖x‖_p of a vector (overflow-safe for large p)."""
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    m = float(a.max()) if a.size else 0.0
    if m == 0.0 or math.isinf(p):
        return m
    return m * float(np.sum((a / m) ** p)) ** (1.0 / p)


def norm_ratio(p: float, q: float, d: int) -> float:
    """``c_{p→q} = max_{x≠0} ‖x‖_q / ‖x‖_p`` in R^d: 1 if q ≥ p, else ``d^(1/q − 1/p)``."""
    p, q, d = check_p(p, "p"), check_p(q, "q"), check_dim(d)
    if q >= p:
        return 1.0
    return float(d) ** (_inv(q) - _inv(p))


def ball_contains(p: float, eps_p: float, q: float, eps_q: float, d: int) -> bool:
    """Whether ``B_p(eps_p) ⊆ B_q(eps_q)`` in R^d (box ignored): ``eps_p·c_{p→q} ≤ eps_q``.

    Exact up to a relative tolerance of ``REL_TOL`` on the float constant ``c_{p→q}``.
    """
    eps_p, eps_q = check_finite("eps_p", eps_p, 0.0), check_finite("eps_q", eps_q, 0.0)
    return eps_p * norm_ratio(p, q, d) <= eps_q * (1 + REL_TOL)


def regime(d: int, eps1: float, epsinf: float) -> str:
    """Which of the two balls B_1(eps1), B_∞(epsinf) is inside the other, if any.

    Returns ``"l1-inside-linf"`` (eps1 ≤ epsinf), ``"linf-inside-l1"`` (eps1 ≥ d·epsinf) or
    ``"non-trivial"`` (epsinf < eps1 < d·epsinf, Croce & Hein 2022 §3.1).
    """
    d = check_dim(d)
    eps1, epsinf = check_finite("eps1", eps1, 0.0), check_finite("epsinf", epsinf, 0.0)
    if ball_contains(1, eps1, math.inf, epsinf, d):
        return "l1-inside-linf"
    if ball_contains(math.inf, epsinf, 1, eps1, d):
        return "linf-inside-l1"
    return "non-trivial"


def union_boundary_point(d: int, eps1: float, epsinf: float) -> np.ndarray:
    """The point of the closed complement of ``B_1(eps1) ∪ B_∞(epsinf)`` nearest to 0 in every
    ℓp norm, p ∈ (1, ∞) (Croce & Hein 2022, Prop. 3.1; see the module docstring):
    ``x_1 = max(ε∞, ε1/d)``, ``x_i = max(0, ε1 − x_1)/(d − 1)`` for i ≥ 2.

    It lies on the boundary of the union: any multiple ``(1+t)·x``, t > 0, is outside it.
    """
    d = check_dim(d)
    eps1, epsinf = check_finite("eps1", eps1, 0.0), check_finite("epsinf", epsinf, 0.0)
    x = np.zeros(d, dtype=np.float64)
    x[0] = max(epsinf, eps1 / d)
    if d > 1:
        x[1:] = max(0.0, eps1 - x[0]) / (d - 1)
    return x


def largest_lp_ball_in_union(d: int, eps1: float, epsinf: float, p: float = 2) -> float:
    """Largest r with ``B_p(r) ⊆ B_1(eps1) ∪ B_∞(epsinf)`` in R^d, box ignored.

    Croce & Hein (2022) Prop. 3.1, for every p ∈ [1, ∞]: in the non-trivial regime
    ``r = (ε∞^p + (ε1 − ε∞)^p / (d − 1)^(p−1))^(1/p)`` (ε1 for p = 1, ε∞ for p = ∞); outside it
    the radius of the largest ℓp ball in the bigger of the two balls.
    """
    p = check_p(p)
    return lp_norm(union_boundary_point(d, eps1, epsinf), p)


def _hull_level(d: int, eps1: float, epsinf: float) -> float:
    """``S* = clip(ε1/ε∞, 1, d)``: the ℓ1 norm of the worst dual direction with ‖v‖_∞ = 1."""
    if epsinf == 0.0:
        return float(d)
    return min(max(eps1 / epsinf, 1.0), float(d))


def _worst_dual_direction(d: int, s: float) -> np.ndarray:
    """v ≥ 0 with ‖v‖_∞ = 1, ‖v‖_1 = s and the largest ‖v‖_q for every q: ⌊s⌋ ones, then frac(s)."""
    m = min(math.floor(s), d)
    v = np.zeros(d, dtype=np.float64)
    v[:m] = 1.0
    if m < d:
        v[m] = s - m
    return v


def largest_lp_ball_in_hull(d: int, eps1: float, epsinf: float, p: float = 2) -> float:
    """Largest r with ``B_p(r) ⊆ conv(B_1(eps1) ∪ B_∞(epsinf))`` in R^d, box ignored.

    Croce & Hein (2022) Thm. 3.1, for every p ∈ [1, ∞]: with ``k = ε1/ε∞``, ``α = k − ⌊k⌋`` and
    ``1/p + 1/q = 1``, in the non-trivial regime ``r = ε1 / (⌊k⌋ + α^q)^(1/q)``; derived from the
    support function ``max(ε1‖v‖_∞, ε∞‖v‖_1)`` (module docstring).
    """
    d = check_dim(d)
    eps1, epsinf = check_finite("eps1", eps1, 0.0), check_finite("epsinf", epsinf, 0.0)
    p = check_p(p)
    q = dual_exponent(p)
    s = _hull_level(d, eps1, epsinf)
    support = max(eps1, epsinf * s)  # h_C(v*) with ‖v*‖_∞ = 1, ‖v*‖_1 = s
    qnorm = lp_norm(_worst_dual_direction(d, s), q)
    return support / qnorm


def hull_boundary_point(d: int, eps1: float, epsinf: float, p: float = 2) -> np.ndarray:
    """A point x with ``‖x‖_p = largest_lp_ball_in_hull(...)`` on the boundary of the hull.

    It is the Hölder-dual point of the worst direction v*: ``x_i ∝ v*_i^(q−1)`` (x ∝ e_1 for p = 1,
    x ∝ 1 for p = ∞), so ``⟨x, v*⟩ = ‖x‖_p‖v*‖_q = h_C(v*)`` and ``(1+t)·x`` is outside the hull.
    """
    p = check_p(p)
    r = largest_lp_ball_in_hull(d, eps1, epsinf, p)
    d = int(d)
    if p == 1:
        x = np.zeros(d)
        x[0] = 1.0
    elif math.isinf(p):
        x = np.ones(d)
    else:
        v = _worst_dual_direction(d, _hull_level(d, float(eps1), float(epsinf)))
        x = v ** (dual_exponent(p) - 1.0)
    return r * x / lp_norm(x, p)


def overlap_range(d: int, radius: float, p: float = 2, q: float = math.inf) -> tuple[float, float]:
    """Open interval of radii ε_q for which ``B_q(ε_q)`` and ``B_p(radius)`` are not nested.

    Wang et al. (App. E.3, after Araujo et al. 2019): both balls contain 0, so they always
    intersect; for ``lo < ε_q < hi`` neither contains the other, so training on one does not cover
    the other. Precisely: ``B_q(ε) ⊆ B_p(radius)`` iff ``ε ≤ lo = radius / c_{q→p}`` and
    ``B_p(radius) ⊆ B_q(ε)`` iff ``ε ≥ hi = radius·c_{p→q}``. For p = 2, q = ∞:
    ``(radius/√d, radius)``; equivalently an ℓ2 radius overlaps B_∞(ε∞) for ε∞ < ε2 < ε∞√d.
    The interval is empty (lo == hi) when p == q or d == 1.
    """
    d = check_dim(d)
    radius = check_finite("radius", radius, 0.0)
    p, q = check_p(p, "p"), check_p(q, "q")
    return radius / norm_ratio(q, p, d), radius * norm_ratio(p, q, d)


@dataclass(frozen=True)
class L2Coverage:
    """E-AT's rule (Croce & Hein 2022 §3.1–3.2): does ℓ1+ℓ∞ training cover ``B_2(eps2)``?

    ``covered_by_hull``: the largest ℓ2 ball in conv(B_1 ∪ B_∞) has radius ≥ eps2 — sufficient
    for affine classifiers (and E-AT's heuristic for ReLU networks); this is the rule, and
    ``bool(coverage)`` returns it. ``covered_by_union``: even the union itself contains
    ``B_2(eps2)`` — a guarantee for every classifier. Box ignored.
    """

    d: int
    eps1: float
    epsinf: float
    eps2: float
    hull_radius: float
    union_radius: float
    covered_by_hull: bool
    covered_by_union: bool

    def __bool__(self) -> bool:
        return self.covered_by_hull

    def as_dict(self) -> dict:
        return asdict(self)


def eat_covers_l2(d: int, eps1: float, epsinf: float, eps2: float) -> L2Coverage:
    """Apply E-AT's rule: train on ℓ1 and ℓ∞ only iff the hull's ℓ2 radius (Thm. 3.1) ≥ eps2."""
    eps2 = check_finite("eps2", eps2, 0.0)
    hull = largest_lp_ball_in_hull(d, eps1, epsinf, 2)
    union = largest_lp_ball_in_union(d, eps1, epsinf, 2)
    return L2Coverage(
        d=int(d),
        eps1=float(eps1),
        epsinf=float(epsinf),
        eps2=eps2,
        hull_radius=hull,
        union_radius=union,
        covered_by_hull=eps2 <= hull * (1 + REL_TOL),
        covered_by_union=eps2 <= union * (1 + REL_TOL),
    )


__all__ = [
    "L2Coverage",
    "ball_contains",
    "dual_exponent",
    "eat_covers_l2",
    "hull_boundary_point",
    "largest_lp_ball_in_hull",
    "largest_lp_ball_in_union",
    "lp_norm",
    "norm_ratio",
    "overlap_range",
    "regime",
    "union_boundary_point",
]
