"""Projected steepest ascent for one threat model: PGD, MIM, FGSM and SLIDE.

One loop serves every norm: ``δ ← P(δ + v(δ))`` with ``v`` the threat's steepest-ascent step and
``P`` its exact ball ∩ box projection (MSD App. A; Madry et al. 2018). MIM is the same loop with
momentum on the ℓ1-normalised gradient (Dong et al. 2018, Alg. 1); FGSM is one step of size ε from
zero (Goodfellow et al. 2015, the fast gradient method of the threat's norm); SLIDE is the loop on
an ℓ1 threat with the percentile step (Tramèr & Boneh 2019, Alg. 1).

Cost per step: one forward + backward. The forward at iterate t gives both its loss (for the best
tracker) and the gradient for step t; one extra forward scores the last iterate.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import (
    Attack,
    AttackResult,
    forward,
    loss_and_grad,
    misclassified,
    run_restarts,
)
from unionrobust.attacks.best import BestTracker
from unionrobust.errors import (
    UnionRobustError,
    check_finite,
    check_int,
    check_positive,
    unknown_name,
)
from unionrobust.losses import get_loss
from unionrobust.rng import INIT_COUNTER, KeyedRandom
from unionrobust.threats import L1, ThreatModel, Union, single_threat

STARTS = ("zero", "random", "zero_then_random")


def check_start(start: str) -> str:
    if start not in STARTS:
        raise unknown_name("start", start, STARTS)
    return start


def random_start(start: str, restart: int) -> bool:
    """Whether restart ``restart`` starts at a random point (MSD App. C.1: zero, then random)."""
    return start == "random" or (start == "zero_then_random" and restart > 0)


def descent_options(
    attack: Attack, steps: int, restarts: int, start: str, loss: str, kappa: float | None
) -> None:
    """Set the options PGD and MSD share: ``steps``, ``restarts``, ``start`` and the loss."""
    attack.steps = check_int("steps", steps, 1)
    attack.restarts = check_int("restarts", restarts, 1)
    attack.start = check_start(start)
    attack.loss_name = loss
    attack.loss_fn = get_loss(loss, kappa)


def clip01(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + δ clamped to [0, 1]: removes float round-off of the exact box projection."""
    return (x + delta).clamp_(0.0, 1.0)


