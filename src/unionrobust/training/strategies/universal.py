"""Universal adversarial training (Shafahi et al. 2020, "Universal adversarial training";
the uSGD baseline of Wang et al. 2020 App. E.2).

One perturbation δ, shared by every input, lives across batches. For each batch: ``steps``
ascent steps on δ for the batch-mean cross-entropy (uSGD: SGD on the universal perturbation,
here with the threat's steepest-ascent step and exact projection, as every PGD of the library),
then one training step of the model on clip(x + δ, 0, 1) with the strategy's objective
(``mix`` = 0.5 mixes clean and adversarial cross-entropy as in Wang et al. App. C.2).

Readings: Shafahi et al. update δ with the gradient of the same forward pass that trains the
model ("simultaneous"); the strategy contract attacks with the model frozen in eval mode, so δ
takes its own forward/backward per step (cost: ``steps`` extra passes). Each perturbed input is
clipped to [0, 1], so δ lives in the ball ∩ [−1, 1] (see :class:`~unionrobust.attacks.minmax.
UniversalGroups`); the clipped perturbation of every input stays inside the ball. δ starts at 0;
it is part of :meth:`state_dict`, so a resumed run continues with the same δ. ``alpha`` None →
``threat.default_alpha(10)`` (δ can cross the ball in about ten batches).
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import frozen_model
from unionrobust.attacks.domains import PerturbationSpace
from unionrobust.errors import UnionRobustError, check_int, check_positive
from unionrobust.losses import cross_entropy
from unionrobust.rng import KeyedRandom
from unionrobust.threats import AdditiveThreat, ThreatModel, Union
from unionrobust.training.strategies.base import (
    Strategy,
    StrategyOutput,
    scaled_threat,
    train_forward,
)
from unionrobust.training.strategies.single import pick_member


class Universal(Strategy):
    """uSGD universal adversarial training on one additive member ``threat`` of the union."""

    name = "universal"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        threat: int | str | None = None,
        steps: int = 1,
        alpha: float | None = None,
        **common,
    ) -> None:
        super().__init__(threats, **common)
        member = pick_member(self.threats, threat, self.name, AdditiveThreat)
        self.member = member
        self.steps = check_int("steps", steps, 1)
        self.alpha = None if alpha is None else check_positive("alpha", alpha)
        if self.objective.loss != "ce":
            raise UnionRobustError("universal training supports loss 'ce' (with mix) only")
        self.delta: torch.Tensor | None = None

    def _update_delta(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int):
        threat = scaled_threat(self.member, self.scale)
        alpha = (self.member.default_alpha(10) if self.alpha is None else self.alpha) * self.scale
        space = PerturbationSpace(threat, torch.full_like(x[:1], 0.5), 2.0)
        if self.delta is None or self.delta.shape != x[:1].shape:
            self.delta = torch.zeros_like(x[:1])
        delta = self.delta.to(device=x.device, dtype=x.dtype)
        delta = space.project(delta)  # after an ε warm-up change δ may lie outside the ball
        rand = KeyedRandom(seed, torch.zeros(1, dtype=torch.int64, device=x.device))
        with frozen_model(model):
            for t in range(self.steps):
                leaf = delta.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = cross_entropy(model((x + leaf).clamp(0.0, 1.0)).float(), y).mean()
                    (g,) = torch.autograd.grad(loss, leaf)
                delta = space.step(delta, g, alpha, rand, t)
        self.delta = delta.detach()
        return threat, self.delta

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        threat, delta = self._update_delta(model, x, y, seed)
        x_adv = (x + delta).clamp(0.0, 1.0)
        clean_needed = self.objective.needs_clean
        outs = train_forward(model, ([x] if clean_needed else []) + [x_adv])
        clean = outs[0] if clean_needed else None
        per_example, _ = self.objective.combine(clean, [outs[-1]], y)
        with torch.no_grad():
            fooled = (outs[-1].argmax(dim=1) != y).float().mean()
        stats = {"delta_norm": float(threat.norm(delta)[0]), "universal_fooled": float(fooled)}
        return StrategyOutput(per_example.mean(), outs[-1].detach(), stats)

    def state_dict(self) -> dict:
        d = super().state_dict()
        if self.delta is not None:
            d["delta"] = self.delta.detach().cpu().clone()
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        delta = d.get("delta")
        self.delta = None if delta is None else torch.as_tensor(delta).clone()
