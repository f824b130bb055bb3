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


__all__ = [
    "THREATS",
    "LinearClassifier",
    "Risks",
    "SyntheticTask",
    "coupling_perturbations",
    "coupling_risks",
    "exact_linear_risks",
    "linear_error_probability",
    "monte_carlo_linear_risks",
]
