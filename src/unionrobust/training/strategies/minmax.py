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

The loop is the weighted-ascent core shared with the min-max attack
(:mod:`unionrobust.attacks.weighted`): target ``"worst"`` (problem 15, φ = +f: the weight moves
to the member with the HIGHEST loss, where the attack's problem 4 moves it to the domain hardest
to fool) and AMPGD's simultaneous order (Algorithm 2 step 4: w_r and δ_r from the previous
iterate). The adversarial inputs are the LAST iterate (AMPGD keeps no best point); with one
member the inputs are exactly the last iterate of the min-max attack on that model (and of PGD).

The outer loss is Σ_i w_i L(f(x + δ_i), y) (+ λ·h(θ) with DPAR, second-order through the
model's input gradients), in one train-mode forward over the K·B inputs. All K members are
scored in one eval-mode forward + backward over K·B per step. Stats ``w_<norm>``: the mean
domain weights after the last step.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import frozen_model, misclassified
from unionrobust.attacks.pgd import clip01, random_start
from unionrobust.attacks.weighted import Evaluation, WeightRule, weighted_ascent
from unionrobust.errors import UnionRobustError, check_int, check_number
from unionrobust.losses import cross_entropy, trades_kl
from unionrobust.rng import INIT_COUNTER, KeyedRandom
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
        self.rule = WeightRule(w_lr, gamma, "worst")
        self.gamma, self.w_lr = self.rule.gamma, self.rule.w_lr
        self.dpar = check_number("dpar", dpar, 0.0, float("inf"))
        super().__init__(threats, steps=steps, **options)
        if any(k != "pgd" for k in self.kinds):
            raise UnionRobustError("minmax runs its own AMPGD steps; attack must stay 'pgd'")

    def attacked_members(self) -> list[int]:
        return []  # AMPGD below replaces the per-member attacks

    def member_loss(self, logits, y_rep, clean_rep):
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
        """The inner maximisation: (adversarial inputs per member, domain weights (B, K)), by
        the weighted-ascent core with target "worst" (problem 15) in AMPGD's order."""
        threats = [scaled_threat(m, self.scale) for m in self.threats]
        k, b = len(threats), x.shape[0]
        rand = KeyedRandom.for_batch(seed, b, x.device, example_ids)
        with frozen_model(model):
            clean_rep = None
            if self.objective.kl_attack:
                with torch.no_grad():
                    clean_rep = model(x).float().repeat(k, 1)
            problem = _Members(self, model, threats, x, y, rand, clean_rep)
            if random_start(self.start, 0):
                starts = [
                    t.random_init(x, rand, INIT_COUNTER + 4 * i) for i, t in enumerate(threats)
                ]
            else:
                starts = [torch.zeros_like(x) for _ in threats]
            w = torch.full((b, k), 1.0 / k, device=x.device, dtype=x.dtype)
            deltas, w, _ = weighted_ascent(
                problem, torch.stack(starts), w, self.steps[0], self.rule, "simultaneous",
                final=False,
            )  # fmt: skip
        return [clip01(x, d).detach() for d in deltas], w.detach()

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


class _Members:
    """AMPGD's ascent problem: member i moves its own δ_i (stacked (K, B, ...)); all K members
    are scored in one eval-mode forward + backward over K·B inputs (+ DPAR's λ∇h)."""

    def __init__(self, strategy: MinMax, model, threats, x, y, rand, clean_rep) -> None:
        self.s, self.model, self.threats = strategy, model, threats
        self.alphas = [strategy.member_alpha(i) for i in range(len(threats))]
        self.x, self.rand, self.clean_rep = x, rand, clean_rep
        self.y_rep = y.repeat(len(threats))

    def evaluate(self, delta: torch.Tensor, t: int, grad: bool) -> Evaluation:
        k, b = delta.shape[0], delta.shape[1]
        flat = clip01(self.x.repeat(k, *([1] * (self.x.dim() - 1))), delta.flatten(0, 1))
        flat = flat.detach().requires_grad_(True)
        extra = None
        with torch.enable_grad():
            logits = self.model(flat).float()
            f = self.s.member_loss(logits, self.y_rep, self.clean_rep).reshape(k, b)
            if self.s.dpar > 0:
                (g,) = torch.autograd.grad(f.sum(), flat, create_graph=True)
                h = diversity_logdet(g.reshape(k, b, -1))
                (gh,) = torch.autograd.grad(self.s.dpar * h.sum(), flat)
                extra = gh.reshape(delta.shape)
            else:
                (g,) = torch.autograd.grad(f.sum(), flat)
        fooled = misclassified(logits.detach(), self.y_rep).reshape(k, b).T
        return Evaluation(f.detach().T, fooled, g.detach().reshape(delta.shape), extra)

    def move(self, delta: torch.Tensor, direction: torch.Tensor, t: int) -> torch.Tensor:
        x, rand, k = self.x, self.rand, delta.shape[0]
        moves = enumerate(zip(self.threats, delta, direction, self.alphas, strict=True))
        return torch.stack(
            [th.project(d + th.step(g, a, d, x, rand, t * k + i), x) for i, (th, d, g, a) in moves]
        )
