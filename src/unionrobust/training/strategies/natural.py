"""Natural (standard) training: the clean cross-entropy, no attack."""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.losses import cross_entropy
from unionrobust.threats import ThreatModel, Union
from unionrobust.training.strategies.base import Strategy, StrategyOutput


class Natural(Strategy):
    """Mean CE(f(x), y) with one train-mode forward; ``threats`` is only recorded."""

    name = "natural"

    def __init__(self, threats: Union | ThreatModel | str, seed: int = 0) -> None:
        super().__init__(threats, seed=seed)

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        logits = model(x).float()
        return StrategyOutput(cross_entropy(logits, y).mean(), logits.detach(), {})
