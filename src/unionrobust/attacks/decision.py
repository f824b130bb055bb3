"""A decision-based boundary search for ℓ2 and ℓ1 (HopSkipJump, Chen, Jordan & Wainwright 2020,
Alg. 2), started from an adversarial point outside the ball and shrunk towards x.

It queries only the model's decision (is the input misclassified?), so it sees through
gradient masking: MSD §5.1 / App. B and Tramèr & Boneh §4 find decision-based attacks far
stronger than PGD in ℓ2 on ℓ∞-trained MNIST models, whose thresholding first-layer filters
flatten the gradients.

Per example:

1. **Start** (``start``): the smallest breaking input of a short FAB-T (``"fab-t"``: a few
   targets and steps; the best minimum-norm point the gradient attacks can give, which lies
   outside the ball when the point is still robust), or / and blended uniform noise
   (``"noise"``: the first of ``noise_draws`` keyed uniform images the model misclassifies).
   Examples without any start keep x.
2. **Boundary**: a bisection on λ ∈ [0, 1] for the smallest shrink S(δ, λ) still
   misclassified; S(δ, λ) = λδ for ℓ2 (the segment), and for ℓ1 the projection of δ onto the
   ℓ1 ball of radius λ‖δ‖₁ (soft thresholding: it drops small coordinates first, so shrinking
   makes δ sparser, the ℓ1 analogue of HopSkipJump's ℓ∞ clip search). x + S(δ, λ) stays in the
   box (each coordinate moves towards x).
3. **Steps** (``steps``): estimate the boundary's normal at x_b from the decisions at
   x_b + ρ·u for n_t = min(``grad_queries``·√(t+1), ``max_grad_queries``) random unit u
   (clipped to the box), with the mean decision as baseline (eq. 9-10), ρ = ‖x_b − x‖₂ / d
   (θ = d^{-3/2}); step geometrically along it (ℓ1: along its ``l1_fraction`` largest
   coordinates, the ℓ1-steepest direction relaxed as in SLIDE), ξ = ‖x_b − x‖ / √(t+1) halved
   until the step is adversarial; then the boundary bisection (2.) towards x again.

Every adversarial point visited is kept by the minimum-norm tracker; the threat-bound result
(:func:`unionrobust.attacks.minnorm.finalize`) counts a point only inside ball ∩ box (the
engine re-checks). Points already broken within ε are dropped between steps.
"""

from __future__ import annotations

import math

import torch

from unionrobust.attacks.base import forward, misclassified
from unionrobust.attacks.linearised import FAB
from unionrobust.attacks.minnorm import MinNormAttack, MinNormTracker, line_search
from unionrobust.errors import check_choice, check_fraction, check_int
from unionrobust.geometry.batch import rows as _rows
from unionrobust.geometry.projections import project_l1
from unionrobust.rng import DECISION_COUNTER, KeyedRandom
from unionrobust.threats import ThreatModel

STARTS = ("fab-t+noise", "fab-t", "noise")
#: gradient-estimation samples per forward pass (memory: B × chunk inputs)
_CHUNK = 64


