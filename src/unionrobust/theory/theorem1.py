"""Tramèr & Boneh (2019) §2.3 made executable on :mod:`unionrobust.theory.synthetic`'s task: the
family of classifiers (natural, ℓ∞-robust, ℓ1-robust, their mixtures, non-linear ones) and the
Theorem 1 experiment (every classifier's R_avg ≥ 1/2, compared with the single-threat optima)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from unionrobust.errors import UnionRobustError
from unionrobust.theory.bounds import opt_bounds
from unionrobust.theory.synthetic import (
    LinearClassifier,
    Risks,
    SyntheticTask,
    coupling_risks,
    exact_linear_risks,
)

# --------------------------------------------------------------------------- classifier family


def natural_classifier(task: SyntheticTask) -> LinearClassifier:
    """The Bayes-optimal (natural) classifier: the log-likelihood ratio of D,
    ``log(p0/(1−p0))·x0 + 2η·Σ x_i``."""
    return LinearClassifier(
        "natural", math.log(task.p0 / (1 - task.p0)), np.full(task.d, 2 * task.eta)
    )


def linf_robust_classifier(task: SyntheticTask) -> LinearClassifier:
    """§2.3's f(x) = sign(x0): risk 1 − p0 under ℓ∞ with ε < 1, broken by ℓ1 with ε ≥ 1."""
    return LinearClassifier("f=sign(x0)", 1.0, np.zeros(task.d))


def l1_robust_classifier(task: SyntheticTask) -> LinearClassifier:
    """§2.3's h(x) = sign(Σ x_i): ℓ1-robust, broken by an ℓ∞ shift of 2η."""
    return LinearClassifier("h=sign(sum x_i)", 0.0, np.ones(task.d))


def interpolate(
    a: LinearClassifier, b: LinearClassifier, t: float, name: str | None = None
) -> LinearClassifier:
    """``(1−t)·ŵ_a + t·ŵ_b`` with ŵ = w̄/‖w̄‖_2 (biases mixed the same way)."""
    na, nb = float(np.linalg.norm(a.weights)), float(np.linalg.norm(b.weights))
    if na == 0 or nb == 0:
        raise UnionRobustError("cannot interpolate a classifier whose weights are all zero")
    wbar = (1 - t) * a.weights / na + t * b.weights / nb
    bias = (1 - t) * a.b / na + t * b.b / nb
    label = name or f"{1 - t:.2f}*[{a.name}] + {t:.2f}*[{b.name}]"
    return LinearClassifier(label, float(wbar[0]), wbar[1:], float(bias))


