"""Per-example worst case over several attacks (the MAX strategy's inner maximisation and the
union attack): run each attack, keep per example the strongest result (Maini et al. 2020,
eqs. 11-12; Tramèr & Boneh 2019, "max")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unionrobust.attacks.base import Attack, AttackResult
from unionrobust.attacks.best import BestTracker
from unionrobust.errors import UnionRobustError
from unionrobust.rng import KeyedRandom
from unionrobust.threats import ThreatModel, Union


class WorstOf(Attack):
    """Run several attacks and keep, per example, a success first, then the highest loss.

    ``threat_index`` is the position in ``attacks`` of the attack whose result is returned (-1
    where the returned input is the clean one). Losses of different attacks are compared as
    they are, so give all attacks the same loss when the loss matters (MAX training).
    ``shrink=True``: each attack runs only on the examples the earlier ones did not misclassify
    (the first runs on all); ``shrink=False`` runs every attack on every example. Each attack
    keeps its own seed; example ids are passed through, so results are batch-independent.
    """

    name = "worst-of"
    union_attack = True
    threat_kind = ThreatModel  # each attack checked its own member

    def __init__(self, attacks: Sequence[Attack], shrink: bool = True) -> None:
        attacks = tuple(attacks)
        if not attacks:
            raise UnionRobustError("WorstOf needs at least one attack")
        for a in attacks:
            if not isinstance(a, Attack):
                raise UnionRobustError(f"WorstOf combines attacks, got {type(a).__name__}")
        super().__init__(Union([a.threat for a in attacks]), seed=0, amp=False)
        self.attacks = attacks
        self.shrink = bool(shrink)

    def each(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None = None,
    ) -> list[AttackResult]:
        """Every attack's own result on every example (for AVG-style training)."""
        return [a(model, x, y, example_ids) for a in self.attacks]

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> AttackResult:
        first = self.attacks[0](model, x, y, rand.ids)
        tracker = BestTracker(first.x_adv, first.loss, first.success)
        tracker.threat_index = torch.zeros_like(y)
        for i, attack in enumerate(self.attacks[1:], start=1):
            if not self.shrink:
                res = attack(model, x, y, rand.ids)
                tracker.update(res.x_adv, res.loss, res.success, threat_index=i)
                continue
            idx = (~tracker.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            res = attack(model, x[idx], y[idx], rand.ids[idx])
            tracker.update(res.x_adv, res.loss, res.success, index=idx, threat_index=i)
        unchanged = (tracker.x_adv == x).reshape(x.shape[0], -1).all(dim=1)
        index = torch.where(
            unchanged, torch.full_like(tracker.threat_index, -1), tracker.threat_index
        )
        return AttackResult(tracker.x_adv, tracker.success, tracker.loss, index)

    def __repr__(self) -> str:
        inner = ", ".join(repr(a) for a in self.attacks)
        return f"WorstOf([{inner}], shrink={self.shrink})"
