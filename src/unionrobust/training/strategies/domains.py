"""Adversarial training robust over data transformations with the min-max domain attack
(Wang et al. 2020 §2.2 eq. 7, §2.3, App. D.3); registry name ``"minmax-transforms"``.

Per batch, the inner problem is Wang's robust attack over K transformations t_1..t_K (eq. 7):
one δ per example, in one ℓp member of the union, that fools the model under every t_i, with
learned per-example domain weights w on the simplex (Algorithm 1, :class:`~unionrobust.attacks.
minmax.DomainMinMax` over :class:`~unionrobust.attacks.minmax.TransformDomains`).
``weights="uniform"`` fixes w = 1/K: the EOT baseline (Athalye et al. 2018); a list fixes w.
The training loss is then (``loss_weights="minmax"``, the outer problem of eq. 11 with the
domains of eq. 7)

    L = (1 − mix)·CE(f(x), y) + mix·Σ_i w_i CE(f(t_i(clip(x + δ))), y)

with w the attack's final weights, or the plain mean over the K transformations
(``loss_weights="uniform"``), in ONE train-mode forward over the K·B transformed inputs (and x
when ``mix`` < 1).

Readings (the paper trains over threat models, §2.3, and attacks over transformations, §4.2;
it does not spell out this combination): the attack maximises the cross-entropy (the training
loss) rather than Wang's C&W attack loss; δ is the attack's best iterate (most transformations
fooled, then highest mean loss) and w its final weights; the clean term uses the untransformed x.
Random transformations (``random=True``, Wang Table A5) draw per example from the keyed RNG,
afresh at every attack step (EOT) and once more for the training forward. Stats: ``w_<t>`` the
mean final domain weight of each transformation, ``attack_success`` the fraction of examples
fooled under every transformation (ASR_gp) at the attack's draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unionrobust.attacks.domains import TransformDomains
from unionrobust.attacks.minmax import DomainMinMax
from unionrobust.attacks.pgd import check_start
from unionrobust.attacks.transforms import make_transforms
from unionrobust.errors import UnionRobustError, check_int, check_positive
from unionrobust.rng import TRANSFORM_COUNTER, KeyedRandom
from unionrobust.threats import AdditiveThreat, ThreatModel, Union
from unionrobust.training.strategies.base import (
    Strategy,
    StrategyOutput,
    scaled_threat,
    train_forward,
)
from unionrobust.training.strategies.single import pick_member

LOSS_WEIGHTS = ("minmax", "uniform")


def unique_labels(names: Sequence[str]) -> list[str]:
    """``name``, or ``name#i`` when the name repeats."""
    names = list(names)
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


class MinMaxTransforms(Strategy):
    """AT on min-max (or EOT) perturbations robust over ``transforms`` (see the module doc).

    ``threat``: index, norm name or label of one additive member (default the first);
    ``transforms``: names for :func:`~unionrobust.attacks.transforms.make_transforms`;
    ``random``: their random versions; ``steps``, ``alpha`` (None → the threat's
    ``default_alpha(steps)``), ``gamma`` = γ, ``w_lr`` = β, ``weights``, ``start``: of
    :class:`~unionrobust.attacks.minmax.DomainMinMax`; ``loss_weights``: "minmax" or "uniform".
    """

    name = "minmax-transforms"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        threat: int | str | None = None,
        transforms: str | Sequence[str] = "ori, flh, flv, bri, gam, crop",
        random: bool = False,
        steps: int = 10,
        alpha: float | None = None,
        gamma: float = 4.0,
        w_lr: float = 1 / 50,
        weights: str | Sequence[float] = "minmax",
        loss_weights: str = "minmax",
        start: str = "random",
        **common,
    ) -> None:
        super().__init__(threats, **common)
        pick = 0 if threat is None else threat
        self.member = pick_member(self.threats, pick, self.name, AdditiveThreat)
        if self.objective.loss != "ce":
            raise UnionRobustError(f"{self.name} supports loss 'ce' (with mix) only")
        if not isinstance(random, bool):
            raise UnionRobustError(f"random must be true or false, got {random!r}")
        self.transforms = make_transforms(transforms, random=random)
        self.labels = unique_labels([t.name for t in self.transforms])
        self.steps = check_int("steps", steps, 1)
        self.alpha = None if alpha is None else check_positive("alpha", alpha)
        if loss_weights not in LOSS_WEIGHTS:
            raise UnionRobustError(
                f"loss_weights must be one of {', '.join(LOSS_WEIGHTS)}, got {loss_weights!r}"
            )
        self.loss_weights = loss_weights
        self.start = check_start(start)
        # validates gamma, w_lr and weights once (the per-batch attack is rebuilt from these)
        self._attack_options = {
            "steps": self.steps,
            "w_lr": w_lr,
            "gamma": gamma,
            "weights": weights,
            "loss": "ce",
            "start": self.start,
            "amp": self.amp,
        }
        probe = self.attack(0)
        if probe.fixed is not None and probe.fixed.numel() != len(self.transforms):
            raise UnionRobustError(
                f"got {probe.fixed.numel()} fixed weights for {len(self.transforms)} transforms"
            )

    def attack(self, seed: int) -> DomainMinMax:
        """The batch's attack: the member and step size shrunk by the current scale."""
        alpha = self.member.default_alpha(self.steps) if self.alpha is None else self.alpha
        return DomainMinMax(
            scaled_threat(self.member, self.scale),
            alpha=alpha * self.scale,
            seed=seed,
            **self._attack_options,
        )

    def _train_inputs(self, x_adv: torch.Tensor, rand: KeyedRandom) -> list[torch.Tensor]:
        """t_i(x_adv) for each i; random transforms draw with counters the attack never uses."""
        k = len(self.transforms)
        base = TRANSFORM_COUNTER + (self.steps + 2) * k
        with torch.no_grad():
            return [t(x_adv, rand, base + i) for i, t in enumerate(self.transforms)]

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        ids = torch.arange(x.shape[0], device=x.device) if example_ids is None else example_ids
        res = self.attack(seed)(TransformDomains(model, self.transforms), x, y, ids)
        x_adv = res.x_adv.detach()
        adv_inputs = self._train_inputs(x_adv, KeyedRandom(seed, ids))
        clean_needed = self.objective.needs_clean
        outs = train_forward(model, ([x] if clean_needed else []) + adv_inputs)
        clean = outs[0] if clean_needed else None
        adv_logits = outs[1:] if clean_needed else outs
        w = res.weights.detach()
        per_example, terms = self.objective.combine(
            clean, adv_logits, y, w if self.loss_weights == "minmax" else None
        )
        with torch.no_grad():
            worst = terms.argmax(dim=0)  # (B,) the transformation with the highest loss
            stacked = torch.stack([a.detach() for a in adv_logits])  # (K, B, C)
            logits = stacked[worst, torch.arange(x.shape[0], device=x.device)]
        stats: dict[str, float | list[float]] = {
            f"w_{lab}": float(v) for lab, v in zip(self.labels, w.mean(dim=0).tolist(), strict=True)
        }
        stats["attack_success"] = float(res.success.float().mean())
        return StrategyOutput(per_example.mean(), logits, stats)

    def __repr__(self) -> str:
        return (
            f"MinMaxTransforms({self.member.spec!r}, transforms={self.labels}, "
            f"weights={self._attack_options['weights']!r}, loss_weights={self.loss_weights!r})"
        )
