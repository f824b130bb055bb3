"""Min-max generalized adversarial training (Wang et al. 2020, §2.3 eq. 11/15, §3.2 AMPGD).

Per example the inner problem is  max_{w ∈ P, δ_i ∈ X_i}  ψ = Σ_i w_i f_i(δ_i) − γ/2‖w − 1/K‖²
(eq. 15; f_i the training loss at x + δ_i), optionally + λ·h with the DPAR diversity term
h = log det(GᵀG) of the normalised input gradients (eq. 16–17). AMPGD runs R = ``steps``
alternating projected ascent steps from w = 1/K (per example; a fresh batch has no previous w)
and δ_i = a random point of X_i (or 0 with ``start="zero"``); both use the previous iterate:

    w ← Proj_P(w + β·(F − γ(w − 1/K)))        (eq. 14, β = ``w_lr``, F = [f_i(δ_i)]_i)
    δ_i ← Proj_{X_i}(δ_i + v_i(∇_{δ_i} ψ))      (+ λ∇_{δ_i} h with DPAR)

Reading: the paper's δ step is a raw gradient step; we take each threat's steepest-ascent step
v_i of size α_i (sign for ℓ∞, normalised for ℓ2, sparse for ℓ1), as every PGD in this library
and as the MSD/Madry attacks do — the paper's raw step is not scale invariant. As in ∇_{δ_i} ψ,
the gradient carries the factor w_i, so a member whose weight reaches 0 stops moving. The
iteration converges for β·γ < 2; its fixed point is w = Proj_P(1/K + F/γ), which tends to the
uniform average as γ → ∞ and to the arg-max member (MAX) as γ → 0.

The outer loss is Σ_i w_i L(f(x + δ_i), y) (+ λ·h(θ) with DPAR, second-order through the
model's input gradients), in one train-mode forward over the K·B inputs. All K members are
scored in one eval-mode forward + backward over K·B per step. Stats ``w_<norm>``: the mean
domain weights after the last step.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import frozen_model
from unionrobust.attacks.pgd import INIT_COUNTER, random_start
from unionrobust.errors import UnionRobustError, check_int, check_number
from unionrobust.geometry import project_simplex
from unionrobust.losses import cross_entropy, trades_kl
from unionrobust.rng import KeyedRandom
from unionrobust.threats import ThreatModel, Union
from unionrobust.training.strategies.adversarial import AdversarialStrategy
from unionrobust.training.strategies.base import StrategyOutput, scaled_threat
from unionrobust.training.strategies.objective import diversity_logdet


class MinMax(AdversarialStrategy):
    """AMPGD generalized AT with domain weights (``gamma`` = γ, ``w_lr`` = β, ``dpar`` = λ)."""

    name = "minmax"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        steps: int = 10,
        gamma: float = 3.0,
        w_lr: float = 0.02,
        dpar: float = 0.0,
        **options,
    ) -> None:
        if isinstance(steps, list | tuple | dict):
            raise UnionRobustError("minmax: steps is one number (AMPGD's R) for all members")
        steps = check_int("steps", steps, 1)
        self.gamma = check_number("gamma", gamma, 0.0, float("inf"))
        self.w_lr = check_number("w_lr", w_lr, 0.0, float("inf"))
        self.dpar = check_number("dpar", dpar, 0.0, float("inf"))
        super().__init__(threats, steps=steps, **options)
        if any(k != "pgd" for k in self.kinds):
            raise UnionRobustError("minmax runs its own AMPGD steps; attack must stay 'pgd'")

    def attacked_members(self) -> list[int]:
        return []  # AMPGD below replaces the per-member attacks

    def _member_loss(self, logits, y_rep, clean_rep):
        if clean_rep is not None:
            return trades_kl(logits, clean_rep)
        return cross_entropy(logits, y_rep)

    def ampgd(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The inner maximisation: (adversarial inputs per member, domain weights (B, K))."""
        threats = [scaled_threat(m, self.scale) for m in self.threats]
        k, b = len(threats), x.shape[0]
        alphas = [self.member_alpha(i) for i in range(k)]
        rand = KeyedRandom.for_batch(seed, b, x.device, example_ids)
        y_rep = y.repeat(k)
        uniform = 1.0 / k
        with frozen_model(model):
            clean_rep = None
            if self.objective.kl_attack:
                with torch.no_grad():
                    clean_rep = model(x).float().repeat(k, 1)
            if random_start(self.start, 0):
                deltas = [
                    t.random_init(x, rand, INIT_COUNTER + 4 * i) for i, t in enumerate(threats)
                ]
            else:
                deltas = [torch.zeros_like(x) for _ in threats]
            w = torch.full((b, k), uniform, device=x.device, dtype=x.dtype)
            for r in range(self.steps[0]):
                flat = torch.cat([(x + d).clamp(0.0, 1.0) for d in deltas])
                flat = flat.detach().requires_grad_(True)
                with torch.enable_grad():
                    f = self._member_loss(model(flat).float(), y_rep, clean_rep).reshape(k, b)
                    objective = (w.T * f).sum()
                    if self.dpar > 0:
                        (g,) = torch.autograd.grad(f.sum(), flat, create_graph=True)
                        h = diversity_logdet(g.reshape(k, b, -1))
                        objective = objective + self.dpar * h.sum()
                    (grad,) = torch.autograd.grad(objective, flat)
                grads = grad.reshape(k, *x.shape)
                fvals = f.detach().T.to(w.dtype)  # (B, K)
                w_next = project_simplex(w + self.w_lr * (fvals - self.gamma * (w - uniform)))
                moves = enumerate(zip(threats, deltas, grads, alphas, strict=True))
                deltas = [
                    t.project(d + t.step(g_, a, d, x, rand, r * k + i), x)
                    for i, (t, d, g_, a) in moves
                ]
                w = w_next
        return [(x + d).clamp(0.0, 1.0).detach() for d in deltas], w.detach()

    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        advs, w = self.ampgd(model, x, y, example_ids, seed)
        loss, logits, _ = self.loss_step(model, x, y, advs, weights=w, diversity=self.dpar)
        mean_w = w.mean(dim=0).tolist()
        stats = {f"w_{lab}": float(v) for lab, v in zip(self.labels, mean_w, strict=True)}
        return StrategyOutput(loss, logits, stats)
