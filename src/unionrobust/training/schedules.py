"""Learning-rate schedules as pure functions of training progress, stepped per iteration.

A schedule maps ``t`` = fractional epoch (``epoch + i / steps_per_epoch``) to a learning rate, so
the rate of any iteration is known without replaying the run (exact resume, DDP agreement).

* ``piecewise``: linear interpolation through ``points = [[epoch, lr], ...]``. MSD App. C.2 uses
  0 -> 1e-3 over 6 epochs then -> 0 over 9 on MNIST, and 0 -> 0.1 over 20 epochs, -> 0.005 over
  20, -> 0 over 10 on CIFAR-10 (a variant of Smith's super-convergence schedule).
* ``step``: ``lr * gamma ** (number of milestones <= t)`` (Croce & Hein App. A: 0.05, /10 after 70).
* ``cyclic``: one triangle 0 -> lr at ``peak * epochs`` -> 0 at the end (the cyclic schedule of
  Croce & Hein App. A for WideResNet-28-10).
* ``constant``: ``lr`` throughout (Wang et al. App. C.1, Adam 1e-3).
* ``finetune``: ``lr / 10 ** floor(t)``, divided by 10 at the beginning of each epoch
  (Croce & Hein §3.4 and App. A).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence

from unionrobust.errors import UnionRobustError, unknown_name

Schedule = Callable[[float], float]


def piecewise(points: Sequence[Sequence[float]]) -> Schedule:
    """Linear interpolation through ``(epoch, lr)`` knots; constant outside them."""
    try:
        knots = [(float(e), float(v)) for e, v in points]
    except (TypeError, ValueError):
        raise UnionRobustError(
            f"schedule points must be [[epoch, lr], ...] pairs, got {points!r}"
        ) from None
    if not knots:
        raise UnionRobustError("schedule points must not be empty")
    xs = [e for e, _ in knots]
    if any(b < a for a, b in itertools.pairwise(xs)):
        raise UnionRobustError(f"schedule points must have non-decreasing epochs, got {xs}")
    if any(v < 0 for _, v in knots):
        raise UnionRobustError("schedule learning rates must be >= 0")

    def lr(t: float) -> float:
        if t <= xs[0]:
            return knots[0][1]
        if t >= xs[-1]:
            return knots[-1][1]
        j = bisect.bisect_right(xs, t)
        (e0, v0), (e1, v1) = knots[j - 1], knots[j]
        if e1 == e0:
            return v1
        return v0 + (v1 - v0) * (t - e0) / (e1 - e0)

    return lr


def step(base: float, milestones: Sequence[float], gamma: float = 0.1) -> Schedule:
    """``base * gamma ** k`` where k milestones (in epochs) have been passed."""
    ms = sorted(float(m) for m in milestones)
    return lambda t: base * gamma ** bisect.bisect_right(ms, t)


def cyclic(base: float, epochs: float, peak: float = 0.4) -> Schedule:
    """One triangle: 0 at t=0, ``base`` at ``peak * epochs``, 0 at ``epochs``."""
    if not 0.0 < peak < 1.0:
        raise UnionRobustError(f"cyclic schedule peak must be in (0, 1), got {peak}")
    return piecewise([[0.0, 0.0], [peak * epochs, base], [epochs, 0.0]])


def constant(base: float) -> Schedule:
    return lambda t: base


def finetune(base: float, factor: float = 10.0) -> Schedule:
    """``base / factor ** floor(t)``: divided by ``factor`` at the start of every epoch."""
    return lambda t: base / factor ** math.floor(t + 1e-9)


SCHEDULES = ("constant", "cyclic", "finetune", "piecewise", "step")


def make_schedule(
    name: str,
    *,
    lr: float,
    epochs: float,
    points: Sequence[Sequence[float]] | None = None,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    peak: float = 0.4,
    factor: float = 10.0,
) -> Schedule:
    """Build schedule ``name``; ``lr`` is the base (or peak) rate, ``epochs`` the run length.

    ``piecewise`` without ``points`` is MSD's shape scaled to the run: 0 -> lr over the first 40 %
    of the epochs, then -> 0 (6 + 9 epochs on MNIST).
    """
    if name == "piecewise":
        if points is None:
            points = [[0.0, 0.0], [0.4 * epochs, lr], [epochs, 0.0]]
        return piecewise(points)
    if name == "step":
        return step(lr, milestones, gamma)
    if name == "cyclic":
        return cyclic(lr, epochs, peak)
    if name == "constant":
        return constant(lr)
    if name == "finetune":
        return finetune(lr, factor)
    raise unknown_name("schedule", name, SCHEDULES)
