"""Steepest-ascent directions for ℓp threat models (MSD App. A; Tramèr & Boneh Alg. 1).

Each function maps a gradient batch ``grad`` (B, ...) to a direction of unit (or ≤ 1) dual norm;
the caller multiplies by the step size. A zero gradient gives a zero direction, never NaN.
``movable`` is an optional bool mask of coordinates allowed to move (MSD App. A.2: coordinates
pinned at the pixel box in the gradient's direction are skipped).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unionrobust.geometry.batch import flat as _flat


def box_movable(
    grad: torch.Tensor, x_adv: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Coordinates where a step along sign(grad) can still move inside [0, 1] (MSD App. A.2).

    Pinned means x ≥ 1 with g > 0 or x ≤ 0 with g < 0, i.e. s·x ≥ (s + 1)/2 for s = sign(g)
    (s = 0 never pins); every term is exact, and NaNs count as movable (as before). One comparison
    instead of eight boolean passes. A bool mask, or with ``dtype`` the same mask as 0/1 floats
    (a float comparison and ``1 − pinned`` cost a third of the bool comparison on CPU).
    """
    s = torch.sign(grad)
    if dtype is None:
        return torch.ge(s * x_adv, (s + 1) * 0.5).logical_not_()
    pinned = torch.ge(s * x_adv, (s + 1) * 0.5, out=torch.empty_like(grad, dtype=dtype))
    return pinned.neg_().add_(1)


