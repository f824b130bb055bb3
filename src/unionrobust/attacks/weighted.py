"""The weighted-ascent core of Wang et al. (2020): one loop for the min-max attack
(Algorithm 1, "APGD", problem 4/12) and for min-max adversarial training (Algorithm 2 step 4,
"AMPGD", problem 15). Both move domain weights w on the probability simplex P by eq. 14,

    w ← Proj_P(w + β(φ − γ(w − 1/K)))        (β = ``w_lr``, φ the K domain values)

and a perturbation along the w-weighted gradient Σ_i w_i ∇ℓ_i (one projected steepest-ascent
step of the threat model, as every PGD of the library).

Sign of φ (``target``) — the paper's two problems, both read as written:

* ``"all"`` — problem (4): min_δ max_w Σ_i w_i F_i(δ) − γ/2‖w − 1/K‖², with F_i an attack loss
  to MINIMISE. The library's losses ℓ_i are maximised, so F_i = −ℓ_i and φ = −ℓ: the weight
  moves to the domain with the LOWEST loss, the one hardest to fool (the perturbation must fool
  every domain). The min-max attack (:class:`~unionrobust.attacks.minmax.DomainMinMax`).
* ``"worst"`` — problem (15): max_{w, δ_i} Σ_i w_i f_tr(δ_i) − γ/2‖w − 1/K‖² with f_tr the
  training loss, so φ = +ℓ: the weight moves to the member with the HIGHEST loss (the worst
  case of the union). Min-max training (:class:`~unionrobust.training.strategies.minmax.MinMax`).

Order (``order``): ``"alternating"`` is Algorithm 1 (δ^t from w^{t−1}, then w^t from φ(δ^t); w^0
is given, so the first iteration moves δ only); ``"simultaneous"`` is Algorithm 2 step 4 (w_r
and δ_r both from (w_{r−1}, δ_{r−1})). The attack returns the best iterate (the library's attack
contract, see :class:`~unionrobust.attacks.best.BestTracker`); training uses the last iterate
(AMPGD and Madry et al. keep no best point), see :func:`weighted_ascent`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from unionrobust.errors import check_choice, check_finite, check_int
from unionrobust.geometry import project_simplex

TARGETS = ("all", "worst")
ORDERS = ("alternating", "simultaneous")


@dataclass
class Evaluation:
    """The K domains at one iterate: ``loss`` (R, K) the per-domain loss ℓ_i (maximised by the
    perturbation), ``fooled`` (R, K) bool, ``grads`` (K, R, ...) ∇ℓ_i or None, ``extra`` a term
    added to the weighted gradients (DPAR's λ∇h) or None."""

    loss: torch.Tensor
    fooled: torch.Tensor
    grads: torch.Tensor | None = None
    extra: torch.Tensor | None = None


class AscentProblem(Protocol):
    """What the core moves: ``evaluate(delta, t, grad)`` and ``move(delta, direction, t)`` with
    ``direction`` (K, R, ...) the weighted per-domain gradients w_i ∇ℓ_i (+ extra)."""

    def evaluate(self, delta: torch.Tensor, t: int, grad: bool) -> Evaluation: ...

    def move(self, delta: torch.Tensor, direction: torch.Tensor, t: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class WeightRule:
    """Eq. 14 with step β = ``w_lr``, regulariser γ = ``gamma`` and the sign of ``target``."""

    w_lr: float
    gamma: float
    target: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "w_lr", check_finite("w_lr", self.w_lr, 0.0))
        object.__setattr__(self, "gamma", check_finite("gamma", self.gamma, 0.0))
        check_choice("target", self.target, TARGETS)

    def step(self, w: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """One projected ascent step of ψ in w (eq. 14); ``loss`` (R, K) the ℓ_i at δ."""
        f = loss.to(w.dtype)
        phi = -f if self.target == "all" else f
        return project_simplex(w + self.w_lr * (phi - self.gamma * (w - 1.0 / w.shape[1])))


def weighted_direction(w: torch.Tensor, ev: Evaluation) -> torch.Tensor:
    """(K, R, ...) w_i ∇ℓ_i (+ ``ev.extra``): the gradient of Σ_i w_i ℓ_i per domain."""
    grads = ev.grads
    if grads is None:
        raise ValueError("weighted_direction needs an evaluation with gradients")
    k, r = w.shape[1], w.shape[0]
    d = w.T.reshape(k, r, *([1] * (grads.dim() - 2))) * grads
    return d if ev.extra is None else d + ev.extra


def weighted_ascent(
    problem: AscentProblem,
    delta: torch.Tensor,
    w: torch.Tensor,
    steps: int,
    rule: WeightRule | None,
    order: str = "alternating",
    observe: Callable[[torch.Tensor, Evaluation], None] | None = None,
    final: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Run ``steps`` iterations from (δ, w); return (last δ, last w, weights per iteration).

    ``rule`` None keeps w fixed (uniform or user weights: ensemble PGD / EOT). ``observe(delta,
    evaluation)`` sees every evaluated iterate (best-point tracking, histories). With ``final``,
    the last δ is evaluated once more (no gradient; counter ``steps``) and observed; in the
    alternating order w then takes its last step from φ(δ^T).
    """
    steps = check_int("steps", steps, 1)
    check_choice("order", order, ORDERS)
    trajectory = []
    for t in range(steps):
        ev = problem.evaluate(delta, t, True)
        if observe is not None:
            observe(delta, ev)
        if order == "alternating":
            if rule is not None and t > 0:  # w^t from φ(δ^t); w^0 is given
                w = rule.step(w, ev.loss)
            trajectory.append(w)
            delta = problem.move(delta, weighted_direction(w, ev), t)
        else:  # both from the previous iterate
            w_next = w if rule is None else rule.step(w, ev.loss)
            delta = problem.move(delta, weighted_direction(w, ev), t)
            w = w_next
            trajectory.append(w)
    if final:
        ev = problem.evaluate(delta, steps, False)
        if observe is not None:
            observe(delta, ev)
        if rule is not None and order == "alternating":
            w = rule.step(w, ev.loss)
        trajectory.append(w)
    return delta, w, trajectory
