"""Differentiable input transformations, the domains of the min-max attack over transformations
(Wang et al. 2020 §2.2 eq. 7, App. C.3): flips, brightness, gamma, centre crop + resize,
rotation; fixed or random (applied with probability p, random angle / crop fraction).

A transform maps ``(x, rand, counter) -> t(x)`` for a batch in [0, 1]; random ones draw per
example from ``rand`` (keyed by example id and ``counter``), so a fresh draw each attack step is
expectation over transformation (EOT). All are torch ops, differentiable in ``x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from unionrobust.errors import UnionRobustError, check_fraction, unknown_name
from unionrobust.rng import KeyedRandom
from unionrobust.threats.spatial import rotate_translate


def zoom(x: torch.Tensor, frac: torch.Tensor | float) -> torch.Tensor:
    """Crop the central ``frac`` (per example or scalar, in (0, 1]) and resize back (bilinear)."""
    b = x.shape[0]
    f = torch.as_tensor(frac, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    zero = torch.zeros_like(f)
    theta = torch.stack(
        [torch.stack([f, zero, zero], dim=1), torch.stack([zero, f, zero], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class Transform:
    """A named transformation ``t(x, rand, counter)``."""

    name = "transform"
    random = False

    def __call__(self, x: torch.Tensor, rand: KeyedRandom, counter: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class Identity(Transform):
    name = "ori"

    def __call__(self, x, rand, counter):
        return x


class HFlip(Transform):
    name = "flh"

    def __call__(self, x, rand, counter):
        return x.flip(-1)


class VFlip(Transform):
    name = "flv"

    def __call__(self, x, rand, counter):
        return x.flip(-2)


class Brightness(Transform):
    """Add ``delta`` to every pixel, clamped to [0, 1] (tf.image.adjust_brightness, 0.1)."""

    name = "bri"

    def __init__(self, delta: float = 0.1) -> None:
        self.delta = float(delta)

    def __call__(self, x, rand, counter):
        return (x + self.delta).clamp(0.0, 1.0)


class Gamma(Transform):
    """Gamma correction x ↦ x^γ (γ = 1.3 in Wang et al. App. C.3)."""

    name = "gam"

    def __init__(self, gamma: float = 1.3) -> None:
        if not float(gamma) > 0:
            raise UnionRobustError(f"gamma must be > 0, got {gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, x, rand, counter):
        return x.clamp(1e-6, 1.0) ** self.gamma


class CenterCrop(Transform):
    """Crop the central ``frac`` × ``frac`` and resize back (0.8 in Wang et al.)."""

    name = "crop"

    def __init__(self, frac: float = 0.8) -> None:
        self.frac = check_fraction("crop fraction", frac)

    def __call__(self, x, rand, counter):
        return zoom(x, self.frac)


class Rotate(Transform):
    """Rotate by ``degrees`` clockwise (30 in Wang et al. Table A6), black fill."""

    name = "rot"

    def __init__(self, degrees: float = 30.0) -> None:
        self.degrees = float(degrees)

    def __call__(self, x, rand, counter):
        return rotate_translate(x, torch.tensor([self.degrees, 0.0, 0.0]))


class RandomApply(Transform):
    """Apply ``inner`` with probability ``p`` per example and draw."""

    random = True

    def __init__(self, inner: Transform, p: float = 0.8) -> None:
        if not 0 <= float(p) <= 1:
            raise UnionRobustError(f"probability must lie in [0, 1], got {p!r}")
        self.inner, self.p = inner, float(p)
        self.name = inner.name

    def __call__(self, x, rand, counter):
        u = rand.uniform(counter, (1,), x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(u < self.p, self.inner(x, rand, counter), x)


class RandomRotation(Transform):
    """Rotate by an angle drawn uniformly in [-degrees, degrees] (±10° in Wang et al.)."""

    name = "rot"
    random = True

    def __init__(self, degrees: float = 10.0) -> None:
        self.degrees = float(degrees)

    def __call__(self, x, rand, counter):
        u = rand.uniform(counter + (1 << 20), (1,), x.dtype).reshape(-1)
        angle = (2 * u - 1) * self.degrees
        zero = torch.zeros_like(angle)
        return rotate_translate(x, torch.stack([angle, zero, zero], dim=1))


class RandomCrop(Transform):
    """Central crop of a fraction drawn uniformly in [low, high], resized back (0.6-1.0)."""

    name = "crop"
    random = True

    def __init__(self, low: float = 0.6, high: float = 1.0) -> None:
        if not 0 < float(low) <= float(high) <= 1:
            raise UnionRobustError(f"crop range must satisfy 0 < low <= high <= 1, got {low, high}")
        self.low, self.high = float(low), float(high)

    def __call__(self, x, rand, counter):
        u = rand.uniform(counter + (2 << 20), (1,), x.dtype).reshape(-1)
        return zoom(x, self.low + (self.high - self.low) * u)


FIXED = {
    "ori": Identity,
    "flh": HFlip,
    "flv": VFlip,
    "bri": Brightness,
    "gam": Gamma,
    "crop": CenterCrop,
    "rot": Rotate,
}


def make_transforms(
    names: str | Sequence[str] = "ori, flh, flv, bri, gam, crop",
    random: bool = False,
    p: float = 0.8,
) -> list[Transform]:
    """Transforms by name (``ori, flh, flv, bri, gam, crop, rot``). ``random=True``: the random
    versions of Wang et al. Table A5 — rotation uniform in ±10°, crop fraction uniform in
    [0.6, 1], the others applied with probability ``p``; ``ori`` stays the identity."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    out: list[Transform] = []
    for n in names:
        if n not in FIXED:
            raise unknown_name("transformation", n, FIXED)
        if not random or n == "ori":
            out.append(FIXED[n]())
        elif n == "rot":
            out.append(RandomRotation())
        elif n == "crop":
            out.append(RandomCrop())
        else:
            out.append(RandomApply(FIXED[n](), p))
    if not out:
        raise UnionRobustError("need at least one transformation")
    return out
