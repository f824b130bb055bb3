"""ℓ∞, ℓ2, ℓ1 and ℓ0 threat models with the [0,1] pixel box (MSD App. A)."""

from __future__ import annotations

import torch

from unionrobust.errors import UnionRobustError, check_positive, unknown_name
from unionrobust.geometry import (
    box_movable,
    l1_topk_direction,
    l2_direction,
    linf_direction,
    project_l0_box,
    project_l1_box,
    project_l2_box,
    project_linf_box,
    slide_direction,
)
from unionrobust.threats.base import ThreatModel


def _per_example(alpha: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    if isinstance(alpha, torch.Tensor) and alpha.dim() == 1:
        return alpha.reshape(-1, *([1] * (ref.dim() - 1)))
    return alpha


class _Lp(ThreatModel):
    def __init__(self, eps: float) -> None:
        self.eps = check_positive(f"{self.name}: radius", eps)

    @property
    def size(self) -> float:
        return self.eps

    def with_size(self, size: float) -> ThreatModel:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.eps = check_positive(f"{self.name}: radius", size)
        return clone

    def default_alpha(self, steps: int) -> float:
        return 2.5 * self.eps / max(int(steps), 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.eps:g})"


class Linf(_Lp):
    """ℓ∞ ball of radius ε: sign steps (eq. 15), clipping projection (eq. 16)."""

    name = "linf"

    def project(self, delta, x):
        return project_linf_box(delta, x, self.eps)

    def step(self, grad, alpha, delta, x, rand=None, counter=0):
        return _per_example(alpha, grad) * linf_direction(grad)

    def random_init(self, x, rand, counter=0):
        u = rand.uniform(counter, tuple(x.shape[1:]), x.dtype)
        return self.project((2 * u - 1) * self.eps, x)

    def norm(self, delta):
        return delta.flatten(1).abs().amax(dim=1)


class L2(_Lp):
    """ℓ2 ball of radius ε: normalised-gradient steps (eq. 17), exact ball ∩ box projection."""

    name = "l2"

    def project(self, delta, x):
        return project_l2_box(delta, x, self.eps)

    def step(self, grad, alpha, delta, x, rand=None, counter=0):
        return _per_example(alpha, grad) * l2_direction(grad)

    def random_init(self, x, rand, counter=0):
        shape = tuple(x.shape[1:])
        g = l2_direction(rand.normal(counter, shape, x.dtype))
        # normal and uniform draws come from separate streams, so one counter keys both
        r = rand.uniform(counter, (1,), x.dtype).reshape(-1, *([1] * len(shape)))
        return self.project(g * r * self.eps, x)

    def norm(self, delta):
        return delta.flatten(1).norm(p=2, dim=1)


L1_STEP_RULES = ("random_k", "topk", "single", "slide")