class BoundarySearch(MinNormAttack):
    """HopSkipJump-style decision-based search, ℓ2 and ℓ1 (see the module doc).

    ``steps`` boundary steps; ``grad_queries`` / ``max_grad_queries`` the gradient-estimation
    budget of step t (n_t = min(grad_queries·√(t+1), max)); ``binary_steps`` bisection steps
    per boundary search; ``start`` one of ``STARTS``; ``start_targets`` / ``start_steps`` the
    FAB-T start's budget; ``noise_draws`` the blended-noise start's draws; ``l1_fraction``
    the fraction of coordinates an ℓ1 step moves (its largest normal coordinates).
    """

    name = "boundary-search"
    norms_supported = ("l2", "l1")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 20,
        grad_queries: int = 50,
        max_grad_queries: int = 400,
        binary_steps: int = 14,
        start: str = "fab-t+noise",
        start_targets: int = 3,
        start_steps: int = 30,
        noise_draws: int = 20,
        l1_fraction: float = 0.01,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=0, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 0)
        self.grad_queries = check_int("grad_queries", grad_queries, 1)
        self.max_grad_queries = check_int("max_grad_queries", max_grad_queries, 1)
        self.binary_steps = check_int("binary_steps", binary_steps, 1)
        self.start = check_choice("start", start, STARTS)
        self.start_targets = check_int("start_targets", start_targets, 1)
        self.start_steps = check_int("start_steps", start_steps, 1)
        self.noise_draws = check_int("noise_draws", noise_draws, 1)
        self.l1_fraction = check_fraction("l1_fraction", l1_fraction)

    # -- starting points ----------------------------------------------------------------------
    def _starts(self, model, x, y, rand, clean_logits, tracker: MinNormTracker) -> None:
        if "fab-t" in self.start:
            fab = FAB(
                self.threat,
                steps=self.start_steps,
                n_targets=self.start_targets,
                refine_steps=0,
                seed=self.seed,
                amp=self.amp,
            )
            fab._search(model, x, y, rand, clean_logits, tracker)
        if "noise" not in self.start:
            return
        for j in range(self.noise_draws):
            todo = (~tracker.found).nonzero().squeeze(1)
            if todo.numel() == 0:
                return
            u = rand.subset(todo).uniform(DECISION_COUNTER + j, tuple(x.shape[1:]), x.dtype)
            local = tracker.subset(todo)
            local.update(u, misclassified(forward(model, u, self.amp), y[todo]))
            tracker.merge(local, todo)

    # -- geometry ------------------------------------------------------------------------------
    def _shrink(self, delta: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """S(δ, λ): λδ (ℓ2), or δ projected onto the ℓ1 ball of radius λ‖δ‖₁ (ℓ1)."""
        if self.threat.name == "l1":
            return project_l1(delta, lam * self.threat.norm(delta))
        return _rows(lam, delta) * delta

    def _boundary(self, model, x, y, x_adv, sub: MinNormTracker) -> torch.Tensor:
        """The boundary bisection (2.) from the misclassified ``x_adv``: its adversarial end,
        every probe folded into ``sub``."""
        return line_search(
            model, x, y, sub, self.binary_steps, self.amp, start=x_adv, shrink=self._shrink
        )

    def _normal(self, model, y, x_b, rho, rand: KeyedRandom, t: int) -> torch.Tensor:
        """Unit estimate of the boundary's normal at ``x_b`` (towards misclassification) from
        n_t decisions at x_b + ρ·u (HopSkipJump eq. 9-10, mean decision as baseline)."""
        n = min(int(self.grad_queries * math.sqrt(t + 1)), self.max_grad_queries)
        b, shape = x_b.shape[0], tuple(x_b.shape[1:])
        sum_fu = torch.zeros_like(x_b)
        sum_u = torch.zeros_like(x_b)
        sum_f = torch.zeros(b, dtype=x_b.dtype, device=x_b.device)
        r = _rows(rho, x_b).unsqueeze(1)
        for k, lo in enumerate(range(0, n, _CHUNK)):
            m = min(_CHUNK, n - lo)
            ctr = DECISION_COUNTER + (1 << 10) + t * (1 << 8) + k
            u = rand.seeded_normal(ctr, (m, *shape), x_b.dtype)
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).reshape(b, m, *(1,) * len(shape))
            pert = (x_b.unsqueeze(1) + r * u).clamp(0.0, 1.0)
            u = (pert - x_b.unsqueeze(1)) / r
            logits = forward(model, pert.reshape(b * m, *shape), self.amp)
            f = misclassified(logits, y.repeat_interleave(m)).reshape(b, m).to(x_b.dtype) * 2 - 1
            ff = f.reshape(b, m, *(1,) * len(shape))
            sum_fu += (ff * u).sum(dim=1)
            sum_u += u.sum(dim=1)
            sum_f += f.sum(dim=1)
        mean_f = sum_f / n
        same = mean_f.abs() == 1
        g = torch.where(
            _rows(same, x_b), _rows(mean_f, x_b) * sum_u, sum_fu - _rows(mean_f, x_b) * sum_u
        )
        return g / _rows(g.flatten(1).norm(dim=1).clamp_min(1e-12), g)

    # -- the search ----------------------------------------------------------------------------
    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        self._starts(model, x, y, rand, clean_logits, tracker)
        eps = self.threat.size
        rows = (tracker.found & (tracker.norms > eps)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        sub, xs, ys, rs = tracker.subset(rows), x[rows], y[rows], rand.subset(rows)
        x_b = self._boundary(model, xs, ys, sub.best, sub)
        d = x[0].numel()
        for t in range(self.steps):
            keep = sub.norms > eps  # one host sync per step: drop the points broken within ε
            if not bool(keep.all()):
                tracker.merge(sub, rows)
                rows, xs, ys, x_b = rows[keep], xs[keep], ys[keep], x_b[keep]
                if rows.numel() == 0:
                    return
                sub, rs = tracker.subset(rows), rand.subset(rows)
            dist = (x_b - xs).flatten(1).norm(dim=1)
            v = self._normal(model, ys, x_b, (dist / d).clamp_min(1e-12), rs, t)
            xi = self.threat.norm(x_b - xs) / math.sqrt(t + 1)
            if self.threat.name == "l1":  # ℓ1: step on the top coordinates of the normal
                v = _top_coordinates(v, max(1, math.ceil(self.l1_fraction * d)))
            cand = (x_b + _rows(xi, v) * v).clamp(0.0, 1.0)
            ok = misclassified(forward(model, cand, self.amp), ys)
            for _ in range(10):  # geometric step: halve until adversarial
                if bool(ok.all()):
                    break
                xi = torch.where(ok, xi, xi / 2)
                cand = torch.where(_rows(ok, cand), cand, (x_b + _rows(xi, v) * v).clamp(0, 1))
                ok = misclassified(forward(model, cand, self.amp), ys)
            cand = torch.where(_rows(ok, cand), cand, x_b)  # no adversarial step: stay
            sub.update(cand, ok)
            x_b = self._boundary(model, xs, ys, cand, sub)
        tracker.merge(sub, rows)


def _top_coordinates(v: torch.Tensor, k: int) -> torch.Tensor:
    """``v`` kept on its ``k`` largest |coordinates| per row, rescaled to unit ℓ1 norm (the
    ℓ1-steepest direction relaxed to k coordinates, as SLIDE's top-k step)."""
    flat = v.flatten(1)
    idx = flat.abs().topk(min(k, flat.shape[1]), dim=1).indices
    out = torch.zeros_like(flat).scatter(1, idx, flat.gather(1, idx))
    return (out / out.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)).reshape(v.shape)


__all__ = ["STARTS", "BoundarySearch"]
