"""The synthetic task of Tramèr & Boneh (2019) §2.2–2.3 and their Theorem 1, made executable.

Distribution D (eq. 2, after Tsipras et al.), in R^(d+1) (column 0 is x0)::

    y ~ uniform{−1, +1};  x0 = +y w.p. p0, −y w.p. 1 − p0;  x1..xd iid ~ N(y·η, 1),
    η = α/√d, p0 ≥ 1/2, α > 0.

Theorem 1: for EVERY classifier, with S_∞ the ℓ∞ ball of radius 2η and S_1 the ℓ1 ball of
radius 2, ``R_avg = (R(S_∞) + R(S_1))/2 ≥ 1/2``. (The appendix with the proof is not in our copy
of the paper; the argument we implement is this coupling: shifting x1..xd by −2η·y (ℓ∞ norm 2η)
turns class y into (x0 of class y, features of class −y); flipping x0 ↦ −x0 (ℓ1 norm 2) turns
class −y into the very same distribution. Whatever f answers there, one of the two attacks wins,
so P(err_∞ | y) + P(err_1 | −y) ≥ 1 and R_avg ≥ 1/2.) :func:`coupling_risks` applies exactly
these two perturbations to any black-box classifier and gives Monte-Carlo *lower bounds* on its
risks, which must therefore already average ≥ 1/2.

Linear classifiers ``sign(w0·x0 + w·x_{1..d} + b)`` have closed-form worst cases (no attack):
an ℓp ball of radius ε lowers the margin ``y·(w̄·x + b)`` by exactly ``ε‖w̄‖_{p*}`` (dual norm,
w̄ = (w0, w)), so under S_∞ by ``2η‖w̄‖_1`` and under S_1 by ``2‖w̄‖_∞``; the union by the larger of
the two (a linear classifier's union risk is a max of thresholds, Claim 3). Given y and
``s = y·x0``, ``y·w·x_{1..d} ~ N(η Σw, ‖w‖²)``, so every risk is a finite sum of Gaussian CDFs:
:func:`exact_linear_risks`. A margin ≤ 0 counts as an error (ties are errors; they have
probability 0 unless w = 0).

The box [0,1]^d of images plays no role here (features are unbounded reals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.theory.bounds import opt_bounds

THREATS = ("linf", "l1")
_CHUNK = 8192  # rows per Monte-Carlo chunk (memory: _CHUNK·(d+1) float64)


def _phi(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


@dataclass(frozen=True)
class SyntheticTask:
    """Tsipras et al.'s distribution D as defined by Tramèr & Boneh eq. (2)."""

    d: int = 200
    alpha: float = 2.0
    p0: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.d, bool) or not isinstance(self.d, (int, np.integer)) or self.d < 1:
            raise UnionRobustError(
                f"d (number of weak features) must be an integer >= 1, got {self.d!r}"
            )
        if not (
            isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0
        ):
            raise UnionRobustError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if not (isinstance(self.p0, (int, float)) and 0.5 <= self.p0 < 1.0):
            raise UnionRobustError(f"p0 must lie in [0.5, 1), got {self.p0!r}")

    @property
    def eta(self) -> float:
        """Mean shift of the weak features, η = α/√d."""
        return self.alpha / math.sqrt(self.d)

    @property
    def eps_inf(self) -> float:
        """Theorem 1's ℓ∞ radius, 2η."""
        return 2.0 * self.eta

    @property
    def eps_1(self) -> float:
        """Theorem 1's ℓ1 radius, 2."""
        return 2.0

    def sample(self, n: int, seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
        """Draw n examples with numpy's ``default_rng(seed)``.

        Returns ``x`` of shape (n, d+1), float64, column 0 is x0; ``y`` in {−1, +1} (int64).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise UnionRobustError(f"number of samples must be an integer >= 0, got {n!r}")
        rng = np.random.default_rng(seed)
        y = rng.choice(np.array([-1, 1]), size=n)
        agree = rng.random(n) < self.p0
        x = np.empty((n, self.d + 1), dtype=np.float64)
        x[:, 0] = np.where(agree, y, -y)
        x[:, 1:] = rng.standard_normal((n, self.d)) + (y * self.eta)[:, None]
        return x, y


@dataclass(frozen=True, eq=False)
class LinearClassifier:
    """``sign(w0·x0 + w·x_{1..d} + b)``; a score of exactly 0 is an error (abstention)."""

    name: str
    w0: float
    w: np.ndarray
    b: float = 0.0

    @property
    def weights(self) -> np.ndarray:
        """w̄ = (w0, w) of length d+1."""
        return np.concatenate([[float(self.w0)], np.asarray(self.w, dtype=np.float64)])

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.b

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Labels in {−1, 0, +1} (0 = tie, counted as an error)."""
        return np.sign(self.scores(x)).astype(np.int64)

    def margin_drop(self, threat: str, eps: float) -> float:
        """Largest decrease of ``y·score`` over the ball: ε·(dual norm of w̄) (Hölder, tight)."""
        w = np.abs(self.weights)
        if threat == "linf":
            return eps * float(w.sum())
        if threat == "l1":
            return eps * float(w.max())
        raise unknown_name("threat", threat, THREATS)

    def worst_perturbation(self, y: np.ndarray, threat: str, eps: float) -> np.ndarray:
        """The perturbation attaining :meth:`margin_drop` for each example (rows of shape d+1).

        ℓ∞: ``−y·ε·sign(w̄)``; ℓ1: ``−y·ε·sign(w̄_k)·e_k`` with ``k = argmax |w̄_k|``.
        """
        wbar = self.weights
        y = np.asarray(y, dtype=np.float64)[:, None]
        if threat == "linf":
            return -y * eps * np.sign(wbar)[None, :]
        if threat == "l1":
            k = int(np.argmax(np.abs(wbar)))
            r = np.zeros((y.shape[0], wbar.size))
            r[:, k] = -y[:, 0] * eps * np.sign(wbar[k])
            return r
        raise unknown_name("threat", threat, THREATS)


Classifier = LinearClassifier | Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Risks:
    """Risks of one classifier: clean, under S_∞, under S_1, under the union (R_max).

    ``method``: "exact" (closed form), "monte-carlo" (sampled worst-case perturbations) or
    "coupling-lower-bound" (sampled proof perturbations: lower bounds on the true risks).
    ``stderr``: standard error of the Monte-Carlo estimate of R_avg (0 when exact).
    """

    name: str
    method: str
    clean: float
    linf: float
    l1: float
    rmax: float
    stderr: float = 0.0

    @property
    def avg(self) -> float:
        """R_avg = (R(S_∞) + R(S_1)) / 2 (Tramèr & Boneh eq. 1)."""
        return 0.5 * (self.linf + self.l1)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "clean": self.clean,
            "linf": self.linf,
            "l1": self.l1,
            "avg": self.avg,
            "max": self.rmax,
            "stderr": self.stderr,
        }


