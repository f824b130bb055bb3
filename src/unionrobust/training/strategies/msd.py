"""MSD training (Maini et al. 2020, §4 and App. C.2): adversarial training on the multi steepest
descent attack over the whole union (:class:`unionrobust.attacks.msd.MSD`); one attack per batch
whose steps try every member's steepest-ascent step. Stats ``won_<norm>``: the fraction of the
batch whose returned point lies in each member's ball (``won_none``: left at the clean point).
``select="gradient"`` trains on one-gradient MSD (candidate chosen by the first-order loss gain,
one forward+backward per step; see :mod:`unionrobust.attacks.msd`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from unionrobust.attacks.msd import MSD, check_select
from unionrobust.errors import UnionRobustError
from unionrobust.threats import ThreatModel, Union, as_union
from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput, scaled_threat


class MSDStrategy(AdversarialStrategy):
    """MSD adversarial training; ``steps`` one number (MSD App. C.2: 100 on MNIST, 50 on
    CIFAR-10; default 10), ``alpha`` per member, ``start`` "zero" as in MSD Alg. 1, ``select``
    "forward" (Alg. 1) or "gradient" (one-gradient MSD)."""

    name = "msd"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        steps: int = 10,
        alpha: float | Sequence[float] | Mapping[str, float] | None = None,
        restarts: int = 1,
        start: str = "zero",
        select: str = "forward",
        **common,
    ) -> None:
        self.select = check_select(select)
        if isinstance(steps, Mapping) or (
            isinstance(steps, Sequence) and not isinstance(steps, str)
        ):
            raise UnionRobustError("msd: steps is one number for the whole union")
        super().__init__(
            threats, steps=steps, alpha=alpha, restarts=restarts, start=start, **common
        )

    def _build(self) -> None:
        union = as_union(Union([scaled_threat(m, self.scale) for m in self.threats]))
        alphas = [self.member_alpha(i) for i in range(len(self.threats))]
        self.attacks = [
            MSD(
                union,
                steps=self.steps[0],
                alphas=alphas,
                restarts=self.restarts,
                start=self.start,
                amp=self.amp,
                select=self.select,
            )
        ]

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        res, out = self.one_attack_step(model, x, y, example_ids, seed)
        k = len(self.threats)
        index = res.threat_index if res.threat_index is not None else torch.full_like(y, -1)
        counts = torch.bincount(index + 1, minlength=k + 1).float() / max(x.shape[0], 1)
        counts = counts.tolist()
        stats = {f"won_{lab}": float(c) for lab, c in zip(self.labels, counts[1:], strict=True)}
        stats["won_none"] = float(counts[0])
        return StrategyOutput(out.loss, out.logits, {**stats, **out.stats})
