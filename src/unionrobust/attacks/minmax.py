"""Min-max attacks over K domains: Wang et al. (2020) Algorithm 1 ("APGD" in the paper; here
``DomainMinMax``, registry name ``"minmax-domains"``, not to be confused with Auto-PGD).

Problem (4)/(12): per row r,  min_{δ ∈ X} max_{w ∈ P}  Σ_i w_i F_i(δ) − γ/2‖w − 1/K‖², where
Wang's F_i is an attack loss to MINIMISE (C&W: max(z_y − max_{j≠y} z_j, −κ)). The library's
losses ℓ_i (CE, ``cw_margin``) are maximised, so F_i = −ℓ_i: the weights move to the domain with
the LOWEST attack loss, the one hardest to fool. Each iteration t (Algorithm 1):

    δ^t = Proj_X(δ^{t-1} + v(Σ_i w_i^{t-1} ∇ℓ_i(δ^{t-1})))                       (eq. 13)
    w^t = Proj_P(w^{t-1} + β(−ℓ(δ^t) − γ(w^{t-1} − 1/K)))                       (eq. 14)

The loop is the shared weighted-ascent core (:mod:`unionrobust.attacks.weighted`, target
``"all"``, order ``"alternating"``), which min-max training runs with target ``"worst"``
(problem 15). Reading: eq. 13 writes a raw gradient step; we take the threat model's
steepest-ascent step v of size α (sign for ℓ∞, normalised for ℓ2, sparse for ℓ1) with its exact
ball ∩ [0,1] projection, as every PGD of the library, so that one domain gives exactly
:class:`~unionrobust.attacks.PGD`. The simplex projection is exact (sorting) instead of
bisection. ``F(δ^t)`` comes from the same forward/backward as the next δ step: one
forward+backward per iteration for each model (models), or over K·B inputs.

Domains: :mod:`unionrobust.attacks.domains` (models: success = every model fooled, ASR_all;
inputs and transformations: ASR_gp). Weights: ``"minmax"`` (learned, eq. 14), ``"uniform"``
(fixed 1/K: ensemble PGD, Liu et al.; EOT, Athalye et al.; the averaging baseline) or K fixed
user weights (normalised to sum 1). Best iterate per row (the attack contract,
:class:`~unionrobust.attacks.best.PayloadTracker`): most domains fooled first, then the highest
mean loss — with one domain, PGD's rule (a success beats a failure, then the higher loss). The
weight trajectory (T+1, rows, K) and the per-iteration fooled fraction of each domain are
recorded; :func:`unionrobust.reporting.plots.plot_weights` draws them (Wang Fig. 1c / 3a).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unionrobust.attacks.base import Attack
from unionrobust.attacks.best import PayloadTracker
from unionrobust.attacks.domains import (
    Domains,
    ModelEnsemble,
    PerturbationSpace,
    TransformDomains,
    UniversalGroups,
)
from unionrobust.attacks.pgd import check_start, random_start
from unionrobust.attacks.weighted import (
    ORDERS,
    TARGETS,
    Evaluation,
    WeightRule,
    weighted_ascent,
)
from unionrobust.errors import (
    UnionRobustError,
    check_choice,
    check_int,
    check_positive,
)
from unionrobust.losses import LossFn, get_loss
from unionrobust.rng import INIT_COUNTER, KeyedRandom
from unionrobust.threats import ThreatModel, Union, single_threat

__all__ = [
    "DomainMinMax",
    "Domains",
    "MinMaxResult",
    "ModelEnsemble",
    "TransformDomains",
    "UniversalGroups",
    "ensemble_attack",
    "merge_results",
    "transform_attack",
    "universal_attack",
]


@dataclass
class MinMaxResult:
    """Outcome of a min-max domain attack.

    ``x_adv`` (B, ...) perturbed inputs (before any transformation); ``delta`` (R, ...) one
    perturbation per row (R = B, or the number of groups); ``fooled``/``loss`` (R, K) per domain
    at the best iterate; ``weights`` (R, K) final domain weights; ``trajectory`` (T+1, R, K) the
    weights per iteration; ``fooled_history`` (T+1, K) fraction of rows fooled per domain at each
    iterate; ``labels`` the domain names; ``last`` (B, ...) the inputs at the last iterate
    (what min-max training uses).
    """

    x_adv: torch.Tensor
    delta: torch.Tensor
    fooled: torch.Tensor
    loss: torch.Tensor
    weights: torch.Tensor
    trajectory: torch.Tensor
    fooled_history: torch.Tensor
    labels: list[str]
    kind: str = "domains"
    last: torch.Tensor | None = None

    @property
    def success(self) -> torch.Tensor:
        """(R,) every domain fooled."""
        return self.fooled.all(dim=1)

    def metrics(self) -> dict[str, float]:
        """ASR_all (models) or ASR_gp (inputs, transforms), ASR_avg and per-domain ASR, in %."""
        f = self.fooled.double()
        key = "asr_all" if self.kind == "models" else "asr_gp"
        out = {key: 100 * float(self.success.double().mean()), "asr_avg": 100 * float(f.mean())}
        for lab, v in zip(self.labels, f.mean(dim=0).tolist(), strict=True):
            out[f"asr_{lab}"] = 100 * v
        return out


WEIGHTINGS = ("minmax", "uniform")


class _DomainProblem:
    """The attack's ascent problem: ``domains`` at the perturbation, moved in ``space``."""

    def __init__(
        self, attack: DomainMinMax, domains: Domains, space: PerturbationSpace, x, y, rand
    ):
        self.attack, self.domains, self.space = attack, domains, space
        self.x, self.y, self.rand = x, y, rand

    def evaluate(self, delta: torch.Tensor, t: int, grad: bool) -> Evaluation:
        a = self.attack
        loss, fooled, grads = self.domains.evaluate(
            delta, self.x, self.y, a.loss_fn, self.rand, t, grad, a.amp
        )
        return Evaluation(loss, fooled, grads)

    def move(self, delta: torch.Tensor, direction: torch.Tensor, t: int) -> torch.Tensor:
        return self.space.step(delta, direction.sum(dim=0), self.attack.alpha, self.rand, t)


