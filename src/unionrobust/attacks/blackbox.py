"""Gradient-free and decision-based attacks: the gradient-masking detectors of the papers' full
protocol (Maini et al. 2020 App. B; Tramèr & Boneh 2019 §4).

They never call backward. The noise and pointwise attacks are minimum-norm searches (they return
a :class:`~unionrobust.attacks.minnorm.MinNormResult`: the smallest breaking input found and its
norm, and the threat-bound result); the Square attack is a score-based attack inside the ball.
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
* :class:`Square` (Andriushchenko et al. 2020, Alg. 1 with the ℓ∞ sampler of Alg. 2): random
  search from vertical ±ε stripes; each step redraws one square window (side from the paper's
  p-schedule) with ±ε per channel and keeps it if the margin z_y − max_{j≠y} z_j decreases.
  ℓ∞, images (B, C, H, W), one forward per step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unionrobust.attacks.base import Attack, AttackResult, forward, misclassified
from unionrobust.attacks.minnorm import MinNormAttack, MinNormTracker
from unionrobust.attacks.pgd import check_int, check_positive, single_threat
from unionrobust.errors import UnionRobustError
from unionrobust.losses import cw_margin
from unionrobust.rng import KeyedRandom
from unionrobust.threats import ThreatModel


def _rows(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (ref.dim() - 1)))


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
        self.max_p = check_positive("max_p", max_p)
        if self.max_p > 1:
            raise UnionRobustError(f"max_p must lie in (0, 1], got {max_p!r}")

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        salt_pepper_search(
            model, x, y, rand, tracker, self.steps, self.repeats, self.max_p, self.amp
        )


class Pointwise(MinNormAttack):
    """Pointwise attack (Schott et al. 2019), started from salt-and-pepper noise; see the module
    doc. ``sp_steps``/``sp_repeats``/``max_p`` set the starting search; ``passes`` bounds the
    reset passes; ``binary_steps`` the per-coordinate bisection (0 = none). Cost: about
    (number of perturbed coordinates) × (passes + binary_steps) forwards."""

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
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=0, seed=seed, amp=amp)
        self.passes = check_int("passes", passes, 1)
        self.binary_steps = check_int("binary_steps", binary_steps, 0)
        self.sp_steps = check_int("sp_steps", sp_steps, 1)
        self.sp_repeats = check_int("sp_repeats", sp_repeats, 1)
        self.max_p = check_positive("max_p", max_p)
        if self.max_p > 1:
            raise UnionRobustError(f"max_p must lie in (0, 1], got {max_p!r}")

    def _order(self, x, cur, rand, counter) -> tuple[torch.Tensor, int]:
        """Flat indices of the perturbed coordinates first, in a keyed random order, and the
        largest count of perturbed coordinates in the batch."""
        changed = (cur != x).reshape(x.shape[0], -1)
        u = rand.uniform(counter, (changed.shape[1],), torch.float64)
        order = (u + 2.0 * (~changed)).argsort(dim=1)
        return order, int(changed.sum(dim=1).max())

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        salt_pepper_search(
            model, x, y, rand, tracker, self.sp_steps, self.sp_repeats, self.max_p, self.amp
        )
        b = x.shape[0]
        xf = x.reshape(b, -1)
        cur = tracker.best.reshape(b, -1).clone()
        rows = torch.arange(b, device=x.device)
        counter = 1 << 20
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
def square_p(p_init: float, step: int, steps: int) -> float:
    """The fraction of pixels changed at ``step`` (Andriushchenko et al. 2020, §3 and their
    schedule for 10 000 queries, rescaled to ``steps``): p_init halved at 10, 50, 200, 500, 1000,
    2000, 4000, 6000 and 8000 (per 10 000)."""
    it = int(step / steps * 10000)
    halvings = sum(it > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


class Square(Attack):
    """Square attack, ℓ∞ (see the module doc). ``steps`` queries after the initial one;
    ``p_init`` the initial fraction of pixels per window (the paper's 0.05 for ImageNet-size
    models; 0.3 suits MNIST/CIFAR, as in the authors' defaults); ``restarts`` random restarts on
    the examples not yet broken."""

    name = "square"

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 1000,
        p_init: float = 0.3,
        restarts: int = 1,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        threat = single_threat(threat, "Square")
        if threat.name != "linf":
            raise UnionRobustError(
                f"Square supports linf threats (use ta-square for l2), got {threat.spec!r}"
            )
        super().__init__(threat, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.p_init = check_positive("p_init", p_init)
        if self.p_init > 1:
            raise UnionRobustError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.restarts = check_int("restarts", restarts, 1)

    def _run(self, model, x, y, rand, clean_logits) -> AttackResult:
        if x.dim() != 4:
            raise UnionRobustError(
                f"Square attacks images (B, C, H, W), got shape {tuple(x.shape)}"
            )
        best = x.clone()
        margin = -cw_margin(clean_logits, y)  # z_y − max_{j≠y} z_j: minimised
        for r in range(self.restarts):
            todo = margin > 0
            if r > 0:
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                xa, m = self._once(model, x[idx], y[idx], rand.subset(idx), r)
                better = m < margin[idx]
                best[idx] = torch.where(_rows(better, xa), xa, best[idx])
                margin[idx] = torch.where(better, m, margin[idx])
                continue
            xa, m = self._once(model, x, y, rand, r)
            better = m < margin
            best = torch.where(_rows(better, x), xa, best)
            margin = torch.where(better, m, margin)
        logits = forward(model, best, self.amp)
        return AttackResult(best, misclassified(logits, y), cw_margin(logits, y))

    def _once(self, model, x, y, rand, restart) -> tuple[torch.Tensor, torch.Tensor]:
        eps = self.threat.size
        _, c, h, w = x.shape
        base = restart * (self.steps + 1) * 4
        stripes = torch.sign(rand.uniform(base, (c, 1, w), x.dtype) - 0.5)
        stripes = torch.where(stripes == 0, torch.ones_like(stripes), stripes)
        cur = (x + eps * stripes).clamp(0.0, 1.0)
        margin = -cw_margin(forward(model, cur, self.amp), y)
        ar_h = torch.arange(h, device=x.device).reshape(1, h, 1)
        ar_w = torch.arange(w, device=x.device).reshape(1, 1, w)
        for i in range(self.steps):
            if not bool((margin > 0).any()):
                break
            p = square_p(self.p_init, i, self.steps)
            s = max(min(round(math.sqrt(p * h * w)), min(h, w) - 1), 1)
            ctr = base + 4 * (i + 1)
            r0 = rand.randint(ctr, 0, h - s).reshape(-1, 1, 1)
            c0 = rand.randint(ctr + 1, 0, w - s).reshape(-1, 1, 1)
            window = (ar_h >= r0) & (ar_h < r0 + s) & (ar_w >= c0) & (ar_w < c0 + s)
            signs = torch.sign(rand.uniform(ctr + 2, (c, 1, 1), x.dtype) - 0.5)
            signs = torch.where(signs == 0, torch.ones_like(signs), signs)
            cand = torch.where(window[:, None], (x + eps * signs).clamp(0.0, 1.0), cur)
            m = -cw_margin(forward(model, cand, self.amp), y)
            accept = (m < margin) & (margin > 0)
            cur = torch.where(_rows(accept, x), cand, cur)
            margin = torch.where(accept, m, margin)
        return cur, margin


__all__ = ["GaussianNoise", "Pointwise", "SaltPepper", "Square"]