def _radii(task: SyntheticTask, eps_inf: float | None, eps_1: float | None) -> tuple[float, float]:
    ei = task.eps_inf if eps_inf is None else float(eps_inf)
    e1 = task.eps_1 if eps_1 is None else float(eps_1)
    for name, v in (("eps_inf", ei), ("eps_1", e1)):
        if not (math.isfinite(v) and v >= 0):
            raise UnionRobustError(f"{name} must be a finite number >= 0, got {v!r}")
    return ei, e1


def _check_linear(task: SyntheticTask, clf: LinearClassifier) -> None:
    if np.asarray(clf.w).shape != (task.d,):
        raise UnionRobustError(
            f"classifier {clf.name!r} has {np.asarray(clf.w).shape} weak-feature weights, "
            f"the task has d={task.d}"
        )


def linear_error_probability(task: SyntheticTask, clf: LinearClassifier, drop: float) -> float:
    """P(y·score ≤ drop) under D, exactly (sum over y and s = y·x0 of Gaussian CDFs)."""
    _check_linear(task, clf)
    w = np.asarray(clf.w, dtype=np.float64)
    mean = task.eta * float(w.sum())  # E[y·w·x_{1..d} | y] (the same for both labels)
    sd = float(np.linalg.norm(w))
    total = 0.0
    for y in (-1.0, 1.0):
        for s, ps in ((1.0, task.p0), (-1.0, 1.0 - task.p0)):
            threshold = drop - clf.w0 * s - y * clf.b  # error iff y·w·x_{1..d} ≤ threshold
            prob = _phi((threshold - mean) / sd) if sd > 0 else float(mean <= threshold)
            total += 0.5 * ps * prob
    return total


def exact_linear_risks(
    task: SyntheticTask,
    clf: LinearClassifier,
    eps_inf: float | None = None,
    eps_1: float | None = None,
) -> Risks:
    """Exact clean / S_∞ / S_1 / union risks of a linear classifier (defaults: Theorem 1 radii)."""
    ei, e1 = _radii(task, eps_inf, eps_1)
    d_inf, d_1 = clf.margin_drop("linf", ei), clf.margin_drop("l1", e1)
    return Risks(
        name=clf.name,
        method="exact",
        clean=linear_error_probability(task, clf, 0.0),
        linf=linear_error_probability(task, clf, d_inf),
        l1=linear_error_probability(task, clf, d_1),
        rmax=linear_error_probability(task, clf, max(d_inf, d_1)),
    )


