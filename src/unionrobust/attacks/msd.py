"""Multi steepest descent over a union of threat models (Maini et al. 2020, Alg. 1, eq. 14).

Each step takes, for every member p of the union, δ_p = P_p(δ + v_p(δ)) — the member's own
steepest-ascent step from the shared iterate, projected onto its own ball ∩ box — and moves to
the δ_p with the highest loss. All K candidates of a step are scored in ONE forward pass over
the concatenated (K·B) batch; the gradient for the next step is then taken at the chosen
candidate only (one forward + backward over B). Per step: forward(K·B) + forward/backward(B),
exact. (Back-propagating through all K·B candidates and gathering the chosen gradient is also
exact but costs a K-fold backward: it measured slower on CPU.)

Readings where Alg. 1 is silent: the iterate follows the highest loss (as written), while the
best-iterate tracker prefers, among the K candidates, a misclassified one (success first, then
loss). ``threat_index`` is the member whose projection produced the returned δ (-1 for δ = 0
and the clean input). A random start draws a member per example and a point in its ball.

Alg. 1 is greedy per step: with step sizes that let one member gain loss faster than another
whose ball holds more, MSD can settle at the best point of the first ball. On a linear model
with MSD App. C.1's ratios (ℓ1 α = 4ε/T against 2.5ε/T) it stayed at the ℓ1 vertex, which lies
outside the ℓ∞ ball so the ℓ∞ candidate's projection pulls it back, while the ℓ∞ ball held 30%
more margin. Step sizes proportional to the radii (α_p = c·ε_p) avoid this there.

``select="gradient"`` (one-gradient MSD, issue 9) replaces the forward over the K·B candidates by
the first-order estimate of each candidate's loss gain, g·(x_p − x) with g the gradient already
taken at the current point x, and moves to the candidate of highest estimated gain; the
forward+backward at that point then gives its true loss (for the tracker) and the next gradient.
Per step: one forward+backward over B. The tracker sees only the chosen candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unionrobust.attacks.base import (
    Attack,
    AttackResult,
    autocast_for,
    forward,
    loss_and_grad,
    misclassified,
    run_restarts,
    upcast,
)
from unionrobust.attacks.best import BestTracker
from unionrobust.attacks.pgd import clip01, descent_options, random_start
from unionrobust.errors import UnionRobustError, check_positive, unknown_name
from unionrobust.rng import INIT_COUNTER, MEMBER_COUNTER, KeyedRandom
from unionrobust.threats import ThreatModel, Union, threat_union

#: how a step picks its candidate: a forward over all K·B (Alg. 1) or the gradient's estimate
SELECTIONS = ("forward", "gradient")


def check_select(select: str) -> str:
    if select not in SELECTIONS:
        raise unknown_name("MSD select", str(select), SELECTIONS)
    return select


class MSD(Attack):
    """Multi steepest descent (Maini et al. 2020, Alg. 1) against a union of threat models.

    ``threats``: a :class:`Union`, one threat model, or a spec such as ``"linf:0.3, l2:2, l1:10"``.
    ``alphas``: one step size per member (None → each member's ``default_alpha(steps)``).
    ``start``: ``"zero"`` (Alg. 1: δ(0) = 0), ``"random"`` or ``"zero_then_random"``; restarts
    after the first run only on examples not yet misclassified.
    ``select``: ``"forward"`` (Alg. 1: score the K candidates by a forward over K·B) or
    ``"gradient"`` (one-gradient MSD: by the first-order gain g·(x_p − x); one forward+backward
    per step).
    """

    name = "msd"
    union_attack = True

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        steps: int = 100,
        alphas: Sequence[float] | None = None,
        restarts: int = 1,
        start: str = "zero",
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
        select: str = "forward",
    ) -> None:
        union = threat_union(threats, "MSD")
        super().__init__(union, seed=seed, amp=amp)
        descent_options(self, steps, restarts, start, loss, kappa)
        if alphas is None:
            self.alphas = tuple(m.default_alpha(self.steps) for m in union)
        else:
            alphas = (alphas,) if isinstance(alphas, int | float) else tuple(alphas)
            if len(alphas) != len(union):
                raise UnionRobustError(
                    f"MSD needs one step size per threat model ({len(union)} for "
                    f"{union.spec!r}), got {len(alphas)}"
                )
            self.alphas = tuple(check_positive("alpha", a) for a in alphas)
        self.select = check_select(select)

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> AttackResult:
        tracker = BestTracker(x, self.loss_fn(clean_logits, y), misclassified(clean_logits, y))
        tracker.threat_index = torch.full_like(y, -1)

        def once(xs, ys, rs, tr, r):
            self._restart(model, xs, ys, rs, tr, r)

        run_restarts(self.restarts, x, y, rand, tracker, once)
        return AttackResult(tracker.x_adv, tracker.success, tracker.loss, tracker.threat_index)

    def _init(
        self, x: torch.Tensor, rand: KeyedRandom, restart: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        members = self.threat.members
        if not random_start(self.start, restart):
            return torch.zeros_like(x), torch.full((x.shape[0],), -1, device=x.device)
        k = len(members)
        which = rand.randint(MEMBER_COUNTER + restart, 0, k - 1)
        starts = torch.stack(
            [
                m.random_init(x, rand, INIT_COUNTER + 4 * (restart * k + i))
                for i, m in enumerate(members)
            ]
        )
        return starts[which, torch.arange(x.shape[0], device=x.device)], which

    def _restart(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        tracker: BestTracker,
        restart: int,
    ) -> None:
        members = self.threat.members
        k, b = len(members), x.shape[0]
        rows = torch.arange(b, device=x.device)
        y_rep = y.repeat(k)
        delta, index = self._init(x, rand, restart)
        x_adv = clip01(x, delta)
        logits, loss, grad = loss_and_grad(model, x_adv, y, self.loss_fn, self.amp)
        tracker.update(x_adv, loss, misclassified(logits, y), threat_index=index)
        # the steps' integer draws (ℓ1 random k) come from one batched hash per restart
        rand = rand.with_window(restart * self.steps * k, self.steps * k)
        for t in range(self.steps):
            counter = (restart * self.steps + t) * k
            cands = torch.stack(
                [
                    m.project(delta + m.step(grad, a, delta, x, rand, counter + i), x)
                    for i, (m, a) in enumerate(zip(members, self.alphas, strict=True))
                ]
            )
            x_cands = (x.unsqueeze(0) + cands).clamp_(0.0, 1.0)
            if self.select == "gradient":
                # first-order gain of each candidate from the gradient at the current point
                gain = ((x_cands - x_adv) * grad).flatten(2).sum(dim=2)  # (K, B)
                chosen = gain.argmax(dim=0)
                delta = cands[chosen, rows]
                x_adv = x_cands[chosen, rows]
                if t + 1 < self.steps:
                    logits, loss, grad = loss_and_grad(model, x_adv, y, self.loss_fn, self.amp)
                else:
                    logits = forward(model, x_adv, self.amp)
                    loss = self.loss_fn(logits, y)
                tracker.update(x_adv, loss, misclassified(logits, y), threat_index=chosen)
                continue
            flat = x_cands.reshape(k * b, *x.shape[1:])
            with torch.no_grad(), autocast_for(flat, self.amp):
                c_logits = upcast(model(flat))
            c_loss = self.loss_fn(c_logits, y_rep).reshape(k, b)
            c_succ = misclassified(c_logits, y_rep).reshape(k, b)
            chosen = c_loss.argmax(dim=0)  # Alg. 1: the candidate of highest loss
            # tracker: a misclassified candidate first, then the highest loss
            any_succ = c_succ.any(dim=0, keepdim=True)
            score = torch.where(any_succ & ~c_succ, torch.full_like(c_loss, -torch.inf), c_loss)
            best = score.argmax(dim=0)
            tracker.update(
                x_cands[best, rows], c_loss[best, rows], c_succ[best, rows], threat_index=best
            )
            delta = cands[chosen, rows]
            if t + 1 < self.steps:
                _, _, grad = loss_and_grad(model, x_cands[chosen, rows], y, self.loss_fn, self.amp)

    def __repr__(self) -> str:
        return (
            f"MSD({self.threat.spec!r}, steps={self.steps}, alphas={self.alphas}, "
            f"restarts={self.restarts}, start={self.start!r}, loss={self.loss_name!r}, "
            f"select={self.select!r})"
        )
