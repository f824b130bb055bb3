"""APGD's per-norm step rules (Croce & Hein 2020; Croce & Hein 2021 "Mind the box"); the loop
that drives them is :class:`unionrobust.attacks.apgd.APGD`.

* :class:`StepSizeRule` (ℓ∞, ℓ2 and any threat with a steepest-ascent ``step``), Croce & Hein 2020
  §3.1–3.2: η⁽⁰⁾ = 2ε; momentum z = P(x⁽ᵏ⁾ + η s(∇f)), x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) +
  (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)) with α = 0.75 (α = 1 on the first step); checkpoints
  w_j = ⌈p_j N⌉, p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). At w_j the
  step halves and the iterate restarts from x_max if (cond. 1) f rose on fewer than
  ρ·(w_j − w_{j−1}) of the steps since w_{j−1}, or (cond. 2) η was not halved at w_{j−1} and
  f_max did not improve since then.
* :class:`L1SparsityRule` (ℓ1), Croce & Hein 2021 §3: the step moves the k coordinates with the
  largest |∇f| that can still move inside the box by η/k each (sign of the gradient), projected
  exactly onto ℓ1-ball ∩ box (``threat.project``); η⁽⁰⁾ = ε, k⁽⁰⁾ = ``l1_sparsity``·d. Every
  ⌈0.04 N⌉ steps (at least 1) the sparsity of the best point s = ‖δ_max‖₀ sets k = max(1, ⌊s/1.5⌋)
  (the paper's s/1.5, rounded down: rounding up would freeze k at 2 and never allow the one-pixel
  steps that reach a vertex of the ℓ1 ball); if s fell below 0.95× its value at the previous
  check, η resets to ε and the iterate restarts from x_max, else η shrinks by 1.5 (never below
  ε/10). Our addition: where f_max did not rise since the previous check although η is at its
  floor ε/10, s (of an unchanged x_max) says nothing new, so k = ⌊k/1.5⌋ instead and, while
  k > 1, the iterate restarts from x_max; without it the iterate could settle on a spread point
  worse than x_max for good, and more steps found fewer adversarial points (issue 8). No
  momentum: the paper's ℓ1 update is a plain projected step (reading of the paper's update
  rule; the authors' code agrees).
"""

from __future__ import annotations

import math

import torch

from unionrobust.geometry import box_movable, l1_topk_direction
from unionrobust.geometry.batch import rows as _rows
from unionrobust.rng import KeyedRandom
from unionrobust.threats import ThreatModel

#: |δ_i| at or below this counts as zero in ‖δ‖₀: the projection's float round-off leaves
#: ~1e-8 residues that would otherwise freeze the adaptive sparsity
ZERO_TOL = 1e-6


def checkpoints(steps: int) -> list[int]:
    """Croce & Hein 2020 §3.2: w_j = ⌈p_j N⌉ for p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), while p_j ≤ 1 (j ≥ 1 returned)."""
    out: list[int] = []
    p_prev, p = 0.0, 0.22
    while p <= 1.0:
        w = math.ceil(round(p * steps, 9))
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return out


