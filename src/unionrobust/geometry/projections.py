"""Euclidean projections onto ℓp balls, ℓ∞/ℓ0 balls ∩ the pixel box, and the probability simplex
(the exact ℓ2 ∩ box and ℓ1 ∩ box solvers live in :mod:`unionrobust.geometry.ball_box`).

All functions take a batch ``delta`` of shape ``(B, ...)`` and treat each row (example)
separately; ``eps`` is a float or a tensor of shape ``(B,)``. The box for a perturbation of the
clean input ``x`` ∈ [0,1] is ``-x <= delta <= 1 - x``. No Python loop runs over examples.
"""

from __future__ import annotations

import torch

from unionrobust.geometry.batch import Eps
from unionrobust.geometry.batch import col as _col
from unionrobust.geometry.batch import flat as _flat
from unionrobust.geometry.batch import rows as _rows
from unionrobust.geometry.batch import work_dtype as _work_dtype


def project_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clip ``delta`` so that ``x + delta`` lies in [0, 1]."""
    return torch.minimum(torch.maximum(delta, -x), 1 - x)


def project_linf(delta: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Projection onto the ℓ∞ ball (MSD App. A, eq. 16): clip to [-ε, ε]."""
    e = _rows(_col(eps, _flat(delta)), delta)
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
    surface; the algorithm's ρ is only defined for rows outside the ball). The threshold η and
    |δ| − η are computed in float64, so small ε keep their relative accuracy in float32.
    """
    flat = _flat(delta)
    w = _work_dtype(flat)
    e = _col(eps, flat).to(w)
    a = flat.to(w).abs()
    inside = a.sum(dim=1, keepdim=True) <= e
    gamma, _ = torch.sort(a, dim=1, descending=True)
    css = gamma.cumsum(dim=1)
    j = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=w)
    cond = gamma - (css - e) / j > 0
    rho = (cond * j).amax(dim=1, keepdim=True).clamp_min(1)  # last index where cond holds
    eta = ((css.gather(1, rho.long() - 1) - e) / rho).clamp_min(0)
    mag = (a - eta).clamp_min(0)
    # rounding guard for the float64 -> dtype cast: rescale rows that land outside
    out = (torch.sign(flat) * mag.to(flat.dtype)).to(flat.dtype)
    s = out.to(w).abs().sum(dim=1, keepdim=True)
    scale = torch.where(s > e, e / s.clamp_min(torch.finfo(w).tiny), 1.0).to(flat.dtype)
    out = torch.where(inside, flat, out * scale)
    return out.reshape(delta.shape)


def project_linf_box(delta: torch.Tensor, x: torch.Tensor, eps: Eps) -> torch.Tensor:
    """Exact projection onto ℓ∞ ball ∩ box: both are boxes, so clip to both."""
    return project_box(project_linf(delta, eps), x)


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
    Wang et al. eq. 14 with μ found exactly from the sorted values instead of by bisection).

    μ is computed in float64 so ties, huge offsets and K = 1 behave (K = 1 gives [1.0]).
    """
    w = _work_dtype(v)
    v64 = v.to(w)
    k = v.shape[1]
    u, _ = torch.sort(v64, dim=1, descending=True)
    css = u.cumsum(dim=1) - 1
    j = torch.arange(1, k + 1, device=v.device, dtype=w)
    cond = u - css / j > 0
    rho = (cond * j).amax(dim=1, keepdim=True).clamp_min(1)  # j = 1 always satisfies cond
    theta = css.gather(1, rho.long() - 1) / rho
    return (v64 - theta).clamp_min(0).to(v.dtype)
