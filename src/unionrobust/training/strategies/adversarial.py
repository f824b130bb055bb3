"""Shared machinery of the adversarial strategies: one attack per union member, the loss step.

Attack settings, each a single value, a list with one entry per member, or a dict keyed by the
member's norm name (``{"l1": "slide"}``; members left out get the default):

* ``steps`` (default 10, the inner-maximisation budget of Croce & Hein App. A);
* ``alpha``: step size; default α = c·ε/steps with the total travel c = steps·α/ε of the MSD
  adversary of MSD App. C.2 (MNIST: α = (0.01, 0.1, 0.8) at ε = (0.3, 2, 10) with 100 steps, i.e.
  c = 10/3 for ℓ∞, 5 for ℓ2, 8 for ℓ1); other threats use their ``default_alpha(steps)``;
* ``attack``: ``"pgd"`` (default), ``"slide"`` (ℓ1 only, Tramèr & Boneh Alg. 1) or ``"apgd"``
  (Croce & Hein 2020/2021, step-size free: ``alpha`` must not be given);
* ``restarts`` (default 1) and ``start`` (``"random"``, ``"zero"``, ``"zero_then_random"``).
* a rotation-translation member (``"rt:30:3"``) is attacked by the worst-of-k random spatial
  attack with k = its ``steps`` (Engstrom et al.'s worst-of-10 with the default).

``set_scale`` multiplies every ε and α by the scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from unionrobust.attacks.apgd import APGD
from unionrobust.attacks.base import Attack, AttackResult, frozen_model
from unionrobust.attacks.pgd import PGD, SLIDE, check_start
from unionrobust.attacks.registry import default_attack
from unionrobust.errors import UnionRobustError, check_int, unknown_name
from unionrobust.threats import L1, AdditiveThreat, ThreatModel, Union
from unionrobust.training.strategies.base import (
    Strategy,
    StrategyOutput,
    member_labels,
    scaled_threat,
    train_forward,
)
from unionrobust.training.strategies.objective import diversity_logdet, kl_attack_loss

ATTACKS = ("pgd", "slide", "apgd")

#: total travel steps·α/ε of the MSD adversary, MSD App. C.2 (MNIST)
TRAVEL = {"linf": 0.01 * 100 / 0.3, "l2": 0.1 * 100 / 2.0, "l1": 0.8 * 100 / 10.0}


def default_alpha(threat: ThreatModel, steps: int) -> float:
    """α = c·ε/steps with the MSD App. C.2 travel c, else the threat's own default."""
    if threat.name in TRAVEL:
        return TRAVEL[threat.name] * threat.size / steps
    return threat.default_alpha(steps)


def per_member(option: str, value, union: Union, default) -> list:
    """Expand an option to one value per member (scalar, list, or dict by norm name/label)."""
    k = len(union)
    labels = member_labels(union)
    if isinstance(value, Mapping):
        out = [default] * k
        for key, v in value.items():
            pairs = enumerate(zip(union, labels, strict=True))
            hits = [i for i, (m, lab) in pairs if key in (m.name, lab)]
            if not hits:
                raise unknown_name(f"member in {option}", str(key), labels)
            for i in hits:
                out[i] = v
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != k:
            raise UnionRobustError(
                f"{option} needs one value per threat model ({k} for {union.spec!r}), "
                f"got {len(value)}"
            )
        return list(value)
    return [value] * k