def linear_family(task: SyntheticTask, n_mix: int = 11, seed: int = 0) -> list[LinearClassifier]:
    """Linear classifiers of §2.3 plus sweeps mixing their features.

    The constant classifier; f (ℓ∞-robust), h (ℓ1-robust), the natural Bayes classifier;
    ``n_mix`` interpolations f↔h, f↔natural and h↔natural; classifiers using only the first k
    weak features (with and without x0); biased natural classifiers; 4 random positive mixes.
    """
    if isinstance(n_mix, bool) or not isinstance(n_mix, int) or n_mix < 2:
        raise UnionRobustError(f"n_mix must be an integer >= 2, got {n_mix!r}")
    d = task.d
    f, h, nat = linf_robust_classifier(task), l1_robust_classifier(task), natural_classifier(task)
    out = [LinearClassifier("constant +1", 0.0, np.zeros(d), 1.0), f, h, nat]
    ts = np.linspace(0, 1, n_mix)[1:-1]
    for a, b, label in ((f, h, "f->h"), (f, nat, "f->natural"), (h, nat, "h->natural")):
        out += [interpolate(a, b, float(t), f"mix {label} t={t:.2f}") for t in ts]
    for k in sorted({1, max(1, d // 10), max(1, d // 2)}):
        wk = np.r_[np.ones(k), np.zeros(d - k)]
        out.append(LinearClassifier(f"sign(sum x_1..x_{k})", 0.0, wk))
        out.append(
            LinearClassifier(f"sign(x0 + sum x_1..x_{k} / sqrt({k}))", 1.0, wk / math.sqrt(k))
        )
    scale = float(np.linalg.norm(nat.weights))
    for c in (-0.5, 0.5):
        out.append(LinearClassifier(f"natural, bias {c:+.1f}*|w|", nat.w0, nat.w, c * scale))
    rng = np.random.default_rng(seed)
    for i in range(4):
        w = np.abs(rng.standard_normal(d)) * rng.uniform(0, 2)
        out.append(LinearClassifier(f"random mix #{i}", float(rng.uniform(0, 3)), w / math.sqrt(d)))
    return out


def nonlinear_family(task: SyntheticTask) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """A few non-linear classifiers (evaluated by :func:`coupling_risks`)."""
    sd = math.sqrt(task.d)
    half = max(1, task.d // 2)

    def switch(x):  # trust the weak features only when they are confident
        s = x[:, 1:].sum(axis=1) / sd
        return np.where(np.abs(s) > task.alpha, np.sign(s), np.sign(x[:, 0])).astype(np.int64)

    def majority(x):  # vote of x0 and two halves of the weak features (ties -> x0)
        v = np.sign(x[:, 0]) + np.sign(x[:, 1 : half + 1].sum(1)) + np.sign(x[:, half + 1 :].sum(1))
        return np.where(v == 0, np.sign(x[:, 0]), np.sign(v)).astype(np.int64)

    def cubic(x):
        s = x[:, 1:].sum(axis=1) / sd
        return np.sign(x[:, 0] + 0.1 * s**3).astype(np.int64)

    return [
        ("switch x0/weak features", switch),
        ("majority vote", majority),
        ("x0 + 0.1 s^3", cubic),
    ]


# --------------------------------------------------------------------------- Theorem 1 experiment


@dataclass(frozen=True)
class Theorem1Result:
    """Risks of every classifier of the family, and the summary of Theorem 1's check."""

    task: SyntheticTask
    eps_inf: float
    eps_1: float
    rows: list[Risks]
    min_avg: float  # min over the family of R_avg
    min_avg_margin: float  # min over the family of R_avg + 3·stderr − 1/2 (≥ 0 ⇔ bound holds)
    best_single: dict[str, float]  # best exact S_∞ risk and best exact S_1 risk in the family
    best_single_names: dict[str, str]

    @property
    def holds(self) -> bool:
        """Whether every classifier has R_avg ≥ 1/2 − 3σ (σ = 0 for exact rows)."""
        return self.min_avg_margin >= -1e-12

    def as_dict(self) -> dict:
        return {
            "d": self.task.d,
            "alpha": self.task.alpha,
            "p0": self.task.p0,
            "eta": self.task.eta,
            "eps_inf": self.eps_inf,
            "eps_1": self.eps_1,
            "radius_scale": self.eps_1 / self.task.eps_1,
            "rows": [r.as_dict() for r in self.rows],
            "min_avg": self.min_avg,
            "holds": self.holds,
            "best_single": dict(self.best_single),
            "best_single_names": dict(self.best_single_names),
            "opt_bounds": opt_bounds(self.best_single).as_dict(),
        }


def theorem1_bytes(d: int, mix: int, n_samples: int, radius_scale: float = 1.0) -> float:
    """Approximate peak memory of :func:`theorem1_experiment` in bytes (measured: about
    3·mix + 10 float64 vectors of length d+1 for the linear family, and 2.5 float64 arrays of
    n_samples × (d+1) for the Monte-Carlo bounds, which run only at ``radius_scale = 1``)."""
    linear = 8.0 * (3 * mix + 10) * (d + 1)
    sampled = 20.0 * n_samples * (d + 1) if radius_scale == 1.0 else 0.0
    return linear + sampled


def theorem1_experiment(
    task: SyntheticTask,
    n_mix: int = 11,
    n_samples: int = 20000,
    seed: int = 0,
    radius_scale: float = 1.0,
) -> Theorem1Result:
    """Evaluate the family at ``radius_scale`` × Theorem 1's radii (2η, 2).

    Linear classifiers: exact risks; non-linear ones: coupling lower bounds from ``n_samples``
    Monte-Carlo samples (only meaningful at ``radius_scale = 1``; skipped otherwise, or when
    ``n_samples == 0``).
    With ``radius_scale = 1`` Theorem 1 predicts ``holds``; with smaller radii the bound can fail
    (for ``radius_scale < 1/2`` the ℓ1 ball has radius < 1, f = sign(x0) keeps risk 1 − p0 under
    both types and R_avg = 1 − p0 < 1/2), which shows the check is not vacuous.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise UnionRobustError(f"n_samples must be an integer >= 0, got {n_samples!r}")
    if not (math.isfinite(radius_scale) and radius_scale >= 0):
        raise UnionRobustError(f"radius_scale must be a finite number >= 0, got {radius_scale!r}")
    ei, e1 = task.eps_inf * radius_scale, task.eps_1 * radius_scale
    rows = [exact_linear_risks(task, c, ei, e1) for c in linear_family(task, n_mix, seed)]
    if radius_scale == 1.0 and n_samples > 0:
        rows += [
            coupling_risks(task, fn, name, n_samples, seed) for name, fn in nonlinear_family(task)
        ]
    best_inf = min((r for r in rows if r.method == "exact"), key=lambda r: r.linf)
    best_1 = min((r for r in rows if r.method == "exact"), key=lambda r: r.l1)
    return Theorem1Result(
        task=task,
        eps_inf=ei,
        eps_1=e1,
        rows=rows,
        min_avg=min(r.avg for r in rows),
        min_avg_margin=min(r.avg + 3 * r.stderr - 0.5 for r in rows),
        best_single={"linf": best_inf.linf, "l1": best_1.l1},
        best_single_names={"linf": best_inf.name, "l1": best_1.name},
    )


__all__ = [
    "Theorem1Result",
    "interpolate",
    "l1_robust_classifier",
    "linear_family",
    "linf_robust_classifier",
    "natural_classifier",
    "nonlinear_family",
    "theorem1_bytes",
    "theorem1_experiment",
]
