"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks", Alg. 1) and its ℓ1 version (Croce & Hein 2021, "Mind the
box: ℓ1-APGD for sparse adversarial attacks on image classifiers").

One loop serves every threat model; what differs between norms lives in a *step rule*
(:class:`StepSizeRule` for ℓ∞/ℓ2, :class:`L1SparsityRule` for ℓ1, in
:mod:`unionrobust.attacks.apgd_rules`).

``large_eps`` (ℓ1 only): the ε-schedule of Croce & Hein 2021 as AutoAttack runs it
(``use_largereps``, its ℓ1 "standard" version): each pass spends ⌈0.3N⌉ steps in the ball
of radius 3ε, ⌈0.3N⌉ at 2ε and the rest at ε (:data:`LARGE_EPS_SCHEDULE`). Every stage is a
fresh run of the rule (η⁽⁰⁾ = its radius) started from the previous stage's highest-loss
point projected onto its own ball ∩ box, with k from that point's sparsity. Only the
iterates of the last stage (radius ε) count as results, so the returned point lies in the
original ball ∩ box.

Where the papers leave the order of operations open we read them as follows: f(x⁽ᵏ⁺¹⁾) > f(x⁽ᵏ⁾)
is counted for every evaluated iterate since the previous checkpoint (w_j − w_{j−1} comparisons);
after a restart the next step starts from x_max with its stored gradient and the momentum term
x_max − x⁽ᵏ⁾ (Alg. 1 replaces x⁽ᵏ⁺¹⁾ only). The last iterate is evaluated with a forward pass only.

Losses: ``ce``, ``cw`` (margin), ``dlr`` (eq. 5, ≥ 3 classes) and ``dlr-targeted`` (≥ 4 classes;
one pass per target, targets = the ``n_targets`` highest clean non-true logits, clipped to
classes − 1). Success is always untargeted misclassification. Each restart/target pass runs only
on the points not yet broken when it starts; passes run side by side in one stacked batch
within the row budget (all of them if they fit, else the first alone and the rest in equal
groups: :meth:`APGD._pass_groups`), each on its own rows with its own draws, so a point's
verdict is the one the passes give one after another. The result is, per example, the best
point over all iterations, restarts and targets (a success beats a failure, then the higher loss
wins).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from unionrobust.attacks.apgd_rules import L1SparsityRule, StepSizeRule
from unionrobust.attacks.base import (
    Attack,
    AttackResult,
    LossFn,
    forward,
    loss_and_grad,
    misclassified,
)
from unionrobust.attacks.best import BestTracker
from unionrobust.errors import UnionRobustError, check_fraction, check_int, unknown_name
from unionrobust.geometry.batch import groups_clear
from unionrobust.geometry.batch import rows as _rows
from unionrobust.losses import get_loss, targeted_dlr
from unionrobust.rng import KeyedRandom
from unionrobust.threats import L1, ThreatModel, Union, single_threat

APGD_LOSSES = ("ce", "cw", "dlr", "dlr-targeted")
#: x⁽⁰⁾: the threat's random point in ball ∩ box, or that point pushed out to the ball's surface
APGD_STARTS = ("random", "surface")
#: fewest classes each loss is defined for
MIN_CLASSES = {"ce": 2, "cw": 2, "dlr": 3, "dlr-targeted": 4}


#: Croce & Hein 2021 (AutoAttack's ``use_largereps``): (multiple of ε, share of the steps)
LARGE_EPS_SCHEDULE = ((3.0, 0.3), (2.0, 0.3), (1.0, 0.4))


def large_eps_stages(steps: int) -> list[tuple[float, int]]:
    """(multiple of ε, steps) per stage of the large-ε schedule: ⌈share·N⌉ steps for every stage
    but the last, which takes the rest; a budget too small for every stage to get a step runs
    at ε alone."""
    head = [(m, math.ceil(round(share * steps, 9))) for m, share in LARGE_EPS_SCHEDULE[:-1]]
    rest = steps - sum(n for _, n in head)
    if rest < 1:
        return [(1.0, steps)]
    return [*head, (LARGE_EPS_SCHEDULE[-1][0], rest)]


def to_surface(threat: ThreatModel, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``delta`` scaled out to the threat's radius, then projected onto ball ∩ box: AutoAttack's
    APGD starts on the sphere (ℓ2: ε·n/‖n‖ for Gaussian n; ℓ∞: ε·u/‖u‖∞ for uniform u), farther
    out than a point drawn inside the ball, so a pass from there explores other basins. Rows
    with δ = 0 (nothing movable in the box) stay at 0."""
    size = threat.norm(delta)
    scale = torch.where(size > 0, threat.size / size.clamp_min(1e-12), torch.ones_like(size))
    return threat.project(delta * _rows(scale.to(delta.dtype), delta), x)


#: on accelerators an ``early_stop`` APGD drops its finished rows every this many steps (each
#: check is a host read); on CPU every step
EARLY_STOP_EVERY = 10


class RowLoss:
    """A pass's loss per row: ``fn(logits, labels)``, or ``fn(logits, labels, target)`` with
    the rows' targets (dlr-targeted), cut to the rows an early-stopping loop still runs."""

    def __init__(self, fn: Callable[..., torch.Tensor], target: torch.Tensor | None = None):
        self.fn, self.target = fn, target

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return self.fn(logits, labels)
        return self.fn(logits, labels, self.target)

    def subset(self, rows: torch.Tensor) -> RowLoss:
        return RowLoss(self.fn, None if self.target is None else self.target[rows])


def _still_running(
    success: torch.Tensor, group: torch.Tensor, live: torch.Tensor | None, n_groups: int
) -> torch.Tensor | None:
    """The positions (in ``live``, or all rows) of the rows whose group (ids < ``n_groups``)
    has no success yet; None when every live row still runs. One host read."""
    running = groups_clear(success if live is None else success[live], group, n_groups)
    if bool(running.all()):
        return None
    return running.nonzero().squeeze(1)


class APGD(Attack):
    """Auto-PGD for one threat model (ℓ∞, ℓ2, ℓ1 "Mind the box"); see the module docstring.

    ``steps`` iterations per pass, ``restarts`` random starts, ``loss`` ∈ {ce, cw, dlr,
    dlr-targeted}, ``n_targets`` target classes for dlr-targeted, ``rho`` the oscillation
    threshold of checkpoint condition 1, ``alpha`` the momentum weight, ``l1_sparsity`` the
    initial fraction of coordinates an ℓ1 step moves (0.2 for evaluation; E-AT uses 0.05–0.1
    for training), ``start`` ``"random"`` (the threat's random point in ball ∩ box) or
    ``"surface"`` (that point scaled out to the ball's surface, as AutoAttack starts; used by
    the ``standard`` suite's second targeted pass), ``large_eps`` (ℓ1 only) the
    3ε → 2ε → ε schedule of Croce & Hein 2021 ("Mind the box"; AutoAttack's
    ``use_largereps``, on in the ``standard`` suite's ℓ1 entries), ``eot`` the draws each
    step's gradient is averaged over (randomised defences; the ``rand`` suite). ``threat``: a threat
    model, a one-member union or a spec such as ``"l1:10"``.
    """

    name = "apgd"

    def __init__(
        self,
        threat: ThreatModel | Union | str,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        n_targets: int = 9,
        rho: float = 0.75,
        alpha: float = 0.75,
        seed: int = 0,
        amp: bool = False,
        l1_sparsity: float = 0.2,
        large_eps: bool = False,
        start: str = "random",
        eot: int = 1,
        early_stop: bool = False,
    ) -> None:
        threat = single_threat(threat, "APGD")
        super().__init__(threat, seed=seed, amp=amp)
        if loss not in APGD_LOSSES:
            raise unknown_name("APGD loss", loss, APGD_LOSSES)
        self.steps = check_int("APGD steps", steps, 1)
        self.restarts = check_int("APGD restarts", restarts, 1)
        self.n_targets = check_int("APGD n_targets", n_targets, 1)
        self.eot = check_int("APGD eot", eot, 1)
        self.rho = check_fraction("APGD rho", rho, one=False)
        self.alpha = check_fraction("APGD momentum alpha", alpha)
        self.l1_sparsity = check_fraction("APGD l1_sparsity", l1_sparsity)
        self.loss = loss
        if not isinstance(large_eps, bool):
            raise UnionRobustError(f"APGD large_eps must be True or False, got {large_eps!r}")
        if large_eps and not isinstance(threat, L1):
            raise UnionRobustError(
                f"APGD large_eps is the ℓ1 schedule of 'Mind the box'; {threat.spec!r} is not "
                "an ℓ1 threat (drop large_eps)"
            )
        self.large_eps = large_eps
        if start not in APGD_STARTS:
            raise unknown_name("APGD start", start, APGD_STARTS)
        self.start = start
        if not isinstance(early_stop, bool):
            raise UnionRobustError(f"APGD early_stop must be True or False, got {early_stop!r}")
        if early_stop and eot > 1:
            raise UnionRobustError(
                "APGD early_stop stops a row at its first misclassified iterate, which a "
                "randomised model (eot > 1) may not repeat; drop one of them"
            )
        self.early_stop = early_stop

    def __repr__(self) -> str:
        return (
            f"APGD({self.threat!r}, steps={self.steps}, restarts={self.restarts}, "
            f"loss={self.loss!r}{', large_eps=True' if self.large_eps else ''}"
            f"{'' if self.start == 'random' else f', start={self.start!r}'}"
            f"{'' if self.eot == 1 else f', eot={self.eot}'}"
            f"{', early_stop=True' if self.early_stop else ''})"
        )

    def _loss_and_grad(
        self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`loss_and_grad`, loss and gradient averaged over ``eot`` draws of a randomised
        model (EOT, Athalye et al. 2018; AutoAttack's ``eot_iter``); the logits are the last
        draw's."""
        logits, loss, grad = loss_and_grad(model, x_adv, y, loss_fn, self.amp)
        for _ in range(self.eot - 1):
            logits, more_loss, more_grad = loss_and_grad(model, x_adv, y, loss_fn, self.amp)
            loss, grad = loss + more_loss, grad + more_grad
        if self.eot > 1:
            loss, grad = loss / self.eot, grad / self.eot
        return logits, loss, grad

    # -- the per-norm rule lives here, and only here -------------------------------------------
    def _rule(
        self, threat: ThreatModel, steps: int, x: torch.Tensor
    ) -> StepSizeRule | L1SparsityRule:
        if isinstance(threat, L1):
            return L1SparsityRule(threat, steps, x, self.l1_sparsity)
        return StepSizeRule(threat, steps, x, self.rho, self.alpha)

    # -- orchestration: restarts, targets, batch shrinking ------------------------------------
    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> AttackResult:
        classes = clean_logits.shape[1]
        if classes < MIN_CLASSES[self.loss]:
            raise UnionRobustError(
                f"APGD loss {self.loss!r} needs at least {MIN_CLASSES[self.loss]} classes, "
                f"the model has {classes}; use loss 'ce' or 'cw'"
                + ("" if self.loss != "dlr-targeted" or classes < 3 else " or 'dlr'")
            )
        if self.loss == "dlr-targeted":
            others = clean_logits.scatter(1, y[:, None], float("-inf"))
            n_targets = min(self.n_targets, classes - 1)
            targets = others.topk(n_targets, dim=1).indices  # (B, n_targets), best first
            loss0 = targeted_dlr(clean_logits, y, targets[:, 0])
        else:
            targets = None
            n_targets = 1
            loss0 = get_loss(self.loss)(clean_logits, y)

        best = BestTracker(x, loss0, misclassified(clean_logits, y))
        # targets × restarts passes, each on the rows not yet broken when it starts (the clean
        # misclassified ones included); after the first, passes run side by side (stacked)
        passes = torch.tensor(
            [t for t in range(n_targets) for _ in range(self.restarts)], device=x.device
        )
        for numbers, idx in self._pass_groups(len(passes), best, x.shape[0]):
            rows = idx.repeat(len(numbers))
            number = torch.tensor(numbers, device=x.device).repeat_interleave(idx.numel())
            target = None if targets is None else targets[rows, passes[number]]
            fn = get_loss(self.loss) if target is None else targeted_dlr
            loss_fn = RowLoss(fn, target)
            # pass p draws with counters 4p + 1 + …, stacked or not (KeyedRandom.shifted)
            rand_rows = rand.subset(rows).shifted(4 * number)
            n = idx.numel()
            group = torch.arange(n, device=x.device).repeat(len(numbers))
            x_adv, loss, success = self._pass(model, x[rows], y[rows], rand_rows, 1, loss_fn, group)
            for j in range(len(numbers)):
                part = slice(j * n, (j + 1) * n)
                best.update(x_adv[part], loss[part], success[part], index=idx)
        return AttackResult(best.x_adv, best.success.clone(), best.loss)

    def _pass_groups(
        self, count: int, best: BestTracker, batch: int
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (pass numbers, rows) for ``count`` passes on the rows not broken yet: all of
        them side by side if they fit the row budget (:meth:`Attack.with_row_budget`; default
        ``batch``, the rows of the call), else the first pass alone (on a full batch it breaks
        most of what breaks) and then as many passes side by side as fit. On a small batch of
        survivors (the ``standard`` suite's later rounds) one model call then holds every
        target or restart instead of one: the same passes and draws, a fraction of the
        per-call overhead (1.4–1.7× less CPU on a LeNet, benchmarks/RESULTS.md). One host sync
        per group."""
        budget = self.row_budget or batch
        number = 0
        while number < count:
            idx = (~best.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            left = count - number
            fit = max(1, min(left, budget // idx.numel()))
            # the passes left in equal groups: 8 passes, 7 fit -> 4 + 4, not 7 + 1
            width = 1 if number == 0 and fit < count else -(-left // -(-left // fit))
            yield list(range(number, number + width)), idx
            number += width

    # -- one APGD run (Alg. 1), in ε stages when large_eps ------------------------------------
    def _stages(self) -> list[tuple[ThreatModel, int]]:
        """(threat, steps) per stage: the large-ε schedule, or the threat alone."""
        if not self.large_eps:
            return [(self.threat, self.steps)]
        return [
            (self.threat if m == 1.0 else self.threat.with_size(m * self.threat.size), n)
            for m, n in large_eps_stages(self.steps)
        ]

    def _pass(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        counter: int,
        loss_fn: RowLoss,
        group: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass (all stages) on rows ``x``; ``group``: each row's example (rows of passes
        side by side), for ``early_stop``."""
        stages = self._stages()
        delta: torch.Tensor | None = None
        best: BestTracker | None = None
        for number, (threat, steps) in enumerate(stages):
            rule = self._rule(threat, steps, x)
            if delta is None:
                delta, warm = rule.start(x, rand, counter), False
                if self.start == "surface":
                    delta = to_surface(threat, delta, x)
            else:  # the previous stage's x_max, projected onto this stage's smaller ball
                delta, warm = threat.project(delta, x), True
            final = number == len(stages) - 1
            delta, best = self._iterate(
                model, x, y, threat, rule, steps, delta, warm, loss_fn, final, group
            )
        assert best is not None
        return best.x_adv, best.loss, best.success

    def _iterate(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        rule: StepSizeRule | L1SparsityRule,
        steps: int,
        delta: torch.Tensor,
        warm: bool,
        loss_fn: RowLoss,
        track: bool,
        group: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, BestTracker | None]:
        """``steps`` iterations from ``delta`` in ``threat``; returns δ_max (the highest-loss
        iterate) and, if ``track``, the best-point tracker of the iterates (results). With
        ``early_stop`` and ``track`` a row stops once it, or another row of its ``group``, is
        misclassified (its verdict is final; it keeps that first misclassified iterate): the
        loop then carries only the rows still running (``live``), checked every step on CPU
        (a host read) and every :data:`EARLY_STOP_EVERY` steps elsewhere."""
        x_adv = (x + delta).clamp_(0, 1)
        logits, loss, grad = self._loss_and_grad(model, x_adv, y, loss_fn)
        best = BestTracker(x_adv, loss, misclassified(logits, y)) if track else None
        rule.begin(loss, delta if warm else None)
        delta_max, grad_max, loss_max = delta, grad, loss
        prev = delta
        stop_every = 0
        if track and self.early_stop:
            stop_every = 1 if x.device.type == "cpu" else EARLY_STOP_EVERY
        if group is None:
            group = torch.arange(x.shape[0], device=x.device)
        n_groups = x.shape[0]  # group ids are row positions of the first pass: < rows
        live: torch.Tensor | None = None  # rows still iterated (None: all)
        for t in range(1, steps + 1):
            if stop_every and t % stop_every == 0 and best is not None:
                keep = _still_running(best.success, group, live, n_groups)
                if keep is not None:
                    if keep.numel() == 0:
                        break
                    live = keep if live is None else live[keep]
                    x, y, group = x[keep], y[keep], group[keep]
                    delta, prev, delta_max = delta[keep], prev[keep], delta_max[keep]
                    grad, grad_max = grad[keep], grad_max[keep]
                    loss, loss_max = loss[keep], loss_max[keep]
                    rule.keep(keep)
                    loss_fn = loss_fn.subset(keep)
            z = threat.project(delta + rule.step(grad, delta, x), x)
            a = rule.momentum if t > 1 else 1.0
            new = (
                z
                if a == 1.0
                else threat.project(delta + a * (z - delta) + (1 - a) * (delta - prev), x)
            )
            x_adv = (x + new).clamp_(0, 1)
            last = t == steps
            if last:  # nothing steps from the last iterate: a forward pass suffices
                logits = forward(model, x_adv, self.amp)
                new_loss = loss_fn(logits, y)
            else:
                logits, new_loss, new_grad = self._loss_and_grad(model, x_adv, y, loss_fn)
            if best is not None:
                best.update(x_adv, new_loss, misclassified(logits, y), index=live)
            rule.observe(new_loss > loss)
            up = new_loss > loss_max
            delta_max = torch.where(_rows(up, new), new, delta_max)
            loss_max = torch.where(up, new_loss, loss_max)
            if last:
                break
            grad_max = torch.where(_rows(up, new), new_grad, grad_max)
            prev, delta, grad, loss = delta, new, new_grad, new_loss
            restart = rule.checkpoint(t, loss_max, delta_max)
            if restart is not None:
                r = _rows(restart, delta)
                delta = torch.where(r, delta_max, delta)
                grad = torch.where(r, grad_max, grad)
                loss = torch.where(restart, loss_max, loss)
        return delta_max, best
