"""Euclidean projections onto ℓp balls, ℓp balls ∩ the pixel box, and the probability simplex.

All functions take a batch ``delta`` of shape ``(B, ...)`` and treat each row (example)
separately; ``eps`` is a float or a tensor of shape ``(B,)``. The box for a perturbation of the
clean input ``x`` ∈ [0,1] is ``-x <= delta <= 1 - x``. No Python loop runs over examples.
"""

from __future__ import annotations

import torch

Eps = float | torch.Tensor


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _col(eps: Eps, ref: torch.Tensor) -> torch.Tensor:
    """``eps`` as a (B, 1) column in ref's dtype/device."""
    e = torch.as_tensor(eps, dtype=ref.dtype, device=ref.device)
    if e.dim() == 0:
        return e.reshape(1, 1).expand(ref.shape[0], 1)
    return e.reshape(-1, 1)


def project_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clip ``delta`` so that ``x + delta`` lies in [0, 1]."""
    return torch.minimum(torch.maximum(delta, -x), 1 - x)


def project_linf(delta: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Projection onto the ℓ∞ ball (MSD App. A, eq. 16): clip to [-ε, ε]."""
    e = _col(eps, _flat(delta)).reshape(-1, *([1] * (delta.dim() - 1)))
    return torch.minimum(torch.maximum(delta, -e), e)


def project_l2(delta: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Projection onto the ℓ2 ball (MSD App. A, eq. 18): ε·δ / max(ε, ‖δ‖2)."""
    flat = _flat(delta)
    e = _col(eps, flat)
    norm = flat.norm(p=2, dim=1, keepdim=True)
    factor = e / torch.maximum(norm, e)
    factor = torch.where(norm <= e, torch.ones_like(factor), factor)
    return (flat * factor).reshape(delta.shape)


def project_l1(delta: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Exact projection onto the ℓ1 ball (MSD App. A, Algorithm 2; Duchi et al. 2008).

    Rows already inside the ball are returned unchanged (the MSD reference code moves them to the
    surface; the algorithm's ρ is only defined for rows outside the ball).
    """
    flat = _flat(delta)
    e = _col(eps, flat)
    a = flat.abs()
    inside = a.sum(dim=1, keepdim=True) <= e
    gamma, _ = torch.sort(a, dim=1, descending=True)
    css = gamma.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = gamma - (css - e) / j > 0
    rho = (cond * j).amax(dim=1, keepdim=True).clamp_min(1)  # last index where cond holds
    eta = (css.gather(1, rho.long() - 1) - e) / rho
    out = torch.sign(flat) * (a - eta).clamp_min(0)
    out = torch.where(inside, flat, out)
    return out.reshape(delta.shape)


def _bisect_increasing(fn, lo: torch.Tensor, hi: torch.Tensor, target: torch.Tensor, iters: int):
    """Find t in [lo, hi] with fn(t) = target for a per-row nondecreasing fn (bisection)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        below = fn(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) / 2


def project_linf_box(delta: torch.Tensor, x: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Exact projection onto ℓ∞ ball ∩ box: both are boxes, so clip to both."""
    return project_box(project_linf(delta, eps), x)


def project_l2_box(delta: torch.Tensor, x: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Exact projection onto ℓ2 ball ∩ [0,1] box (Wang et al. Prop. 1, p = 2).

    KKT: z = clip(t·a, -x, 1-x) with t ∈ (0, 1] the largest value with ‖z‖2 ≤ ε.
    """
    a, lo, hi = _flat(delta), _flat(-x), _flat(1 - x)
    e = _col(eps, a)
    clipped = torch.minimum(torch.maximum(a, lo), hi)
    inside = clipped.norm(dim=1, keepdim=True) <= e

    def norm_at(t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.maximum(a * t, lo), hi).norm(dim=1, keepdim=True)

    zeros = torch.zeros_like(e)
    t = _bisect_increasing(norm_at, zeros, torch.ones_like(e), e, 60)
    out = torch.minimum(torch.maximum(a * t, lo), hi)
    # guard the float tolerance of bisection: rescale into the ball
    n = out.norm(dim=1, keepdim=True)
    out = out * torch.where(n > e, e / n.clamp_min(1e-30), torch.ones_like(n))
    out = torch.where(inside, clipped, out)
    return out.reshape(delta.shape)


def project_l1_box(delta: torch.Tensor, x: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Exact projection onto ℓ1 ball ∩ [0,1] box (Wang et al. Prop. 1, p = 1; Croce & Hein 2021).

    KKT: z_i = sign(a_i)·min(max(|a_i| - λ, 0), u_i), u_i the box room in a_i's direction,
    λ ≥ 0 the smallest value with ‖z‖1 ≤ ε.
    """
    a, lo, hi = _flat(delta), _flat(-x), _flat(1 - x)
    e = _col(eps, a)
    room = torch.where(a >= 0, hi, -lo)
    abs_a = a.abs()
    clipped_abs = torch.minimum(abs_a, room)
    inside = clipped_abs.sum(dim=1, keepdim=True) <= e

    def neg_l1_at(lam: torch.Tensor) -> torch.Tensor:
        return -torch.minimum((abs_a - lam).clamp_min(0), room).sum(dim=1, keepdim=True)

    lam = _bisect_increasing(
        neg_l1_at, torch.zeros_like(e), abs_a.amax(dim=1, keepdim=True), -e, 60
    )
    mag = torch.minimum((abs_a - lam).clamp_min(0), room)
    s = mag.sum(dim=1, keepdim=True)
    mag = mag * torch.where(s > e, e / s.clamp_min(1e-30), torch.ones_like(s))
    out = torch.where(inside, torch.sign(a) * clipped_abs, torch.sign(a) * mag)
    return out.reshape(delta.shape)


def project_l0_box(delta: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact projection onto {‖δ‖0 ≤ k} ∩ box: keep the k coordinates whose clipped value
    reduces the squared distance most (Croce & Hein 2019, sparse PGD)."""
    a, lo, hi = _flat(delta), _flat(-x), _flat(1 - x)
    clipped = torch.minimum(torch.maximum(a, lo), hi)
    gain = a.square() - (a - clipped).square()
    k = min(int(k), a.shape[1])
    idx = gain.topk(k, dim=1).indices
    out = torch.zeros_like(a).scatter(1, idx, clipped.gather(1, idx))
    return out.reshape(delta.shape)


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Projection of each row of ``v`` (B, K) onto the probability simplex (sort-based;
    Wang et al. eq. 14 solved exactly instead of by bisection)."""
    k = v.shape[1]
    u, _ = torch.sort(v, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1
    j = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    cond = u - css / j > 0
    rho = (cond * j).amax(dim=1, keepdim=True)
    theta = css.gather(1, rho.long() - 1) / rho
    return (v - theta).clamp_min(0)
