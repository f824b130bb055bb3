"""Exact projections onto ℓ2 ball ∩ [0,1] box and ℓ1 ball ∩ [0,1] box (Wang et al. Prop. 1).

The KKT conditions reduce each projection to one scalar per row (the ℓ2 scale t, the ℓ1
threshold λ), found exactly by a fast iteration (active set / Newton) with a sort-based solver
taking over the rows it does not settle. On CPU only the rows outside the ball after
box-clipping are solved; elsewhere every row goes through the solver and is masked, without
host synchronisation. Shapes as in :mod:`unionrobust.geometry.projections`.
"""

from __future__ import annotations

import torch

from unionrobust.geometry.batch import Eps
from unionrobust.geometry.batch import col as _col
from unionrobust.geometry.batch import flat as _flat
from unionrobust.geometry.batch import work_dtype as _work_dtype

#: active-set iterations tried before the sort-based ℓ2 ∩ box solver takes over a row
L2_BOX_ACTIVE_SET_ITERS = 6


def l2_box_scale(
    a: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    e: torch.Tensor,
    method: str = "auto",
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """The t ∈ [0, 1] of the ℓ2 ∩ box projection z = clip(t·a, lo, hi) for flat rows (B, d),
    with lo ≤ 0 ≤ hi and ε a (B, 1) column. Returns t as a (B, 1) float64 column.

    ‖clip(t·a, lo, hi)‖² is piecewise quadratic in t: coordinate i follows t·a_i until
    t_i = (hi_i or lo_i)/a_i and stays at its bound c_i afterwards, so
    g(t) = t²·Σ_{t_i > t} a_i² + Σ_{t_i ≤ t} c_i², and t solves g(t) = ε² (t = 1 if g(1) ≤ ε²).
    Two exact solvers:

    - ``"sort"``: sort the t_i, evaluate g at every breakpoint with cumulative sums, locate the
      crossing segment and solve it in closed form;
    - ``"active-set"``: from t₀ = ε/‖a‖ (a lower bound), freeze the set S of clipped coordinates
      at t_k and solve t_{k+1}² = (ε² − Σ_S c²)/Σ_{¬S} a². The frozen model is ≥ g beyond t_k,
      so t_k increases to the root and S only grows; once t repeats, S is consistent with it and
      t is exact. O(d) per iteration, typically ~3-4 iterations; rows not settled after
      ``L2_BOX_ACTIVE_SET_ITERS`` are finished by the sort solver.

    ``"auto"`` uses the active set on CPU (its early exit reads one bool on the host) and the
    sort elsewhere (no host synchronisation on accelerators). Either way each row's result
    depends on that row only. ``inside`` (B, 1), if the caller knows it, marks rows with
    g(1) ≤ ε² (they get t = 1).
    """
    w = _work_dtype(a)
    a64 = a.to(w)
    bound = torch.where(a > 0, hi, lo).to(w)
    tb = torch.where(a != 0, bound / a64, torch.inf)
    e2 = e.to(w).square()
    if inside is None:
        inside = torch.where(tb <= 1, bound, a64).square().sum(dim=1, keepdim=True) <= e2
    if method == "auto":
        method = "active-set" if a.device.type == "cpu" else "sort"
    if method == "sort":
        t = _l2_box_scale_sorted(a64, bound, tb, e2)
        return torch.where(inside, 1.0, t)
    if method != "active-set":
        raise ValueError(f"unknown method {method!r}")
    room = torch.where(a > 0, hi, -lo).to(a.dtype)
    t, done = _l2_box_scale_active(a.abs(), room, e2, inside)
    if not bool(done.all()):
        rows = (~done[:, 0]).nonzero()[:, 0]
        t = t.index_copy(0, rows, _l2_box_scale_sorted(a64[rows], bound[rows], tb[rows], e2[rows]))
    return torch.where(inside, 1.0, t.clamp(0, 1))


def _l2_box_scale_active(
    absa: torch.Tensor, room: torch.Tensor, e2: torch.Tensor, inside: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Active-set iterations of :func:`l2_box_scale` on |a| and the box room u ≥ 0 in a's
    direction. Coordinate i is clipped at t iff t·|a_i| ≥ u_i. Returns (t, done), t a float64
    (B, 1) column, done marking settled rows.

    Elementwise work stays in the input dtype (float32 halves the memory traffic, which is what
    these passes cost) and every sum is accumulated in float64. For float32 input the squares
    a², u² are rounded to float32 (relative 6e-8, like the input itself); comparing with t
    rounded to the input dtype only moves coordinates within an ulp of their breakpoint, where
    g is continuous. Masks are float 0/1 tensors written with ``out=`` and masked sums are
    products (bool masks, ``where`` and small ``bmm`` cost 3-10× more on CPU).
    """
    w = torch.float64
    dt = absa.dtype
    a2 = absa * absa
    c2 = room * room
    total = a2.sum(dim=1, keepdim=True, dtype=w)
    tiny = torch.finfo(w).tiny
    t = (e2 / total.clamp_min(tiny)).sqrt()
    done = inside.clone()
    mask = torch.empty_like(absa)
    for _ in range(L2_BOX_ACTIVE_SET_ITERS):
        torch.ge(absa * t.to(dt), room, out=mask)  # S: clipped at t
        sum_c = (mask * c2).sum(dim=1, keepdim=True, dtype=w)
        # Σ over the free coordinates summed directly: total − Σ_S a² cancels when the clipped
        # coordinates dwarf the free ones (|a| spanning many orders of magnitude)
        free = ((1.0 - mask) * a2).sum(dim=1, keepdim=True, dtype=w)
        t_new = torch.maximum(t, ((e2 - sum_c).clamp_min(0) / free.clamp_min(tiny)).sqrt())
        done = done | (t_new == t)
        t = t_new
        if bool(done.all()):  # a host read: free on CPU, where "auto" runs this solver
            break
    return t, done


def _l2_box_scale_sorted(
    a64: torch.Tensor, bound: torch.Tensor, tb: torch.Tensor, e2: torch.Tensor
) -> torch.Tensor:
    """Sort-based solver of :func:`l2_box_scale` (float64 inputs)."""
    w = a64.dtype
    tb, order = torch.sort(tb, dim=1)
    a2 = a64.square().gather(1, order)
    c2 = bound.square().gather(1, order)
    zero = a2.new_zeros(a2.shape[0], 1)
    # after passing j breakpoints (j = 0..d): A_j = Σ_{m≥j} a², C_j = Σ_{m<j} c²
    csum_c = torch.cat([zero, c2.cumsum(dim=1)], dim=1)
    # Σ_{m≥j} a² as a suffix sum (a difference of prefix sums cancels for wide-ranging |a|)
    rem_a = torch.cat([a2.flip(1).cumsum(dim=1).flip(1), zero], dim=1)
    # g at breakpoint j on the segment that ends there (NaN for t_j = inf: never counted)
    g_at = tb.square() * rem_a[:, :-1] + csum_c[:, :-1]
    j = (g_at <= e2).sum(dim=1, keepdim=True)
    a_seg = rem_a.gather(1, j)
    c_seg = csum_c.gather(1, j)
    t = ((e2 - c_seg).clamp_min(0) / a_seg.clamp_min(torch.finfo(w).tiny)).sqrt()
    # no free coordinate left: g is constant (≤ ε²) from here on, so the box-clip is feasible
    return torch.where(a_seg > 0, t.clamp(0, 1), 1.0)


def project_l2_box(
    delta: torch.Tensor, x: torch.Tensor, eps: Eps, method: str = "auto"
) -> torch.Tensor:
    """Exact projection onto ℓ2 ball ∩ [0,1] box (Wang et al. Prop. 1, p = 2).

    KKT: z = clip(t·a, -x, 1-x) with t = 1/(λ2+1) ∈ (0, 1] the largest value with ‖z‖2 ≤ ε;
    t is found exactly (active set or sorted breakpoints, :func:`l2_box_scale`; ``method`` as
    there), not by bisection.
    Rows whose box-clip is inside the ball get that clip (so rows already inside ball ∩ box are
    returned bit-exact). On CPU only the rows outside are solved (one host read); elsewhere all
    rows go through the solver and are masked, without host synchronisation.
    """
    if delta.device.type == "cpu":
        return _ball_box_rows(_l2_box_solve, delta, x, eps, 2, method)
    return _project_l2_box_masked(delta, x, eps, method)


def _ball_box_rows(solve, delta: torch.Tensor, x: torch.Tensor, eps: Eps, p: int, method: str):
    """CPU driver of the ℓp ∩ box projections (p = 1, 2): clip to the box, keep the rows whose
    clip is inside the ball (bit-exact), and ``solve`` only the others."""
    a = _flat(delta)
    xf = _flat(x).expand_as(a)
    e = _col(eps, a)
    ew = e.to(torch.float64)
    clipped = torch.minimum(torch.maximum(a, -xf), 1 - xf)
    if p == 2:
        inside = (clipped * clipped).sum(dim=1, dtype=torch.float64) <= ew[:, 0].square()
    else:
        inside = clipped.abs().sum(dim=1, dtype=torch.float64) <= ew[:, 0]
    rows = (~inside).nonzero()[:, 0]
    n_out = rows.numel()
    if n_out == 0:
        return clipped.reshape(delta.shape)
    if n_out == a.shape[0]:
        return solve(a, xf, ew, method).reshape(delta.shape)
    z = solve(a[rows], xf[rows], ew[rows], method)
    return clipped.index_copy(0, rows, z).reshape(delta.shape)


def _l2_box_solve(a: torch.Tensor, xf: torch.Tensor, ew: torch.Tensor, method: str):
    """ℓ2 ∩ box projection of flat rows (B, d) that are all outside the ball after box-clipping;
    ``ew`` is ε as a float64 (B, 1) column."""
    w = torch.float64
    lo, hi = -xf, 1 - xf
    e2 = ew.square()
    if method == "auto":
        method = "active-set"
    if method == "sort":
        t = l2_box_scale(a, lo, hi, ew, method="sort", inside=torch.zeros_like(ew, dtype=bool))
    elif method == "active-set":
        pos = torch.gt(a, 0, out=torch.empty_like(a))
        room = xf + pos * (1 - 2 * xf)  # box room in a's direction: 1 - x if a > 0, else x
        t, done = _l2_box_scale_active(a.abs(), room, e2, torch.zeros_like(ew, dtype=bool))
        if not bool(done.all()):
            r = (~done[:, 0]).nonzero()[:, 0]
            a64, b64 = a[r].to(w), torch.where(a[r] > 0, hi[r], lo[r]).to(w)
            tb = torch.where(a64 != 0, b64 / a64, torch.inf)
            t = t.index_copy(0, r, _l2_box_scale_sorted(a64, b64, tb, e2[r]))
    else:
        raise ValueError(f"unknown method {method!r}")
    out = torch.minimum(torch.maximum(a * t.clamp(0, 1).to(a.dtype), lo), hi)
    # rounding guard: a rescale by s < 1 stays inside the box (it contains 0)
    n = (out * out).sum(dim=1, keepdim=True, dtype=w).sqrt()
    scale = torch.where(n <= ew, 1.0, ew / n.clamp_min(torch.finfo(w).tiny))
    return out * scale.to(a.dtype)


def _project_l2_box_masked(
    delta: torch.Tensor, x: torch.Tensor, eps: Eps, method: str = "auto"
) -> torch.Tensor:
    """Sync-free :func:`project_l2_box`: every row goes through the solver, then masked."""
    a = _flat(delta)
    lo = _flat(-x).expand_as(a)
    hi = _flat(1 - x).expand_as(a)
    e = _col(eps, a)
    w = _work_dtype(a)
    ew = e.to(w)
    clipped = torch.minimum(torch.maximum(a, lo), hi)
    inside = (clipped * clipped).sum(dim=1, keepdim=True, dtype=w) <= ew.square()
    t = l2_box_scale(a, lo, hi, e, method=method, inside=inside).to(a.dtype)
    out = torch.minimum(torch.maximum(a * t, lo), hi)
    # rounding guard: a rescale by s < 1 stays inside the box (it contains 0)
    n = (out * out).sum(dim=1, keepdim=True, dtype=w).sqrt()
    scale = torch.where(inside | (n <= ew), 1.0, ew / n.clamp_min(torch.finfo(w).tiny))
    out = torch.where(inside, clipped, out * scale.to(a.dtype))
    return out.reshape(delta.shape)


#: Newton iterations tried before the sort-based ℓ1 ∩ box solver takes over a row
L1_BOX_NEWTON_ITERS = 10


def l1_box_threshold(
    abs_a: torch.Tensor,
    room: torch.Tensor,
    e: torch.Tensor,
    method: str = "auto",
    inside: torch.Tensor | None = None,
) -> torch.Tensor:
    """The λ ≥ 0 of the ℓ1 ∩ box projection for flat rows: Σ min((|a_i| − λ)+, u_i) = ε.
    Returns λ as a (B, 1) float64 column; rows with f(0) ≤ ε (or marked ``inside``) get 0.

    f(λ) = Σ min((|a_i| − λ)+, u_i) is piecewise linear and nonincreasing, with breakpoints at
    λ = |a_i| (coordinate i starts moving: slope −1 more) and λ = (|a_i| − u_i)+ (it leaves its
    box bound: slope +1). Two exact solvers:

    - ``"sort"``: all 2d breakpoints b sorted in decreasing order with running sums N = Σ ±1,
      C = Σ ±b give f(λ) = C − N·λ on each segment (the sorted-breakpoint solver of Croce &
      Hein 2021, "Mind the box"); the crossing segment is located and λ solved there;
    - ``"newton"``: from λ = 0, take the sets L (moving) and U (at the box bound) just right of
      λ and solve their linear piece: λ ← (Σ_L |a_i| + Σ_U u_i − ε)/|L|. A repeated λ is a
      fixed point whose sets are consistent, hence exact. f is not convex, so this is not
      guaranteed to settle: rows still moving after ``L1_BOX_NEWTON_ITERS`` iterations are
      finished by the sort solver (typically all settle in 4-8).

    ``"auto"`` uses Newton on CPU (its early exit reads one bool on the host) and the sort
    elsewhere. Either way each row's result depends on that row only.
    """
    w = _work_dtype(abs_a)
    aa = abs_a.to(w)
    uu = room.to(w)
    ew = e.to(w)
    if inside is None:
        inside = torch.minimum(aa, uu).sum(dim=1, keepdim=True) <= ew
    if method == "auto":
        method = "newton" if abs_a.device.type == "cpu" else "sort"
    if method == "sort":
        return torch.where(inside, 0.0, _l1_box_threshold_sorted(aa, uu, ew))
    if method != "newton":
        raise ValueError(f"unknown method {method!r}")
    lam, done = _l1_box_threshold_newton(abs_a, room.to(abs_a.dtype), ew, inside)
    if not bool(done.all()):
        rows = (~done[:, 0]).nonzero()[:, 0]
        lam = lam.index_copy(0, rows, _l1_box_threshold_sorted(aa[rows], uu[rows], ew[rows]))
    return torch.where(inside, 0.0, lam)


def _l1_box_threshold_newton(
    aa: torch.Tensor, uu: torch.Tensor, ew: torch.Tensor, inside: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton iterations of :func:`l1_box_threshold` on |a| and the room u (input dtype, sums
    accumulated in float64: the masked products are exact, so λ is). Returns (λ, done), λ a
    float64 (B, 1) column.

    Just right of λ, L = {|a_i| > λ, |a_i| − u_i ≤ λ} moves and U = {|a_i| − u_i > λ} sits at
    its bound (U ⊂ {|a_i| > λ}, so L = M − U as 0/1 floats). Comparing with λ rounded to the
    input dtype only moves coordinates within an ulp of a breakpoint, where f is continuous.
    Masks are float tensors written with ``out=`` and masked sums are products (bool masks,
    ``where`` and small ``bmm`` cost 3-10× more on CPU).
    """
    w = torch.float64
    dt = aa.dtype
    q = aa - uu  # ≤ |a| in any rounding, so U ⊂ M below
    lam = torch.zeros_like(ew)
    done = inside.clone()
    moving = torch.empty_like(aa)
    at_bound = torch.empty_like(aa)
    for _ in range(L1_BOX_NEWTON_ITERS):
        lam_d = lam.to(dt)
        torch.gt(aa, lam_d, out=moving)
        torch.gt(q, lam_d, out=at_bound)
        moving.sub_(at_bound)  # L
        n_l = moving.sum(dim=1, keepdim=True).to(w)  # a count: exact in float32 below 2^24
        # L and U are disjoint, so each term of L·|a| + U·u is one exact value
        s_lu = torch.addcmul(moving * aa, at_bound, uu).sum(dim=1, keepdim=True, dtype=w)
        new = ((s_lu - ew) / n_l.clamp_min(1)).clamp_min(0)
        new = torch.where(n_l > 0, new, lam)  # no moving coordinate: leave it to the sort
        done = done | ((new == lam) & (n_l > 0))
        lam = new
        if bool(done.all()):  # a host read: free on CPU, where "auto" runs this solver
            break
    return lam, done


def _l1_box_threshold_sorted(aa: torch.Tensor, uu: torch.Tensor, ew: torch.Tensor) -> torch.Tensor:
    """Sort-based solver of :func:`l1_box_threshold` (float64 inputs)."""
    d = aa.shape[1]
    bp = torch.cat([aa, (aa - uu).clamp_min(0)], dim=1)
    bp, order = torch.sort(bp, dim=1, descending=True)
    sign = torch.where(order < d, 1.0, -1.0).to(aa.dtype)
    n_run = sign.cumsum(dim=1)
    c_run = (sign * bp).cumsum(dim=1)
    f_at = c_run - n_run * bp  # f at each breakpoint (the last one is f(0))
    j = (f_at < ew).sum(dim=1, keepdim=True)  # f(b_j) ≥ ε first at sorted index j
    last = 2 * d - 1
    jm = (j - 1).clamp(0, last)
    lam = (c_run.gather(1, jm) - ew) / n_run.gather(1, jm).clamp_min(1)
    # keep λ inside its segment [b_j, b_{j-1}] against round-off
    seg_lo = torch.where(j > last, 0.0, bp.gather(1, j.clamp(max=last)))
    lam = torch.minimum(torch.maximum(lam, seg_lo), bp.gather(1, jm))
    return torch.where(j > last, 0.0, lam).clamp_min(0)


def project_l1_box(
    delta: torch.Tensor, x: torch.Tensor, eps: Eps, method: str = "auto"
) -> torch.Tensor:
    """Exact projection onto ℓ1 ball ∩ [0,1] box (Wang et al. Prop. 1, p = 1; Croce & Hein 2021).

    KKT: z_i = sign(a_i)·min(max(|a_i| - λ, 0), u_i), u_i the box room in a_i's direction,
    λ ≥ 0 the smallest value with ‖z‖1 ≤ ε, found exactly (Newton on the piecewise-linear
    equation or sorted breakpoints, :func:`l1_box_threshold`; ``method`` as there); |a_i| − λ
    keeps float64 accuracy (float64, or λ split into two float32 terms, the first subtraction
    exact by Sterbenz' lemma near λ) so small ε keep their relative accuracy. Rows whose box-clip
    is inside the ball get that clip (λ = 0), so rows already inside ball ∩ box are returned
    bit-exact. On CPU only the rows outside are solved (one host read); elsewhere all rows go
    through the solver and are masked, without host synchronisation.
    """
    if delta.device.type == "cpu":
        return _ball_box_rows(_l1_box_solve, delta, x, eps, 1, method)
    return _project_l1_box_masked(delta, x, eps, method)


def _l1_box_solve(a: torch.Tensor, xf: torch.Tensor, ew: torch.Tensor, method: str):
    """ℓ1 ∩ box projection of flat rows (B, d) that are all outside the ball after box-clipping;
    ``ew`` is ε as a float64 (B, 1) column."""
    w = torch.float64
    dt = a.dtype
    pos = torch.ge(a, 0, out=torch.empty_like(a))
    room = xf + pos * (1 - 2 * xf)  # box room in a's direction: 1 - x if a ≥ 0, else x
    abs_a = a.abs()
    outside = torch.zeros_like(ew, dtype=bool)
    if method == "auto":
        method = "newton"
    if method == "sort":
        lam = l1_box_threshold(abs_a, room, ew, method="sort", inside=outside)
    elif method == "newton":
        lam, done = _l1_box_threshold_newton(abs_a, room, ew, outside)
        if not bool(done.all()):
            r = (~done[:, 0]).nonzero()[:, 0]
            lam_r = _l1_box_threshold_sorted(abs_a[r].to(w), room[r].to(w), ew[r])
            lam = lam.index_copy(0, r, lam_r)
    else:
        raise ValueError(f"unknown method {method!r}")
    lam_hi = lam.to(dt)
    lam_lo = (lam - lam_hi.to(w)).to(dt)  # 0 for float64 input
    mag = torch.minimum(((abs_a - lam_hi) - lam_lo).clamp_min(0), room)
    # rounding guard: a rescale by s < 1 stays inside the box (it contains 0)
    s = mag.sum(dim=1, keepdim=True, dtype=w)
    scale = torch.where(s <= ew, 1.0, ew / s.clamp_min(torch.finfo(w).tiny))
    return torch.sign(a) * (mag * scale.to(dt))


def _project_l1_box_masked(
    delta: torch.Tensor, x: torch.Tensor, eps: Eps, method: str = "auto"
) -> torch.Tensor:
    """Sync-free :func:`project_l1_box`: every row goes through the solver, then masked."""
    a = _flat(delta)
    xf = _flat(x).expand_as(a)
    e = _col(eps, a)
    w = _work_dtype(a)
    ew = e.to(w)
    room = torch.where(a >= 0, 1 - xf, xf)
    abs_a = a.abs()
    clip_abs = torch.minimum(abs_a, room)
    inside = clip_abs.sum(dim=1, keepdim=True, dtype=w) <= ew
    lam = l1_box_threshold(abs_a, room, e, method=method, inside=inside)
    mag = torch.minimum((abs_a.to(w) - lam).clamp_min(0), room.to(w)).to(a.dtype)
    # rounding guard: a rescale by s < 1 stays inside the box (it contains 0)
    s = mag.sum(dim=1, keepdim=True, dtype=w)
    scale = torch.where(inside | (s <= ew), 1.0, ew / s.clamp_min(torch.finfo(w).tiny))
    mag = torch.where(inside, clip_abs, mag * scale.to(a.dtype))
    out = torch.where(inside, torch.minimum(torch.maximum(a, -xf), 1 - xf), torch.sign(a) * mag)
    return out.reshape(delta.shape)