class L1(_Lp):
    """ℓ1 ball of radius ε with exact ball ∩ box projection.

    Step rules (all skip coordinates pinned at the box, MSD App. A.2):
    ``random_k`` (default): sign of the k largest gradient entries, k drawn per example and step
    from ``k_range`` = [k1, k2], each moved α/k (MSD App. A.1); ``topk``: fixed ``k``;
    ``single``: one coordinate (MSD eq. 19); ``slide``: every entry above the ``q`` quantile of
    |g|, normalised to unit ℓ1 norm (Tramèr & Boneh Alg. 1).
    """

    name = "l1"

    def __init__(
        self,
        eps: float,
        step_rule: str = "random_k",
        k_range: tuple[int, int] = (5, 20),
        k: int = 10,
        q: float = 0.99,
    ) -> None:
        super().__init__(eps)
        if step_rule not in L1_STEP_RULES:
            raise unknown_name("l1 step rule", step_rule, L1_STEP_RULES)
        k1, k2 = int(k_range[0]), int(k_range[1])
        if not 1 <= k1 <= k2:
            raise UnionRobustError(f"l1: k_range must satisfy 1 <= k1 <= k2, got {k_range}")
        if int(k) < 1:
            raise UnionRobustError(f"l1: k must be >= 1, got {k}")
        if not 0.0 <= float(q) < 1.0:
            raise UnionRobustError(f"l1: percentile q must lie in [0, 1), got {q}")
        self.step_rule = step_rule
        self.k_range = (k1, k2)
        self.k = int(k)
        self.q = float(q)

    def default_alpha(self, steps: int) -> float:
        # MSD App. C.1 uses α = 0.8 for ε = 10 and 50 steps: α = 4ε/T
        return 4.0 * self.eps / max(int(steps), 1)

    def project(self, delta, x):
        return project_l1_box(delta, x, self.eps)

    def step(self, grad, alpha, delta, x, rand=None, counter=0):
        movable = box_movable(grad, x + delta, grad.dtype)
        if self.step_rule == "slide":
            direction = slide_direction(grad, self.q, movable)
        else:
            k_max = {"single": 1, "topk": self.k}.get(self.step_rule, self.k_range[1])
            if self.step_rule == "random_k":
                if rand is None:
                    raise UnionRobustError("l1 random_k steps need a KeyedRandom")
                k: int | torch.Tensor = rand.randint(counter, *self.k_range)
            else:
                k = k_max
            direction = l1_topk_direction(grad, k, movable, k_max=k_max)
        return _per_example(alpha, grad) * direction

    def random_init(self, x, rand, counter=0):
        # one draw per call: d Laplace(0, 1) coordinates (their ℓ1-normalisation is a uniform
        # direction on the ℓ1 sphere) and one radius; `counter` alone keys it
        d = x[0].numel()
        u = rand.uniform(counter, (d + 1,), torch.float64)
        c = u[:, :d].clamp(1e-12, 1 - 1e-12) - 0.5
        lap = torch.sign(c) * -torch.log1p(-2 * c.abs())
        flat = lap / lap.abs().sum(dim=1, keepdim=True).clamp_min(1e-300)
        r = u[:, d:]
        return self.project((flat * r * self.eps).to(x.dtype).reshape(x.shape), x)

    def norm(self, delta):
        return delta.flatten(1).abs().sum(dim=1)

    def __repr__(self) -> str:
        return f"L1({self.eps:g}, step_rule={self.step_rule!r})"


class L0(_Lp):
    """ℓ0 "ball": at most k changed coordinates (pixels' channels), with the box."""

    name = "l0"

    def __init__(self, k: int) -> None:
        k_f = check_positive("l0: radius", k)
        if k_f != int(k_f):
            raise UnionRobustError(f"l0: k must be a whole number, got {k!r}")
        self.eps = float(int(k_f))

    def with_size(self, size: float) -> ThreatModel:
        return L0(size)

    def default_alpha(self, steps: int) -> float:
        return 1.0

    def project(self, delta, x):
        return project_l0_box(delta, x, int(self.eps))

    def step(self, grad, alpha, delta, x, rand=None, counter=0):
        # sparse PGD (Croce & Hein 2019): an ℓ2-normalised ascent step scaled by sqrt(k)
        scale = float(int(self.eps)) ** 0.5
        return _per_example(alpha, grad) * scale * l2_direction(grad)

    def random_init(self, x, rand, counter=0):
        u = rand.uniform(counter, tuple(x.shape[1:]), x.dtype)
        return self.project(2 * u - 1, x)

    def norm(self, delta):
        return (delta.flatten(1) != 0).sum(dim=1).to(delta.dtype)

    def contains(self, delta, x, tol=0.0):
        xa = (x + delta).flatten(1)
        in_box = (xa >= -1e-6).all(dim=1) & (xa <= 1 + 1e-6).all(dim=1)
        return in_box & (self.norm(delta) <= self.eps)

    def __repr__(self) -> str:
        return f"L0({int(self.eps)})"