class AdversarialStrategy(Strategy):
    """A strategy that attacks some members of its union with one single-threat attack each."""

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        steps: int | Sequence[int] | Mapping[str, int] = 10,
        alpha: float | Sequence[float] | Mapping[str, float] | None = None,
        attack: str | Sequence[str] | Mapping[str, str] = "pgd",
        restarts: int = 1,
        start: str = "random",
        **common,
    ) -> None:
        super().__init__(threats, **common)
        union = self.threats
        self.steps = [check_int("steps", s, 1) for s in per_member("steps", steps, union, 10)]
        self.alphas = per_member("alpha", alpha, union, None)
        self.kinds = per_member("attack", attack, union, "pgd")
        self.restarts = check_int("restarts", restarts, 1)
        self.start = check_start(start)
        for m, kind, a in zip(union, self.kinds, self.alphas, strict=True):
            if kind not in ATTACKS:
                raise unknown_name("training attack", str(kind), ATTACKS)
            if kind == "slide" and not isinstance(m, L1):
                raise UnionRobustError(f"attack 'slide' needs an l1 threat, got {m.spec!r}")
            if kind == "apgd" and a is not None:
                raise UnionRobustError("alpha does not apply to attack 'apgd' (step-size free)")
            if kind == "apgd" and self.objective.kl_attack:
                raise UnionRobustError("loss 'trades' needs attack 'pgd' or 'slide', not 'apgd'")
            if a is not None and (
                isinstance(a, bool) or not isinstance(a, int | float) or not 0 < a < float("inf")
            ):
                raise UnionRobustError(f"alpha must be a positive number, got {a!r}")
        if self.objective.kl_attack and self.restarts != 1:
            raise UnionRobustError("loss 'trades' needs restarts=1")
        self.labels = member_labels(union)
        self.attacks: list[Attack | None] = []
        self._build()

    # -- which members get an attack (E-AT restricts this) -----------------------------------
    def attacked_members(self) -> list[int]:
        return list(range(len(self.threats)))

    def _build(self) -> None:
        wanted = set(self.attacked_members())
        self.attacks = [
            self._make_attack(i) if i in wanted else None for i in range(len(self.threats))
        ]

    def _rescaled(self) -> None:
        self._build()

    def member_alpha(self, i: int) -> float:
        """Step size of member ``i`` at the current scale."""
        a = self.alphas[i]
        base = default_alpha(self.threats[i], self.steps[i]) if a is None else float(a)
        return base * self.scale

    def _make_attack(self, i: int) -> Attack:
        threat = scaled_threat(self.threats[i], self.scale)
        kind, steps = self.kinds[i], self.steps[i]
        if not isinstance(threat, AdditiveThreat):  # searched: worst-of-k, k = steps (issue 4)
            return default_attack(threat, "train", steps=steps, amp=self.amp)
        if kind == "apgd":
            return APGD(threat, steps=steps, restarts=self.restarts, amp=self.amp)
        alpha = self.member_alpha(i)
        cls = SLIDE if kind == "slide" else PGD
        return cls(
            threat, steps=steps, alpha=alpha, restarts=self.restarts, start=self.start, amp=self.amp
        )

    # -- per batch -----------------------------------------------------------------------------
    def eval_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """Clean logits in eval mode (no BN update) when the attacks need them (TRADES KL)."""
        if not self.objective.kl_attack:
            return None
        with frozen_model(model), torch.no_grad():
            return model(x).float()

    def run_attack(
        self,
        i: int,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
        clean_eval: torch.Tensor | None,
    ) -> AttackResult:
        """Attack member ``i`` with this batch's seed (and the KL loss for TRADES)."""
        attack = self.attacks[i]
        if attack is None:
            raise UnionRobustError(f"{self.name}: no attack for member {self.threats[i].spec!r}")
        attack.seed = (seed + 0x9E3779B1 * (i + 1)) & 0x7FFFFFFF
        if clean_eval is None:
            return attack(model, x, y, example_ids)
        saved = attack.loss_fn
        attack.loss_fn = kl_attack_loss(clean_eval)
        try:
            return attack(model, x, y, example_ids)
        finally:
            attack.loss_fn = saved

    def attack_members(
        self,
        members: Iterable[int],
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> list[AttackResult]:
        """Attack each member in ``members`` (see :meth:`run_attack`), sharing one eval-mode
        clean forward (only made when the attack loss needs it)."""
        clean = self.eval_logits(model, x)
        return [self.run_attack(i, model, x, y, example_ids, seed, clean) for i in members]

    def one_attack_step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> tuple[AttackResult, StrategyOutput]:
        """The step of a strategy with one attack (member 0): its result, and the loss at its
        output with the attack's success rate as ``attack_success``."""
        (res,) = self.attack_members([0], model, x, y, example_ids, seed)
        loss, logits, _ = self.loss_step(model, x, y, [res.x_adv])
        return res, StrategyOutput(
            loss, logits, {"attack_success": float(res.success.float().mean())}
        )

    def loss_step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        advs: list[torch.Tensor],
        weights: torch.Tensor | None = None,
        diversity: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One train-mode forward over [x (if the loss has a clean term), advs...].

        Returns the scalar loss, the (B, C) logits of each example's highest-loss adversarial
        input, and the adversarial terms (K, B). ``diversity`` = λ > 0 adds λ·h, the DPAR
        regulariser (Wang et al. eq. 16–17) of the adversarial terms' input gradients.
        """
        clean_needed = self.objective.needs_clean
        adv_in = torch.cat(advs) if len(advs) > 1 else advs[0]
        if diversity > 0:
            adv_in = adv_in.detach().requires_grad_(True)
        outs = train_forward(model, ([x] if clean_needed else []) + [adv_in])
        clean = outs[0] if clean_needed else None
        adv = list(outs[-1].split([a.shape[0] for a in advs]))
        per_example, terms = self.objective.combine(clean, adv, y, weights)
        if diversity > 0:
            (g,) = torch.autograd.grad(terms.sum(), adv_in, create_graph=True)
            h = diversity_logdet(g.reshape(len(advs), x.shape[0], -1))
            per_example = per_example + diversity * h
        if len(adv) == 1:
            logits = adv[0]
        else:
            worst = terms.detach().argmax(dim=0)
            logits = torch.stack(adv)[worst, torch.arange(x.shape[0], device=x.device)]
        return per_example.mean(), logits.detach(), terms
