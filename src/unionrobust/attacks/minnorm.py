"""Minimum-norm attacks: the shared machinery (DeepFool/FAB in ``linearised.py``, DDN in
``ddn.py``, the gradient-free ones in ``blackbox.py``, peers in ``adapters.py``).

A minimum-norm attack searches, per example, the *smallest* perturbation (in its threat's norm)
that changes the prediction. :class:`MinNormAttack` keeps the smallest breaking input found over
all iterations (:class:`MinNormTracker`), sharpens it by a line search towards ``x`` and returns
a :class:`MinNormResult` holding both

* ``norms`` (B,): the smallest breaking norm found (0 if ``x`` is already misclassified, ``inf``
  if nothing broke it) and ``x_min``: that input — so one run gives accuracy at every radius
  (robust at ε' iff ``norms > ε'``); and
* the usual threat-bound result (Maini et al. 2020 App. B; Tramèr & Boneh 2019 §4 "we discard
  perturbations outside the ℓp-ball"): ``x_adv`` is ``x_min`` when it lies inside the threat's
  ball ∩ box, else the projection of ``x_min − x`` onto ball ∩ box if that still breaks the
  model, else ``x``; ``success`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from unionrobust.attacks.base import (
    Attack,
    AttackResult,
    forward,
    misclassified,
)
from unionrobust.errors import (
    UnionRobustError,
    check_int,
)
from unionrobust.geometry.batch import rows as _rows
from unionrobust.losses import cw_margin
from unionrobust.rng import KeyedRandom
from unionrobust.threats import ThreatModel, single_threat


@dataclass
class MinNormResult(AttackResult):
    """:class:`AttackResult` (threat-bound: ``x_adv`` inside ball ∩ box) plus, per example, the
    smallest breaking input found ``x_min`` and its norm ``norms`` (0 where ``x`` is already
    misclassified, ``inf`` where nothing was found), in the threat's norm."""

    norms: torch.Tensor | None = None
    x_min: torch.Tensor | None = None

    def detach(self) -> MinNormResult:
        base = super().detach()
        return MinNormResult(
            base.x_adv,
            base.success,
            base.loss,
            base.threat_index,
            None if self.norms is None else self.norms.detach(),
            None if self.x_min is None else self.x_min.detach(),
        )


class MinNormTracker:
    """Per example, the breaking input of smallest ``threat.norm(x_cand − x)`` seen so far."""

    def __init__(self, x: torch.Tensor, threat: ThreatModel, clean_broken: torch.Tensor) -> None:
        self.x = x
        self.threat = threat
        self.best = x.clone()
        inf = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
        self.norms = torch.where(clean_broken, torch.zeros_like(inf), inf)

    @property
    def found(self) -> torch.Tensor:
        return torch.isfinite(self.norms)

    def subset(self, idx: torch.Tensor) -> MinNormTracker:
        """A tracker over rows ``idx`` (an index tensor) holding their best so far."""
        out = MinNormTracker.__new__(MinNormTracker)
        out.x, out.threat = self.x[idx], self.threat
        out.best, out.norms = self.best[idx].clone(), self.norms[idx].clone()
        return out

    def merge(self, local: MinNormTracker, idx: torch.Tensor) -> None:
        """Write back a :meth:`subset` tracker (it only ever improved on these rows)."""
        if local is self:
            return
        self.best[idx] = local.best
        self.norms[idx] = local.norms

    def update(self, x_cand: torch.Tensor, broken: torch.Tensor) -> torch.Tensor:
        """Fold in candidates (already in the box) that ``broken`` marks misclassified."""
        n = self.threat.norm(x_cand - self.x)
        better = broken & (n < self.norms)
        self.best = torch.where(_rows(better, self.x), x_cand, self.best)
        self.norms = torch.where(better, n, self.norms)
        return better


def line_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tracker: MinNormTracker,
    steps: int,
    amp: bool = False,
    start: torch.Tensor | None = None,
    shrink: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Bisection on λ ∈ [0, 1] for the smallest λ with x + S(δ, λ) misclassified, δ =
    ``start`` − x (default: the tracker's best), S = ``shrink`` (default λδ: the box is convex,
    so every point of the segment is a valid image; the ℓp norm scales with λ). Every
    misclassified probe is folded into ``tracker``; returns the adversarial end x + S(δ, hi)."""
    delta = (tracker.best if start is None else start) - x
    if shrink is None:

        def shrink(d: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
            return _rows(lam, d) * d

    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = (x + shrink(delta, mid)).clamp(0.0, 1.0)
        broken = misclassified(forward(model, cand, amp), y)
        tracker.update(cand, broken)
        hi = torch.where(broken, mid, hi)
        lo = torch.where(broken, lo, mid)
    return (x + shrink(delta, hi)).clamp(0.0, 1.0)


class MinNormAttack(Attack):
    """Base class: ``_search`` folds breaking candidates into a :class:`MinNormTracker`; this
    class adds the line search and the threat-bound result (see the module doc)."""

    #: norms this attack supports (threat names)
    norms_supported: tuple[str, ...] = ("linf", "l2", "l1")

    def __init__(
        self, threat: ThreatModel | str, refine_steps: int = 10, seed: int = 0, amp: bool = False
    ) -> None:
        threat = single_threat(threat, type(self).__name__)
        if threat.name not in self.norms_supported:
            raise UnionRobustError(
                f"{type(self).__name__} supports {', '.join(self.norms_supported)} threats, "
                f"got {threat.spec!r}"
            )
        super().__init__(threat, seed=seed, amp=amp)
        self.refine_steps = check_int("refine_steps", refine_steps, 0)

    def _search(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
        tracker: MinNormTracker,
    ) -> None:
        raise NotImplementedError

    def _run(self, model, x, y, rand, clean_logits) -> MinNormResult:
        tracker = MinNormTracker(x, self.threat, misclassified(clean_logits, y))
        self._search(model, x, y, rand, clean_logits, tracker)
        line_search(model, x, y, tracker, self.refine_steps, self.amp)
        return finalize(model, x, y, self.threat, tracker, self.amp)


def finalize(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    tracker: MinNormTracker,
    amp: bool = False,
) -> MinNormResult:
    """The threat-bound result: ``x_min`` if inside ball ∩ box, else its projection onto
    ball ∩ box if that still breaks the model, else ``x`` (one or two extra forwards)."""
    found = tracker.found
    delta = tracker.best - x
    inside = found & threat.contains(delta, x)
    proj = (x + threat.project(delta, x)).clamp(0.0, 1.0)
    broken_p = misclassified(forward(model, proj, amp), y) & found & ~inside
    tracker.update(proj, broken_p)
    x_adv = torch.where(_rows(inside, x), tracker.best, torch.where(_rows(broken_p, x), proj, x))
    logits = forward(model, x_adv, amp)
    return MinNormResult(
        x_adv,
        misclassified(logits, y),
        cw_margin(logits, y),
        None,
        tracker.norms.clone(),
        tracker.best.clone(),
    )


__all__ = ["MinNormAttack", "MinNormResult", "MinNormTracker", "finalize", "line_search"]
