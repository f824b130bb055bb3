"""SAT: one random member of the union per batch (Madaan et al. 2021, as run by Croce & Hein
2022 Table 1). The member is drawn uniformly from the batch counter held in the strategy state,
so every example of a batch gets the same threat and a resumed run draws the same sequence."""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput, batch_uniform


class SAT(AdversarialStrategy):
    """Stochastic adversarial training: member k ~ Uniform{1..K} per batch."""

    name = "sat"

    def choose(self) -> int:
        k = len(self.threats)
        return min(int(batch_uniform(self.seed, self.batches) * k), k - 1)

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        i = self.choose()
        (res,) = self.attack_members([i], model, x, y, example_ids, seed)
        loss, logits, _ = self.loss_step(model, x, y, [res.x_adv])
        stats = {f"chose_{lab}": float(j == i) for j, lab in enumerate(self.labels)}
        stats["attack_success"] = float(res.success.float().mean())
        return StrategyOutput(loss, logits, stats)