class DomainMinMax(Attack):
    """Wang et al. Algorithm 1 over ``domains`` (see the module docstring); called as
    ``attack(domains, x, y, example_ids)`` and returns a :class:`MinMaxResult`.

    ``threat``: any additive threat model of the core (one member). ``alpha`` None → the
    threat's ``default_alpha(steps)``; ``w_lr`` = β, ``gamma`` = γ of eq. 14 (defaults β = 1/50,
    γ = 4 from Wang et al. App. C.2 / Table 2); ``weights`` ``"minmax"``, ``"uniform"`` or K
    numbers; ``loss`` ``"cw"`` (κ = ``kappa``, 50 in App. C.2) or ``"ce"``; ``start`` ``"zero"``
    or ``"random"``; ``target``/``order`` of the core (defaults: problem 4, Algorithm 1). The
    models are frozen (eval mode, no parameter grads) and restored after, by ``Attack``.
    """

    name = "minmax-domains"

    def __init__(
        self,
        threat: ThreatModel | Union,
        steps: int = 50,
        alpha: float | None = None,
        w_lr: float = 1 / 50,
        gamma: float = 4.0,
        weights: str | Sequence[float] = "minmax",
        loss: str = "cw",
        kappa: float | None = 50.0,
        start: str = "zero",
        seed: int = 0,
        amp: bool = False,
        target: str = "all",
        order: str = "alternating",
    ) -> None:
        super().__init__(single_threat(threat, "DomainMinMax"), seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.alpha = (
            self.threat.default_alpha(self.steps)
            if alpha is None
            else check_positive("alpha", alpha)
        )
        self.rule = WeightRule(w_lr, gamma, check_choice("target", target, TARGETS))
        self.w_lr, self.gamma = self.rule.w_lr, self.rule.gamma
        self.order = check_choice("order", order, ORDERS)
        if isinstance(weights, str):
            if weights not in WEIGHTINGS:
                raise UnionRobustError(
                    f"weights must be one of {', '.join(WEIGHTINGS)} or a list of numbers, "
                    f"got {weights!r}"
                )
            self.weighting = weights
            self.fixed = None
        else:
            w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
            if w.numel() == 0 or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise UnionRobustError(f"fixed weights must be >= 0 and not all 0, got {weights}")
            self.fixed = w / w.sum()
            self.weighting = "fixed"
        self.loss_name = loss
        self.loss_fn: LossFn = get_loss(loss, kappa if loss == "cw" else None)
        self.start = check_start(start)

    def __repr__(self) -> str:
        return (
            f"DomainMinMax({self.threat!r}, steps={self.steps}, alpha={self.alpha:g}, "
            f"w_lr={self.w_lr:g}, gamma={self.gamma:g}, weights={self.weighting!r}, "
            f"loss={self.loss_name!r})"
        )

    def models_of(self, target: Any) -> list:
        if not isinstance(target, Domains):
            raise UnionRobustError(f"domains must be a Domains object, got {type(target).__name__}")
        return target.models()

    def empty_result(self, target: Domains, x: torch.Tensor) -> MinMaxResult:
        k, z = target.k, x.new_zeros((0, target.k))
        return MinMaxResult(
            x.detach().clone(), x.detach().clone(), z.bool(), z, z, x.new_zeros((1, 0, k)),
            x.new_zeros((1, k)), list(target.labels), target.kind, x.detach().clone(),
        )  # fmt: skip

    def _initial_weights(self, r: int, k: int, like: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            if self.fixed.numel() != k:
                raise UnionRobustError(f"got {self.fixed.numel()} fixed weights for {k} domains")
            return self.fixed.to(like.device, like.dtype).expand(r, k).clone()
        return torch.full((r, k), 1.0 / k, device=like.device, dtype=like.dtype)

    def _run(self, domains: Domains, x, y, rand: KeyedRandom, clean_logits) -> MinMaxResult:
        r, k = domains.rows(x), domains.k
        rand = KeyedRandom(rand.seed, domains.row_ids(rand.ids))
        space = domains.space(self.threat, x)
        problem = _DomainProblem(self, domains, space, x, y, rand)
        w = self._initial_weights(r, k, x)
        delta0 = torch.zeros_like(space.base)
        delta = space.init(rand, INIT_COUNTER) if random_start(self.start, 0) else delta0
        # best iterate: most domains fooled, then highest mean loss; starts at δ = 0
        start = problem.evaluate(delta0, self.steps + 1, False)
        best = PayloadTracker(
            delta0, start.loss.mean(dim=1), start.fooled.sum(dim=1),
            {"fooled": start.fooled, "loss": start.loss},
        )  # fmt: skip
        hist = []

        def observe(d: torch.Tensor, ev: Evaluation) -> None:
            payload = {"fooled": ev.fooled, "loss": ev.loss}
            best.update(d, ev.loss.mean(dim=1), ev.fooled.sum(dim=1), payload=payload)
            hist.append(ev.fooled.float().mean(dim=0))

        learn = self.rule if self.fixed is None and self.weighting == "minmax" else None
        last, w, traj = weighted_ascent(
            problem, delta, w, self.steps, learn, self.order, observe, final=True
        )
        return MinMaxResult(
            x_adv=domains.adversarial(best.x_adv, x),
            delta=best.x_adv,
            fooled=best.payload["fooled"],
            loss=best.payload["loss"],
            weights=w,
            trajectory=torch.stack(traj),
            fooled_history=torch.stack(hist),
            labels=list(domains.labels),
            kind=domains.kind,
            last=domains.adversarial(last, x),
        )


# --------------------------------------------------------------------------- conveniences


def ensemble_attack(models, x, y, threat, example_ids=None, **kwargs) -> MinMaxResult:
    """Min-max (or ``weights="uniform"``: ensemble PGD) attack fooling all ``models``."""
    return DomainMinMax(threat, **kwargs)(ModelEnsemble(models), x, y, example_ids)


def universal_attack(model, x, y, threat, group_size, example_ids=None, **kwargs):
    """One perturbation per group of ``group_size`` consecutive inputs."""
    return DomainMinMax(threat, **kwargs)(UniversalGroups(model, group_size), x, y, example_ids)


def transform_attack(model, x, y, threat, transforms="ori, flh, flv, bri, gam, crop", **kwargs):
    """A perturbation that survives the ``transforms`` (EOT with ``weights="uniform"``)."""
    example_ids = kwargs.pop("example_ids", None)
    return DomainMinMax(threat, **kwargs)(TransformDomains(model, transforms), x, y, example_ids)


def merge_results(results: Sequence[MinMaxResult]) -> MinMaxResult:
    """Concatenate per-batch results (rows) into one, on the CPU; the fooled history is the
    row-weighted mean of the batches' histories."""
    rows = torch.tensor([r.fooled.shape[0] for r in results], dtype=torch.float64)
    hist = torch.stack([r.fooled_history.double().cpu() for r in results])

    def cat(name: str, dim: int = 0) -> torch.Tensor:
        return torch.cat([getattr(r, name).cpu() for r in results], dim=dim)

    return MinMaxResult(
        x_adv=cat("x_adv"),
        delta=cat("delta"),
        fooled=cat("fooled"),
        loss=cat("loss"),
        weights=cat("weights"),
        trajectory=cat("trajectory", dim=1),
        fooled_history=(hist * rows.reshape(-1, 1, 1)).sum(0) / rows.sum(),
        labels=results[0].labels,
        kind=results[0].kind,
        last=None if results[0].last is None else cat("last"),
    )