def _chunks(task: SyntheticTask, n: int, seed: int):
    """Samples in chunks of ``_CHUNK`` rows; chunk i uses the seed sequence (seed, i)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UnionRobustError(f"number of Monte-Carlo samples must be an integer >= 1, got {n!r}")
    for i, start in enumerate(range(0, n, _CHUNK)):
        yield task.sample(min(_CHUNK, n - start), seed=(seed, i))


class _Tally:
    """Counts of broken examples; R_avg's standard error from the per-example averages."""

    def __init__(self) -> None:
        self.n = self.clean = self.linf = self.l1 = self.either = 0
        self.avg_sq = 0.0

    def add(self, wrong: np.ndarray, b_inf: np.ndarray, b_1: np.ndarray) -> None:
        self.n += wrong.size
        self.clean += int(wrong.sum())
        self.linf += int(b_inf.sum())
        self.l1 += int(b_1.sum())
        self.either += int((b_inf | b_1).sum())
        self.avg_sq += float(((0.5 * (b_inf.astype(np.float64) + b_1)) ** 2).sum())

    def risks(self, name: str, method: str) -> Risks:
        n = self.n
        avg = 0.5 * (self.linf + self.l1) / n
        var = max(self.avg_sq / n - avg * avg, 0.0) * n / max(n - 1, 1)
        return Risks(
            name,
            method,
            self.clean / n,
            self.linf / n,
            self.l1 / n,
            self.either / n,
            math.sqrt(var / n),
        )


def monte_carlo_linear_risks(
    task: SyntheticTask,
    clf: LinearClassifier,
    n: int = 20000,
    seed: int = 0,
    eps_inf: float | None = None,
    eps_1: float | None = None,
) -> Risks:
    """Sampled risks of a linear classifier under its explicit worst-case perturbations.

    Independent check of :func:`exact_linear_risks`: the perturbations of
    :meth:`LinearClassifier.worst_perturbation` are applied to sampled points and the predicted
    labels compared (union: broken by either).
    """
    _check_linear(task, clf)
    ei, e1 = _radii(task, eps_inf, eps_1)
    tally = _Tally()
    for x, y in _chunks(task, n, seed):
        b_inf = clf.predict(x + clf.worst_perturbation(y, "linf", ei)) != y
        b_1 = clf.predict(x + clf.worst_perturbation(y, "l1", e1)) != y
        tally.add(clf.predict(x) != y, b_inf, b_1)
    return tally.risks(clf.name, "monte-carlo")


def coupling_perturbations(task: SyntheticTask, x: np.ndarray, y: np.ndarray):
    """The two perturbations of Theorem 1's coupling argument (module docstring).

    ℓ∞ (norm 2η): shift x1..xd by −2η·y, x0 untouched. ℓ1 (norm 2): flip x0 ↦ −x0.
    """
    r_inf = np.zeros_like(x)
    r_inf[:, 1:] = -task.eps_inf * np.asarray(y, dtype=np.float64)[:, None]
    r_1 = np.zeros_like(x)
    r_1[:, 0] = -2.0 * x[:, 0]
    return r_inf, r_1


def coupling_risks(
    task: SyntheticTask,
    predict: Callable[[np.ndarray], np.ndarray],
    name: str,
    n: int = 20000,
    seed: int = 0,
) -> Risks:
    """Monte-Carlo LOWER BOUNDS on the risks of any classifier at Theorem 1's radii.

    An example counts as broken under S_p if the classifier errs on it clean or after the coupling
    perturbation of type p (both are in the ball). By the theorem's argument their average is
    ≥ 1/2 in expectation, for every ``predict``: a function from (n, d+1) arrays to labels ±1.
    """
    tally = _Tally()
    for x, y in _chunks(task, n, seed):
        r_inf, r_1 = coupling_perturbations(task, x, y)
        wrong = np.asarray(predict(x)) != y
        b_inf = wrong | (np.asarray(predict(x + r_inf)) != y)
        b_1 = wrong | (np.asarray(predict(x + r_1)) != y)
        tally.add(wrong, b_inf, b_1)
    return tally.risks(name, "coupling-lower-bound")


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
    "THREATS",
    "LinearClassifier",
    "Risks",
    "SyntheticTask",
    "Theorem1Result",
    "coupling_perturbations",
    "coupling_risks",
    "exact_linear_risks",
    "interpolate",
    "l1_robust_classifier",
    "linear_error_probability",
    "linear_family",
    "linf_robust_classifier",
    "monte_carlo_linear_risks",
    "natural_classifier",
    "nonlinear_family",
    "theorem1_experiment",
]