def linf_direction(grad: torch.Tensor) -> torch.Tensor:
    """sign(g) (MSD eq. 15)."""
    return torch.sign(grad)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖2 (MSD eq. 17); zero rows stay zero.

    The row is first divided by its largest |g_i|, so gradients whose squares underflow (or
    overflow) still give a unit-norm direction.
    """
    flat = _flat(grad)
    peak = flat.abs().amax(dim=1, keepdim=True)
    scaled = flat / torch.where(peak > 0, peak, torch.ones_like(peak))
    norm = scaled.norm(dim=1, keepdim=True)
    return (scaled / torch.where(norm > 0, norm, torch.ones_like(norm))).reshape(grad.shape)


def l1_topk_direction(
    grad: torch.Tensor,
    k: int | torch.Tensor,
    movable: torch.Tensor | None = None,
    k_max: int | None = None,
) -> torch.Tensor:
    """sign(g) on the k largest |g_i| (per row), each scaled 1/k (MSD App. A.1; k = 1 is eq. 19).

    ``k`` is an int or a (B,) tensor of per-example sparsities (e.g. drawn from [k1, k2]);
    ``k_max`` ≥ max(k) avoids reading the tensor's maximum back from the device. Unmovable
    coordinates are never chosen; ties at the k-th largest |g_i| go to the lowest indices (so a
    row's choice depends neither on ``k_max`` nor on the other rows); a row with fewer than k
    movable nonzero coordinates spreads its unit ℓ1 mass over those (so the direction always
    has ℓ1 norm 1, or 0 for a zero row).
    """
    flat = _flat(grad)
    score = _movable_score(flat, movable)
    d = flat.shape[1]
    k_t = torch.as_tensor(k, device=flat.device).reshape(-1, 1).expand(flat.shape[0], 1)
    k_t = k_t.clamp(1, d)
    bound = (int(k_t.max()) if k_t.numel() else 1) if k_max is None else int(k_max)
    kmax = max(1, min(bound, d))
    # the k-th largest |g_i| is well defined; ties at it are broken towards the lowest index, so
    # the choice depends neither on k_max nor on the other rows of the batch
    kth = _top_values(score, kmax).gather(1, k_t.long() - 1)
    if flat.device.type == "cpu":
        # common case: no tie at a positive k-th value overflows the k slots, and then the
        # chosen set is {score ≥ max(kth, smallest positive)}; one host read checks it
        thr = torch.maximum(kth, torch.nextafter(kth.new_zeros(()), kth.new_ones(())))
        chosen = torch.ge(score, thr, out=torch.empty_like(score))
        count = chosen.sum(dim=1, keepdim=True)
        if not bool((count > k_t).any()):
            return (torch.sign(flat) * chosen * (1 / count.clamp_min(1))).reshape(grad.shape)
    above = score > kth
    tie = score == kth
    room = k_t - above.sum(dim=1, keepdim=True)
    chosen = (above | (tie & (tie.cumsum(dim=1) <= room))) & (score > 0)
    count = chosen.sum(dim=1, keepdim=True).clamp_min(1)
    out = torch.sign(flat) * chosen / count
    return out.to(flat.dtype).reshape(grad.shape)


def _movable_score(flat: torch.Tensor, movable: torch.Tensor | None) -> torch.Tensor:
    """|g| with unmovable coordinates set to 0."""
    score = flat.abs()
    if movable is not None:
        score = score * _flat(movable).to(score.dtype)  # a no-op cast for a float mask
    return score


def _numpy_rows(t: torch.Tensor) -> np.ndarray | None:
    """A CPU float32/float64 tensor's rows as a numpy array (no copy), else None: numpy's
    vectorised sort and select are 5-25× faster than ``torch.topk``/``sort`` on CPU rows of a
    few hundred to thousands of values."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return t.detach().numpy()


def _top_values(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest values of each row, sorted descending (== ``score.topk(k).values``).

    On CPU the rows are sorted by numpy (same values, same order). Elsewhere ``topk``; on CPU
    without numpy's dtype ``topk`` switches from a partial sort to a much slower full selection once
    64·k > d (3.4× slower at d = 784 from k = 13 on); d//64 < k ≤ 2·(d//64) (e.g. the ℓ1 top-k
    steps' k ≤ 20 on MNIST) are taken in two chunks, masking the indices of the first (score ≥ 0
    so -1 removes them). The values are the same multiset, in the same order.
    """
    rows = _numpy_rows(score)
    if rows is not None:
        top = np.sort(rows, axis=1)[:, : -k - 1 : -1] if k > 0 else rows[:, :0]
        return torch.from_numpy(top.copy())  # a positive-stride copy, as torch needs
    d = score.shape[1]
    chunk = max(1, d // 64)
    if score.device.type != "cpu" or k <= chunk or k > 2 * chunk or chunk < 4:
        return score.topk(k, dim=1).values
    rest = score.clone()
    parts = []
    left = k
    while left > 0:
        m = min(chunk, left)
        top = rest.topk(m, dim=1)
        parts.append(top.values)
        left -= m
        if left > 0:
            rest.scatter_(1, top.indices, -1.0)
    return torch.cat(parts, dim=1)


def percentile_index(q: float, d: int) -> int:
    """0-based ascending rank of the q-th percentile's upper neighbour among d values.

    With linear interpolation (numpy's and torch.quantile's default) the percentile P_q lies
    between the sorted values at ranks floor(q(d−1)) and ceil(q(d−1)), so for distinct values
    {i : |g_i| ≥ P_q} = the entries of rank ≥ ceil(q(d−1)).
    """
    return min(max(math.ceil(q * (d - 1)), 0), d - 1)


def slide_direction(
    grad: torch.Tensor, q: float, movable: torch.Tensor | None = None
) -> torch.Tensor:
    """SLIDE step (Tramèr & Boneh Alg. 1): e_i = sign(g_i) where |g_i| ≥ P_q(|g|), normalised to
    unit ℓ1 norm.

    Unmovable coordinates are ignored as in the paper's §3: their |g_i| is set to 0 before the
    percentile is taken (as the authors' code does) and they are never selected; zero entries
    are never selected. P_q is taken as the value at rank ceil(q(d−1))
    (:func:`percentile_index`), which selects exactly the entries ≥ the linearly interpolated
    percentile, found with ``topk`` of the few largest values (or ``kthvalue`` for small q)
    instead of a full sort.
    """
    flat = _flat(grad)
    score = _movable_score(flat, movable)
    d = flat.shape[1]
    rank = percentile_index(float(q), d)
    rows = _numpy_rows(score)
    if rows is not None:  # numpy's select: the (rank+1)-th smallest at position rank
        thresh = torch.from_numpy(np.partition(rows, rank, axis=1)[:, rank : rank + 1])
    elif d - rank <= rank + 1:  # the (rank+1)-th smallest is the (d-rank)-th largest
        thresh = _top_values(score, d - rank)[:, -1:]
    else:
        thresh = score.kthvalue(rank + 1, dim=1, keepdim=True).values
    if flat.is_floating_point():
        # score ≥ thresh and score > 0 ⟺ score ≥ max(thresh, smallest positive): one float mask
        thr = torch.maximum(thresh, torch.nextafter(thresh.new_zeros(()), thresh.new_ones(())))
        chosen = torch.ge(score, thr, out=torch.empty_like(score))
        e = torch.sign(flat) * chosen
        norm = chosen.sum(dim=1, keepdim=True).clamp_min(1)  # |sign| = 1 where chosen
    else:
        e = torch.sign(flat) * ((score >= thresh) & (score > 0))
        norm = e.abs().sum(dim=1, keepdim=True).clamp_min(1)
    return (e / norm).reshape(grad.shape)