class StepSizeRule:
    """APGD's step size and restarts for ℓ∞/ℓ2-type threats (Croce & Hein 2020 §3.2)."""

    def __init__(
        self, threat: ThreatModel, steps: int, x: torch.Tensor, rho: float, momentum: float
    ) -> None:
        self.threat = threat
        self.rho = rho
        self.momentum = momentum
        b = x.shape[0]
        self.eta = torch.full((b,), 2.0 * threat.size, dtype=x.dtype, device=x.device)
        self.points = set(checkpoints(steps))
        self.last_w = 0
        self.increases = torch.zeros((b,), dtype=x.dtype, device=x.device)
        self.halved_last = torch.zeros((b,), dtype=torch.bool, device=x.device)
        self.loss_max_last = torch.full((b,), float("-inf"), dtype=x.dtype, device=x.device)

    def start(self, x: torch.Tensor, rand: KeyedRandom, counter: int) -> torch.Tensor:
        """x⁽⁰⁾: the threat's own random point in ball ∩ box."""
        return self.threat.random_init(x, rand, counter)

    def begin(self, loss0: torch.Tensor, delta0: torch.Tensor | None = None) -> None:
        """f(x⁽⁰⁾) = f_max at w_0 (a warm start ``delta0`` changes nothing else)."""
        self.loss_max_last = loss0.clone()

    def step(self, grad: torch.Tensor, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.threat.step(grad, self.eta, delta, x)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the state of ``rows`` only (the loop stopped the others)."""
        self.eta, self.increases = self.eta[rows], self.increases[rows]
        self.halved_last, self.loss_max_last = self.halved_last[rows], self.loss_max_last[rows]

    def observe(self, rose: torch.Tensor) -> None:
        self.increases += rose.to(self.increases.dtype)

    def checkpoint(
        self, t: int, loss_max: torch.Tensor, delta_max: torch.Tensor
    ) -> torch.Tensor | None:
        """At iterate ``t`` ∈ W: halve η where cond. 1 or 2 holds; return that restart mask."""
        if t not in self.points:
            return None
        cond1 = self.increases < self.rho * (t - self.last_w)
        cond2 = ~self.halved_last & (loss_max <= self.loss_max_last)
        halve = cond1 | cond2
        self.eta = torch.where(halve, self.eta / 2, self.eta)
        self.halved_last = halve
        self.loss_max_last = loss_max.clone()
        self.increases.zero_()
        self.last_w = t
        return halve


class L1SparsityRule:
    """ℓ1-APGD's sparse step and adaptive sparsity (Croce & Hein 2021 §3); see module doc."""

    momentum = 1.0  # the ℓ1 update has no momentum term

    def __init__(self, threat: ThreatModel, steps: int, x: torch.Tensor, sparsity: float) -> None:
        self.threat = threat
        self.eps = float(threat.size)
        self.dim = x[0].numel() if x.shape[0] else 1
        b = x.shape[0]
        self.eta = torch.full((b,), self.eps, dtype=x.dtype, device=x.device)
        self.eta_min = self.eps / 10
        k0 = min(max(1, math.ceil(sparsity * self.dim)), self.dim)
        self.k = torch.full((b,), k0, dtype=torch.int64, device=x.device)
        self.kmax = k0
        self.sparsity_old = torch.full((b,), float(self.dim), dtype=x.dtype, device=x.device)
        self.every = max(math.ceil(0.04 * steps), 1)
        self.loss_max_last = torch.full((b,), float("-inf"), dtype=x.dtype, device=x.device)

    def start(self, x: torch.Tensor, rand: KeyedRandom, counter: int) -> torch.Tensor:
        """x⁽⁰⁾: a standard normal draw projected onto ℓ1-ball ∩ box, which is sparse for
        ε ≪ E‖N(0, I)‖₁, as the adaptive sparsity expects (Croce & Hein 2021)."""
        return self.threat.project(rand.normal(counter, tuple(x.shape[1:]), x.dtype), x)

    def begin(self, loss0: torch.Tensor, delta0: torch.Tensor | None = None) -> None:
        """f(x⁽⁰⁾); a warm start ``delta0`` (the large-ε schedule's previous stage) sets the
        sparsity from its own: k = ⌊‖δ0‖₀/1.5⌋, as at a checkpoint."""
        self.loss_max_last = loss0.clone()
        if delta0 is not None:
            s = self._sparsity(delta0)
            self.k = torch.floor(s / 1.5).clamp(1, self.dim).to(torch.int64)
            self.kmax = int(self.k.max()) if self.k.numel() else 1  # one host read per stage
            self.sparsity_old = s

    def step(self, grad: torch.Tensor, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        movable = box_movable(grad, x + delta, grad.dtype)  # a 0/1 float mask: cheaper, same choice
        direction = l1_topk_direction(grad, self.k, movable, k_max=self.kmax)
        return _rows(self.eta, grad) * direction

    def observe(self, rose: torch.Tensor) -> None:
        pass

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the state of ``rows`` only (the loop stopped the others; k_max stays a bound)."""
        self.eta, self.k = self.eta[rows], self.k[rows]
        self.sparsity_old, self.loss_max_last = self.sparsity_old[rows], self.loss_max_last[rows]

    def _sparsity(self, delta: torch.Tensor) -> torch.Tensor:
        s = (delta.reshape(delta.shape[0], -1).abs() > ZERO_TOL).sum(dim=1)
        return s.to(self.eta.dtype)

    def checkpoint(
        self, t: int, loss_max: torch.Tensor, delta_max: torch.Tensor
    ) -> torch.Tensor | None:
        if t % self.every:
            return None
        s = self._sparsity(delta_max)
        reset = s < 0.95 * self.sparsity_old
        k = torch.floor(s / 1.5).clamp(1, self.dim).to(torch.int64)
        # ours: f_max did not rise since the last check although η is already at its floor.
        # The sparsity of the unchanged x_max carries no news and k = ⌊s/1.5⌋ would stay put,
        # the iterate settling on a spread point worse than x_max (issue 8: more steps found
        # fewer points). Then k = ⌊k/1.5⌋ and, while k can shrink, restart from x_max.
        stuck = (loss_max <= self.loss_max_last) & (self.eta <= self.eta_min * (1 + 1e-6))
        k = torch.where(stuck, torch.minimum(k, (self.k * 2).div(3, rounding_mode="floor")), k)
        k = k.clamp_min(1)
        restart = reset | (stuck & (self.k > 1))
        shrunk = (self.eta / 1.5).clamp_min(self.eta_min)
        self.eta = torch.where(reset, torch.full_like(self.eta, self.eps), shrunk)
        self.k = k
        # one host read per checkpoint (not per step) to size the top-k
        self.kmax = int(self.k.max()) if self.k.numel() else 1
        self.sparsity_old = s
        self.loss_max_last = loss_max.clone()
        return restart
