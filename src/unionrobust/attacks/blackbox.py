"""Gradient-free and decision-based attacks: the gradient-masking detectors of the papers' full
protocol (Maini et al. 2020 App. B; Tramèr & Boneh 2019 §4).

They never call backward. The noise and pointwise attacks are minimum-norm searches (they return
a :class:`~unionrobust.attacks.minnorm.MinNormResult`: the smallest breaking input found and its
norm, and the threat-bound result).
All randomness comes from the example-keyed :class:`~unionrobust.rng.KeyedRandom`.

* :class:`GaussianNoise`: for each of ``repeats`` Gaussian directions n (rescaled to unit threat
  norm), try x + ρ·n for ``steps`` radii ρ evenly spaced up to ``max_norm`` (Foolbox's additive
  noise attack, whose ℓ2 version is MSD Table 3's "Gaussian Noise"); ℓ2 (any ℓp works).
* :class:`SaltPepper`: for each of ``repeats`` draws u ~ U[0,1] per pixel (shared by its
  channels), set pixels with u < p/2 to 1 and with u > 1 − p/2 to 0, for ``steps`` values of p
  evenly spaced up to ``max_p`` (the noised pixel sets are nested, so the first breaking p is the
  draw's smallest); ℓ0, ℓ1 (and ℓ2).
* :class:`Pointwise` (Schott et al. 2019, "Towards the first adversarially robust neural network
  model on MNIST", §5): start from the salt-and-pepper result, then visit the perturbed
  coordinates in a random order and reset each to its clean value if the input stays
  misclassified, repeating until a pass changes nothing (or ``passes`` passes); then, for each
  still perturbed coordinate, a bisection between its clean and adversarial value
  (``binary_steps``; Foolbox's second stage). One forward per visited coordinate.

The score-based Square attack (a gradient-masking detector inside the ball) is in
:mod:`unionrobust.attacks.square`.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import forward, misclassified
from unionrobust.attacks.minnorm import MinNormAttack, MinNormTracker
from unionrobust.errors import check_fraction, check_int, check_positive
from unionrobust.geometry.batch import rows as _rows
from unionrobust.rng import STEP_COUNTER, KeyedRandom
from unionrobust.threats import ThreatModel


def _pixel_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Per-example shape of a pixel mask: (1, H, W) for images (channels share it), else the
    input's own shape."""
    if x.dim() == 4:
        return (1, *x.shape[2:])
    return tuple(x.shape[1:])


class GaussianNoise(MinNormAttack):
    """Additive Gaussian noise of growing norm (see the module doc); ``max_norm`` None = ε."""

    name = "gaussian-noise"

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 20,
        repeats: int = 10,
        max_norm: float | None = None,
        refine_steps: int = 0,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.repeats = check_int("repeats", repeats, 1)
        self.max_norm = (
            self.threat.size if max_norm is None else check_positive("max_norm", max_norm)
        )

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        for r in range(self.repeats):
            n = rand.normal(r, tuple(x.shape[1:]), x.dtype)
            n = n / _rows(self.threat.norm(n).clamp_min(1e-12), x)
            for k in range(1, self.steps + 1):
                cand = (x + (self.max_norm * k / self.steps) * n).clamp(0.0, 1.0)
                tracker.update(cand, misclassified(forward(model, cand, self.amp), y))


def salt_pepper_search(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rand: KeyedRandom,
    tracker: MinNormTracker,
    steps: int,
    repeats: int,
    max_p: float,
    amp: bool = False,
    counter0: int = 0,
) -> None:
    """Salt-and-pepper noise of growing density p (see :class:`SaltPepper`). A draw stops once
    every example has broken (one host sync per step)."""
    for r in range(repeats):
        u = rand.uniform(counter0 + r, _pixel_shape(x), x.dtype)
        todo = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for k in range(1, steps + 1):
            p = max_p * k / steps
            cand = torch.where(u < p / 2, torch.ones_like(x), x)
            cand = torch.where(u > 1 - p / 2, torch.zeros_like(x), cand)
            broken = misclassified(forward(model, cand, amp), y)
            tracker.update(cand, broken)
            todo = todo & ~broken
            if not bool(todo.any()):
                break