def l1_normalise(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖1 per example (zero rows stay zero)."""
    norm = g.reshape(g.shape[0], -1).abs().sum(dim=1).clamp_min(1e-30)
    return g / norm.reshape(-1, *([1] * (g.dim() - 1)))


class PGD(Attack):
    """Projected gradient descent (ascent on the loss) for any single threat model.

    ``start``: ``"zero"``, ``"random"`` (a draw inside ball ∩ box), or ``"zero_then_random"``
    (restart 0 from δ = 0, later restarts random, as MSD App. C.1 runs its ℓ1 attack).
    ``alpha`` None → ``threat.default_alpha(steps)``. ``loss``: ``"ce"``, ``"cw"`` (margin, capped
    at ``kappa``) or ``"dlr"``. ``momentum`` μ > 0 turns on MIM momentum: g ← μ·g + ∇/‖∇‖1 and the
    step is taken along g. Restarts after the first run only on examples not yet misclassified.
    Returns per example the best iterate over all steps and restarts (success first, then loss).
    """

    name = "pgd"

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 50,
        alpha: float | None = None,
        restarts: int = 1,
        start: str = "random",
        loss: str = "ce",
        kappa: float | None = None,
        momentum: float = 0.0,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        threat = single_threat(threat, type(self).__name__)
        super().__init__(threat, seed=seed, amp=amp)
        descent_options(self, steps, restarts, start, loss, kappa)
        self.alpha = (
            threat.default_alpha(self.steps) if alpha is None else check_positive("alpha", alpha)
        )
        self.momentum = check_finite("momentum", momentum, 0.0)

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> AttackResult:
        tracker = BestTracker(x, self.loss_fn(clean_logits, y), misclassified(clean_logits, y))

        def once(xs, ys, rs, tr, r):
            self._restart(model, xs, ys, rs, tr, r)

        run_restarts(self.restarts, x, y, rand, tracker, once)
        return AttackResult(tracker.x_adv, tracker.success, tracker.loss)

    def _restart(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        tracker: BestTracker,
        restart: int,
    ) -> None:
        threat = self.threat
        if random_start(self.start, restart):
            delta = threat.random_init(x, rand, INIT_COUNTER + 4 * restart)
        else:
            delta = torch.zeros_like(x)
        # the steps' integer draws (ℓ1 random k) come from one batched hash per restart
        rand = rand.with_window(restart * self.steps, self.steps)
        momentum = None
        for t in range(self.steps):
            x_adv = clip01(x, delta)
            logits, loss, grad = loss_and_grad(model, x_adv, y, self.loss_fn, self.amp)
            tracker.update(x_adv, loss, misclassified(logits, y))
            if self.momentum > 0:
                g = l1_normalise(grad)
                momentum = g if momentum is None else self.momentum * momentum + g
                grad = momentum
            counter = restart * self.steps + t
            delta = threat.project(
                delta + threat.step(grad, self.alpha, delta, x, rand, counter), x
            )
        x_adv = clip01(x, delta)
        logits = forward(model, x_adv, self.amp)
        tracker.update(x_adv, self.loss_fn(logits, y), misclassified(logits, y))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.threat!r}, steps={self.steps}, alpha={self.alpha:g}, "
            f"restarts={self.restarts}, start={self.start!r}, loss={self.loss_name!r})"
        )


class MIM(PGD):
    """Momentum iterative method (Dong et al. 2018): PGD with momentum ``decay`` μ on the
    ℓ1-normalised gradient, g ← μ·g + ∇/‖∇‖1, δ ← P(δ + v(g)). Dong et al. start at zero."""

    name = "mim"

    def __init__(
        self,
        threat: ThreatModel,
        steps: int = 10,
        alpha: float | None = None,
        decay: float = 1.0,
        restarts: int = 1,
        start: str = "zero",
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(
            threat,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            start=start,
            loss=loss,
            kappa=kappa,
            momentum=decay,
            seed=seed,
            amp=amp,
        )


class FGSM(PGD):
    """Fast gradient method: one step of size ε from δ = 0 along the threat's steepest-ascent
    direction (sign for ℓ∞, normalised gradient for ℓ2, the threat's sparse rule for ℓ1),
    projected onto ball ∩ box. Returns the clean point where the step lowers the loss."""

    name = "fgsm"

    def __init__(
        self,
        threat: ThreatModel,
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        threat = single_threat(threat, "FGSM")
        super().__init__(
            threat,
            steps=1,
            alpha=threat.size,
            start="zero",
            loss=loss,
            kappa=kappa,
            seed=seed,
            amp=amp,
        )


def slide_threat(threat_or_eps: L1 | float, q: float) -> L1:
    """An ℓ1 threat with the SLIDE step rule at percentile ``q``."""
    if isinstance(threat_or_eps, Union) and len(threat_or_eps) == 1:
        threat_or_eps = threat_or_eps[0]
    if isinstance(threat_or_eps, ThreatModel):
        if not isinstance(threat_or_eps, L1):
            raise UnionRobustError(f"SLIDE attacks an l1 threat model, got {threat_or_eps.spec!r}")
        t = threat_or_eps
        return L1(t.eps, step_rule="slide", k_range=t.k_range, k=t.k, q=q)
    if isinstance(threat_or_eps, bool | str) or not isinstance(threat_or_eps, int | float):
        raise UnionRobustError(
            f"SLIDE needs an L1 threat or an l1 radius, got {type(threat_or_eps).__name__}"
        )
    return L1(float(threat_or_eps), step_rule="slide", q=q)


class SLIDE(PGD):
    """Sparse ℓ1 descent (Tramèr & Boneh 2019, Alg. 1): PGD on an ℓ1 ball whose step moves every
    coordinate with |g_i| ≥ the q-th percentile of |g| by sign(g_i), normalised to unit ℓ1 norm,
    skipping coordinates pinned at the box. Alg. 1 starts at r = 0; further restarts (the paper
    evaluates with 40) start at random points: the default start is ``"zero_then_random"``."""

    name = "slide"

    def __init__(
        self,
        threat_or_eps: L1 | float,
        steps: int = 100,
        alpha: float | None = None,
        q: float = 0.99,
        restarts: int = 1,
        start: str = "zero_then_random",
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(
            slide_threat(threat_or_eps, q),
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            start=start,
            loss=loss,
            kappa=kappa,
            seed=seed,
            amp=amp,
        )
