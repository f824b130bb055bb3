"""Steepest-ascent directions for ℓp threat models (MSD App. A; Tramèr & Boneh Alg. 1).

Each function maps a gradient batch ``grad`` (B, ...) to a direction of unit (or ≤ 1) dual norm;
the caller multiplies by the step size. A zero gradient gives a zero direction, never NaN.
``movable`` is an optional bool mask of coordinates allowed to move (MSD App. A.2: coordinates
pinned at the pixel box in the gradient's direction are skipped).
"""

from __future__ import annotations

import torch


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def box_movable(grad: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Coordinates where a step along sign(grad) can still move inside [0, 1] (MSD App. A.2)."""
    return ~(((x_adv >= 1) & (grad > 0)) | ((x_adv <= 0) & (grad < 0)))


def linf_direction(grad: torch.Tensor) -> torch.Tensor:
    """sign(g) (MSD eq. 15)."""
    return torch.sign(grad)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖2 (MSD eq. 17); zero rows stay zero."""
    flat = _flat(grad)
    norm = flat.norm(dim=1, keepdim=True)
    return (flat / norm.clamp_min(1e-12) * (norm > 0)).reshape(grad.shape)


def l1_topk_direction(
    grad: torch.Tensor, k: int | torch.Tensor, movable: torch.Tensor | None = None
) -> torch.Tensor:
    """sign(g) on the k largest |g_i| (per row), each scaled 1/k (MSD App. A.1; k = 1 is eq. 19).

    ``k`` is an int or a (B,) tensor of per-example sparsities. Unmovable coordinates are never
    chosen; rows with fewer than k movable nonzero coordinates spread the step over those.
    """
    flat = _flat(grad)
    score = flat.abs()
    if movable is not None:
        score = score * _flat(movable)
    d = flat.shape[1]
    k_t = torch.as_tensor(k, device=flat.device).reshape(-1, 1).expand(flat.shape[0], 1)
    k_t = k_t.clamp(1, d)
    kmax = int(k_t.max()) if k_t.numel() else 1
    top = score.topk(kmax, dim=1)
    rank = torch.arange(kmax, device=flat.device).reshape(1, -1)
    keep = (rank < k_t) & (top.values > 0)
    count = keep.sum(dim=1, keepdim=True).clamp_min(1)
    vals = torch.sign(flat.gather(1, top.indices)) * keep / count
    out = torch.zeros_like(flat).scatter(1, top.indices, vals.to(flat.dtype))
    return out.reshape(grad.shape)


def slide_direction(
    grad: torch.Tensor, q: float, movable: torch.Tensor | None = None
) -> torch.Tensor:
    """SLIDE step (Tramèr & Boneh Alg. 1): sign(g_i) where |g_i| ≥ the q-th percentile of |g|,
    normalised to unit ℓ1 norm; unmovable coordinates are ignored."""
    flat = _flat(grad)
    score = flat.abs()
    if movable is not None:
        score = score * _flat(movable)
    thresh = torch.quantile(score, q, dim=1, keepdim=True)
    e = torch.sign(flat) * ((score >= thresh) & (score > 0))
    norm = e.abs().sum(dim=1, keepdim=True).clamp_min(1)
    return (e / norm).reshape(grad.shape)
