"""MAX and AVG training over all members of the union (Tramèr & Boneh 2019, §3).

Both run every member's attack on the whole batch (K attacks per batch).

* MAX: per example, train on the adversarial example A_k*(x) with
  k* = argmax_k L(f(A_k(x)), y), L the attack's loss at its returned point (the cross-entropy,
  or the TRADES KL for ``loss="trades"``), evaluated in eval mode by the attack itself, so no
  extra forward. Ties go to the first member. Stats ``won_<norm>``: the fraction of the batch
  trained on each member.
* AVG: train on all K adversarial examples, loss (1/K)·Σ_k L(f(A_k(x)), y), in one forward over
  the K·B inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput


class Max(AdversarialStrategy):
    """Per-example worst member (Tramèr & Boneh 2019, "max" strategy)."""

    name = "max"

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        results = self.attack_members(range(len(self.threats)), model, x, y, example_ids, seed)
        losses = torch.stack([r.loss for r in results])  # (K, B)
        won = losses.argmax(dim=0)
        rows = torch.arange(x.shape[0], device=x.device)
        x_adv = torch.stack([r.x_adv for r in results])[won, rows]
        loss, logits, _ = self.loss_step(model, x, y, [x_adv])
        frac = torch.bincount(won, minlength=len(self.threats)).float() / max(x.shape[0], 1)
        stats = {f"won_{lab}": float(f) for lab, f in zip(self.labels, frac.tolist(), strict=True)}
        return StrategyOutput(loss, logits, stats)


class Avg(AdversarialStrategy):
    """All members' adversarial examples in the loss (Tramèr & Boneh 2019, "avg" strategy)."""

    name = "avg"

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        results = self.attack_members(range(len(self.threats)), model, x, y, example_ids, seed)
        loss, logits, terms = self.loss_step(model, x, y, [r.x_adv for r in results])
        means = terms.detach().mean(dim=1).tolist()
        stats = {f"loss_{lab}": float(t) for lab, t in zip(self.labels, means, strict=True)}
        return StrategyOutput(loss, logits, stats)
