"""E-AT: extreme-norms adversarial training (Croce & Hein 2022, §3.2, eq. 5).

Only the ℓ1 and ℓ∞ members are ever attacked (an ℓ2 member of the union is covered by the
geometry of Thm. 3.1 and is never attacked), one of them per batch, so a batch costs the same as
single-threat AT. The member is drawn with probability

    p_p = rerr_p / (rerr_1 + rerr_∞),  p ∈ {1, ∞}                       (eq. 5)

where rerr_p is the running average of the robust training error over the batches of the
current epoch on which the ℓp attack ran (the fraction of the batch the attack misclassified,
as the attack measured it; no extra attack). The paper resets these averages at every epoch:
``reset_each_epoch=True`` (default) follows it; False keeps them across epochs. Readings where
the paper is silent: until both attacks have run at least once since the reset, and whenever
rerr_1 + rerr_∞ = 0, the draw is uniform. "eat-uniform" (E-AT unif., Table 1) always draws
uniformly. The draw is a pure function of (seed, batch counter) and the running errors; in a
distributed run each batch's error is averaged over the processes, so all of them hold the same
averages and draw the same member. Stats: ``p_l1``, ``p_linf`` (the probabilities used for this
batch), ``chose_l1``/``chose_linf`` and the running ``rerr_l1``/``rerr_linf``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.threats import L1, Linf, ThreatModel, Union
from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput, batch_uniform

SAMPLING = ("adaptive", "uniform")


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes of a distributed run (itself otherwise), so every
    rank holds the same running errors and draws the same member as one process would."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return value


class EAT(AdversarialStrategy):
    """E-AT with eq. 5 sampling (``sampling="adaptive"``) or uniform sampling."""

    name = "eat"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        sampling: str = "adaptive",
        reset_each_epoch: bool = True,
        **options,
    ) -> None:
        if sampling not in SAMPLING:
            raise unknown_name("E-AT sampling", str(sampling), SAMPLING)
        self.sampling = sampling
        self.reset_each_epoch = bool(reset_each_epoch)
        super().__init__(threats, **options)
        self.rerr_sum = [0.0, 0.0]  # [l1, linf]
        self.rerr_count = [0, 0]

    def attacked_members(self) -> list[int]:
        l1 = [i for i, m in enumerate(self.threats) if isinstance(m, L1)]
        linf = [i for i, m in enumerate(self.threats) if isinstance(m, Linf)]
        if len(l1) != 1 or len(linf) != 1:
            raise UnionRobustError(
                f"{self.name} needs exactly one l1 and one linf threat in the union, "
                f"got {self.threats.spec!r}"
            )
        self.extremes = (l1[0], linf[0])
        return list(self.extremes)

    def probabilities(self) -> tuple[float, float]:
        """(p_l1, p_linf) for the next batch (eq. 5)."""
        if self.sampling == "uniform" or min(self.rerr_count) == 0:
            return 0.5, 0.5
        r1 = self.rerr_sum[0] / self.rerr_count[0]
        rinf = self.rerr_sum[1] / self.rerr_count[1]
        if r1 + rinf <= 0:
            return 0.5, 0.5
        return r1 / (r1 + rinf), rinf / (r1 + rinf)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.reset_each_epoch:
            self.rerr_sum = [0.0, 0.0]
            self.rerr_count = [0, 0]

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        p1, pinf = self.probabilities()
        j = 0 if batch_uniform(self.seed, self.batches) < p1 else 1  # 0: l1, 1: linf
        (res,) = self.attack_members([self.extremes[j]], model, x, y, example_ids, seed)
        loss, logits, _ = self.loss_step(model, x, y, [res.x_adv])
        rerr = float(global_mean(res.success.float().mean()))
        self.rerr_sum[j] += rerr
        self.rerr_count[j] += 1
        stats: dict[str, float | list[float]] = {
            "p_l1": p1,
            "p_linf": pinf,
            "chose_l1": float(j == 0),
            "chose_linf": float(j == 1),
        }
        for k, lab in enumerate(("l1", "linf")):
            if self.rerr_count[k]:
                stats[f"rerr_{lab}"] = self.rerr_sum[k] / self.rerr_count[k]
        return StrategyOutput(loss, logits, stats)

    def state_dict(self) -> dict:
        d = super().state_dict()
        d["rerr_sum"] = torch.tensor(self.rerr_sum, dtype=torch.float64)
        d["rerr_count"] = torch.tensor(self.rerr_count, dtype=torch.int64)
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        for key in ("rerr_sum", "rerr_count"):
            if key not in d:
                raise UnionRobustError(f"strategy state for {self.name!r} lacks {key!r}")
        self.rerr_sum = [float(v) for v in torch.as_tensor(d["rerr_sum"]).tolist()]
        self.rerr_count = [int(v) for v in torch.as_tensor(d["rerr_count"]).tolist()]


class EATUniform(EAT):
    """E-AT with uniform sampling of ℓ1/ℓ∞ ("E-AT unif." of Croce & Hein Table 1)."""

    name = "eat-uniform"

    def __init__(self, threats: Union | ThreatModel | str, **options) -> None:
        super().__init__(threats, sampling="uniform", **options)