class SaltPepper(MinNormAttack):
    """Salt-and-pepper noise (see the module doc); ℓ0, ℓ1 or ℓ2 threats."""

    name = "salt-pepper"
    norms_supported = ("l0", "l1", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 100,
        repeats: int = 10,
        max_p: float = 0.2,
        refine_steps: int = 0,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.repeats = check_int("repeats", repeats, 1)
        self.max_p = check_fraction("max_p", max_p)

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        salt_pepper_search(
            model, x, y, rand, tracker, self.steps, self.repeats, self.max_p, self.amp
        )


class Pointwise(MinNormAttack):
    """Pointwise attack (Schott et al. 2019), started from salt-and-pepper noise; see the module
    doc. ``sp_steps``/``sp_repeats``/``max_p`` set the starting search; ``passes`` bounds the
    reset passes; ``binary_steps`` the per-coordinate bisection (0 = none); ``restarts`` whole
    runs from fresh salt-and-pepper draws and visiting orders, the smallest result kept (the
    reset order decides which local minimum a run ends in). Cost per run: about (number of
    perturbed coordinates) × (passes + binary_steps) forwards."""

    name = "pointwise"
    norms_supported = ("l0", "l1", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        passes: int = 3,
        binary_steps: int = 5,
        sp_steps: int = 100,
        sp_repeats: int = 3,
        max_p: float = 0.5,
        restarts: int = 1,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=0, seed=seed, amp=amp)
        self.restarts = check_int("restarts", restarts, 1)
        self.passes = check_int("passes", passes, 1)
        self.binary_steps = check_int("binary_steps", binary_steps, 0)
        self.sp_steps = check_int("sp_steps", sp_steps, 1)
        self.sp_repeats = check_int("sp_repeats", sp_repeats, 1)
        self.max_p = check_fraction("max_p", max_p)

    def _order(self, x, cur, rand, counter) -> tuple[torch.Tensor, int]:
        """Flat indices of the perturbed coordinates first, in a keyed random order, and the
        largest count of perturbed coordinates in the batch."""
        changed = (cur != x).reshape(x.shape[0], -1)
        u = rand.uniform(counter, (changed.shape[1],), torch.float64)
        order = (u + 2.0 * (~changed)).argsort(dim=1)
        return order, int(changed.sum(dim=1).max())

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        clean_broken = misclassified(clean_logits, y)
        for r in range(self.restarts):  # each run from its own start; the tracker keeps the best
            run = MinNormTracker(x, self.threat, clean_broken)
            self._once(model, x, y, rand, run, r)
            tracker.update(run.best, run.found)

    def _once(self, model, x, y, rand, tracker, restart: int) -> None:
        """One run: the salt-and-pepper start, the reset passes, the bisection; keyed draws of
        its own for each ``restart``."""
        salt_pepper_search(
            model,
            x,
            y,
            rand,
            tracker,
            self.sp_steps,
            self.sp_repeats,
            self.max_p,
            self.amp,
            counter0=restart * self.sp_repeats,
        )
        b = x.shape[0]
        xf = x.reshape(b, -1)
        cur = tracker.best.reshape(b, -1).clone()
        rows = torch.arange(b, device=x.device)
        counter = STEP_COUNTER + (1 << 20) + restart * (self.passes + 1)
        for _ in range(self.passes):  # stage 1: reset coordinates to their clean value
            order, count = self._order(xf, cur, rand, counter)
            counter += 1
            changed_any = torch.zeros(b, dtype=torch.bool, device=x.device)
            for j in range(count):
                pos = order[:, j]
                diff = cur[rows, pos] != xf[rows, pos]
                cand = cur.clone()
                cand[rows, pos] = xf[rows, pos]
                ok = misclassified(forward(model, cand.reshape(x.shape), self.amp), y) & diff
                cur = torch.where(ok[:, None], cand, cur)
                changed_any |= ok
            if not bool(changed_any.any()):
                break
        found = tracker.found
        cur = torch.where(found[:, None], cur, xf)
        tracker.update(cur.reshape(x.shape), found)
        if self.binary_steps == 0:
            return
        order, count = self._order(xf, cur, rand, counter)
        for j in range(count):  # stage 2: bisection between the clean and adversarial value
            pos = order[:, j]
            lo, hi = xf[rows, pos], cur[rows, pos]  # lo: clean (not adversarial), hi: adversarial
            active = hi != lo
            for _ in range(self.binary_steps):
                mid = (lo + hi) / 2
                cand = cur.clone()
                cand[rows, pos] = mid
                ok = misclassified(forward(model, cand.reshape(x.shape), self.amp), y) & active
                hi = torch.where(ok, mid, hi)
                lo = torch.where(ok, lo, mid)
            cur[rows, pos] = torch.where(active, hi, cur[rows, pos])
        tracker.update(cur.reshape(x.shape), found)


# --------------------------------------------------------------------------- Square

__all__ = ["GaussianNoise", "Pointwise", "SaltPepper", "salt_pepper_search"]
