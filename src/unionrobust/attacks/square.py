"""Square attack (Andriushchenko et al. 2020, Alg. 1): random search keeping a proposal if the
margin z_y − max_{j≠y} z_j decreases, window side from the paper's p-schedule. ℓ∞ (Alg. 2):
start from vertical ±ε stripes, each step sets one s × s window to ±ε per channel. ℓ2
(Alg. 3, as the authors implement it): start from tiles of pseudo-Gaussian meta-patches, each
step moves the mass of a second window into the first (plus a new meta-patch), rescaled to
norm ε. ℓ1 (AutoAttack's ℓ1 Square, as in "Mind the box", Croce & Hein 2021): the ℓ2 scheme with
ℓ1 norms and ℓ1-normalised meta-patches of weights 1/(k+1)⁴ (sparser than ℓ2's 1/(k+1)²), each
proposal projected onto the ℓ1 ball ∩ box exactly (the threat's ``project``). Images
(B, C, H, W), one forward per step.
Never calls backward; randomness from the example-keyed :class:`~unionrobust.rng.KeyedRandom`.
"""

from __future__ import annotations

import functools
import math

import torch

from unionrobust.attacks.base import Attack, AttackResult, forward, misclassified, run_restarts
from unionrobust.attacks.best import BestTracker
from unionrobust.errors import UnionRobustError, check_fraction, check_int
from unionrobust.geometry.ball_box import l2_box_scale
from unionrobust.geometry.batch import groups_clear
from unionrobust.geometry.batch import rows as _rows
from unionrobust.losses import cw_margin
from unionrobust.threats import ThreatModel, single_threat

#: steps whose keyed draws are computed at once (bit-identical to drawing them step by step)
_WINDOW = 64


def square_p(p_init: float, step: int, steps: int, rescale: bool = False) -> float:
    """The fraction of pixels changed at ``step`` (Andriushchenko et al. 2020, §3): p_init halved
    at query 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000. As AutoAttack runs it
    (``resc_schedule=False``) the queries count as they are, so 5,000 queries end at
    p_init / 128; with ``rescale`` the thresholds are per 10,000 and scaled to ``steps`` (the
    paper's option, which reaches the smallest windows twice as early at 5,000 queries)."""
    it = int(step / steps * 10000) if rescale else step
    halvings = sum(it > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


class Square(Attack):
    """Square attack, ℓ∞, ℓ2 and ℓ1 (see the module doc). ``steps`` queries after the initial
    one (AutoAttack's 5,000); ``p_init`` the initial fraction of pixels per window (AutoAttack's
    0.8; the paper's 0.05 for ImageNet-size models); ``restarts`` random restarts on the
    examples not yet broken, one after the other, or with ``parallel`` side by side in one
    loop (each restart its own keyed draws; an example's rows stop when one of them breaks it;
    on a small model the per-step work of the proposals, not the forward pass, is the cost, so
    one loop over R × B rows costs much less than R loops over B); ``near_miss``: the restarts
    after the first run only on its near misses, the unbroken examples whose margin it brought
    within this fraction of their clean margin (on ℓ∞-trained MNIST models a 5,000-query run
    misses points that most other draws break, and those sit closest to the boundary when it
    stops: :data:`~unionrobust.evaluation.suites.ESCALATION`); ``rescale`` the window schedule
    to ``steps`` (:func:`square_p`; off by default, as in AutoAttack). Restart r draws the same
    whether run alone, after others or side by side."""

    name = "square"

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 5000,
        p_init: float = 0.8,
        restarts: int = 1,
        seed: int = 0,
        amp: bool = False,
        rescale: bool = False,
        parallel: bool = False,
        near_miss: float | None = None,
    ) -> None:
        threat = single_threat(threat, "Square")
        if threat.name not in ("linf", "l2", "l1"):
            raise UnionRobustError(f"Square supports linf, l2 and l1 threats, got {threat.spec!r}")
        super().__init__(threat, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.p_init = check_fraction("p_init", p_init)
        self.restarts = check_int("restarts", restarts, 1)
        self.rescale = bool(rescale)
        self.parallel = bool(parallel)
        self.near_miss = None if near_miss is None else check_fraction("near_miss", near_miss)

    def _run(self, model, x, y, rand, clean_logits) -> AttackResult:
        if x.dim() != 4:
            raise UnionRobustError(
                f"Square attacks images (B, C, H, W), got shape {tuple(x.shape)}"
            )
        # the margin m = z_y − max_{j≠y} z_j is minimised: loss −m, success m < 0 (the
        # tracker's rule "success first, then the higher loss" is "the lower margin")
        margin = -cw_margin(clean_logits, y)
        tracker = BestTracker(x, -margin, margin < 0)

        if self.near_miss is not None:
            best = self._near_misses(model, x, y, rand, tracker, margin)
        elif self.parallel and self.restarts > 1:
            xa, m = self._side_by_side(model, x, y, rand, 0)
            tracker.update(xa, -m, m < 0)
            best = tracker.x_adv
        else:
            fold = functools.partial(self._fold, model)
            best = run_restarts(self.restarts, x, y, rand, tracker, fold).x_adv
        logits = forward(model, best, self.amp)
        return AttackResult(best, misclassified(logits, y), cw_margin(logits, y))

    def _fold(self, model, x, y, rand, tracker, restart) -> None:
        """Restart ``restart`` on these examples, folded into ``tracker``."""
        xa, m = self._once(model, x, y, rand, restart)
        tracker.update(xa, -m, m < 0)

    def _near_misses(self, model, x, y, rand, tracker: BestTracker, clean: torch.Tensor):
        """The first run on every example, the other restarts (side by side with ``parallel``)
        only on its near misses: unbroken with margin ≤ ``near_miss`` × ``clean`` margin
        z_y − max_{j≠y} z_j (the tracker's loss is minus the margin). One host read."""
        self._fold(model, x, y, rand, tracker, 0)
        near = ~tracker.success & (-tracker.loss <= self.near_miss * clean)
        idx = near.nonzero().squeeze(1)
        if self.restarts == 1 or idx.numel() == 0:
            return tracker.x_adv
        local = tracker.subset(idx)
        xs, ys, rs = x[idx], y[idx], rand.subset(idx)
        if self.parallel:
            xa, m = self._side_by_side(model, xs, ys, rs, 1)
            local.update(xa, -m, m < 0)
        else:

            def later(xr, yr, rr, t, r):
                self._fold(model, xr, yr, rr, t, r + 1)

            run_restarts(self.restarts - 1, xs, ys, rs, local, later)
        tracker.merge(local, idx)
        return tracker.x_adv

    def _counter_base(self, restart: int) -> int:
        """The first keyed counter of restart ``restart`` (each run uses 8 per query)."""
        return restart * (self.steps + 1) * 8

    def _side_by_side(self, model, x, y, rand, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Restarts ``first`` … R−1 as rows of one run: restart r's rows draw the keys it draws
        alone (counters shifted by its base, :meth:`KeyedRandom.shifted`); per example the row
        of lowest margin."""
        b = x.shape[0]
        restarts = torch.arange(first, self.restarts, device=x.device)
        r_n = restarts.numel()
        group = torch.arange(b, device=x.device).repeat(r_n)
        xs, ys = x.repeat(r_n, 1, 1, 1), y.repeat(r_n)
        keys = rand.subset(group).shifted(self._counter_base(1) * restarts.repeat_interleave(b))
        xa, m = self._once(model, xs, ys, keys, 0, group)
        m = m.reshape(r_n, b)
        pick = m.argmin(dim=0)
        ar = torch.arange(b, device=x.device)
        return xa.reshape(r_n, b, *x.shape[1:])[pick, ar], m[pick, ar]

    def _once(
        self, model, x, y, rand, restart, group: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run. Each step proposes and queries only the rows not broken yet (as AutoAttack
        does): the draws are keyed by example, so a row's run does not depend on which others
        are still in the batch. One host read per step (the rows left). ``group``: the example
        of each row (side-by-side restarts); a row stops when any row of its example broke."""
        l2 = self.threat.name != "linf"  # ℓ2 and ℓ1 share Alg. 3's window moves
        propose = self._propose_l2 if l2 else self._propose_linf
        base = self._counter_base(restart)
        cur = self._init_l2(x, rand, base) if l2 else self._init_linf(x, rand, base)
        margin = -cw_margin(forward(model, cur, self.amp), y)
        rows = torch.arange(x.shape[0], device=x.device)
        xs, ys, rs, cs, ms = x, y, rand, cur, margin  # the rows still unbroken
        gs = group
        n_groups = 0 if group is None else int(group.max()) + 1  # one host read per run
        width = (5 if l2 else 2) + x.shape[1]  # the uniforms of one proposal
        draws = torch.empty(0)  # the keyed draws of the next _WINDOW steps, drawn at once
        for i in range(self.steps):
            if i % _WINDOW == 0:
                ctrs = base + 8 * torch.arange(i + 1, min(i + _WINDOW, self.steps) + 1)
                draws = rs.uniform_steps(ctrs, width, torch.float64)
            alive = ms > 0
            if gs is not None:  # an example broken by one of its rows stops in all of them
                alive = groups_clear(~alive, gs, n_groups)
            if not bool(alive.all()):  # drop the rows broken last step
                cur, margin = cur.index_copy(0, rows, cs), margin.index_copy(0, rows, ms)
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return cur, margin
                rows, xs, ys, cs, ms = rows[keep], xs[keep], ys[keep], cs[keep], ms[keep]
                rs, draws = rs.subset(keep), draws[keep]
                gs = None if gs is None else gs[keep]
            p = square_p(self.p_init, i, self.steps, self.rescale)
            cand = propose(xs, cs, p, draws[:, i % _WINDOW])
            m = -cw_margin(forward(model, cand, self.amp), ys)
            accept = m < ms
            cs = torch.where(_rows(accept, xs), cand, cs)
            ms = torch.where(accept, m, ms)
        return cur.index_copy(0, rows, cs), margin.index_copy(0, rows, ms)

    # ℓ∞: Alg. 2 -------------------------------------------------------------------------------
    def _init_linf(self, x, rand, ctr) -> torch.Tensor:
        _, c, _, w = x.shape
        stripes = _signs(rand.uniform(ctr, (c, 1, w), x.dtype))
        return (x + self.threat.size * stripes).clamp(0.0, 1.0)

    def _propose_linf(self, x, cur, p, u) -> torch.Tensor:
        """One step of Alg. 2; ``u`` the step's keyed uniforms (B, 2 + C), float64."""
        _, c, h, w = x.shape
        s = max(min(round(math.sqrt(p * h * w)), min(h, w) - 1), 1)
        window = _window(x, s, _offset(u[:, 0], h - s), _offset(u[:, 1], w - s))
        signs = _signs(u[:, 2:]).to(x.dtype).reshape(-1, c, 1, 1)
        return torch.where(window, (x + self.threat.size * signs).clamp(0.0, 1.0), cur)

    # ℓ2 and ℓ1: Alg. 3 ------------------------------------------------------------------------
    def _norm(self, t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """ℓ2 or ℓ1 norm (the threat's) over ``dims``, kept as size-1 dims."""
        if self.threat.name == "l1":
            return t.abs().sum(dim=dims, keepdim=True)
        return t.pow(2).sum(dim=dims, keepdim=True).sqrt()

    def _to_ball(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """ℓ2: ``delta`` scaled so that, clipped to the box, it has norm ε (:func:`fill_l2`; the
        authors scale to ε before clipping, which wastes the budget the box cuts off: on MNIST
        digits most of it); ℓ1: ``delta`` projected onto the ℓ1 ball ∩ box exactly."""
        if self.threat.name == "l1":
            return (x + self.threat.project(delta, x)).clamp(0.0, 1.0)
        return fill_l2(x, delta, self.threat.size)

    def _init_l2(self, x, rand, ctr) -> torch.Tensor:
        """Tiles of side h // 5 (at least 1), each a meta-patch times a random sign per channel,
        rescaled to norm ε (ℓ2) or projected onto the ℓ1 ball ∩ box (the authors' start)."""
        _, c, h, w = x.shape
        s = max(h // 5, 1)
        patch = meta_patch(s, x, self.threat.name)
        delta = torch.zeros_like(x)
        top, left = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
        tiles = [(r0, c0) for r0 in range(top, h - s + 1, s) for c0 in range(left, w - s + 1, s)]
        signs = _signs(rand.uniform(ctr, (len(tiles), c, 1, 1), x.dtype))
        for k, (r0, c0) in enumerate(tiles):
            delta[:, :, r0 : r0 + s, c0 : c0 + s] += patch * signs[:, k]
        return self._to_ball(x, delta)

    def _propose_l2(self, x, cur, p, u) -> torch.Tensor:
        """One step of Alg. 3 (the authors' implementation): in window W1 the old content,
        normalised, plus a random-sign meta-patch; window W2 zeroed; the budget freed in W1 ∪ W2
        and unused by the image is given to W1; the whole perturbation back to the ball
        (:meth:`_to_ball`). Norms are ℓ2 or ℓ1 as the threat's. ``u``: the step's keyed
        uniforms (B, 5 + C), float64."""
        eps = self.threat.size
        _, c, h, w = x.shape
        s = max(round(math.sqrt(p * h * w)), 3)
        s = min(s + (s % 2 == 0), min(h, w) - 1)
        r1, c1 = _offset(u[:, 0], h - s), _offset(u[:, 1], w - s)
        w1 = _window(x, s, r1, c1).to(x.dtype)
        w2 = _window(x, s, _offset(u[:, 2], h - s), _offset(u[:, 3], w - s)).to(x.dtype)
        both = torch.maximum(w1, w2)
        delta = cur - x

        def chan_norm(t: torch.Tensor) -> torch.Tensor:
            return self._norm(t, (2, 3))

        norm_w1 = chan_norm(delta * w1)
        norm_img = self._norm(delta, (1, 2, 3))
        norm_both = chan_norm(delta * both)
        patch = _place(meta_patch(s, x, self.threat.name), x, s, r1, c1, u[:, 4] < 0.5) * w1
        signs = _signs(u[:, 5:]).to(x.dtype).reshape(-1, c, 1, 1)
        new = patch * signs + delta * w1 / (1e-10 + norm_w1)
        if self.threat.name == "l1":
            budget = (eps - norm_img).clamp_min(0.0) / c + norm_both
        else:
            budget = ((eps**2 - norm_img**2).clamp_min(0.0) / c + norm_both**2).sqrt()
        new = new / chan_norm(new).clamp_min(1e-12) * budget
        return self._to_ball(x, delta * (1 - both) + new * w1)


def fill_l2(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """clip(x + t·δ, 0, 1) with the largest t ≥ 0 (per example) whose clipped perturbation has
    ℓ2 norm ≤ ε, exactly: the scale of the ℓ2 ∩ box projection
    (:func:`unionrobust.geometry.ball_box.l2_box_scale`) of s·δ, with s = 1 / min |δ_i ≠ 0| so
    that every moving coordinate reaches its face by t = 1. ‖clip(x + tδ) − x‖₂ is
    nondecreasing in t, so the result is in ball ∩ box and at least as far out as the authors'
    clip(x + (ε/‖δ‖₂)·δ) (the box cuts off most of that budget on MNIST digits)."""
    b, w = x.shape[0], torch.float64  # float64: s·δ stays finite for any float32 δ
    xf, d = x.reshape(b, -1).to(w), delta.reshape(b, -1).to(w)
    ad = d.abs()
    smallest = torch.where(ad > 0, ad, torch.full_like(ad, math.inf)).amin(dim=1, keepdim=True)
    a = d / torch.where(torch.isfinite(smallest), smallest, torch.ones_like(smallest))
    e = torch.full((b, 1), float(eps), dtype=w, device=x.device)
    t = l2_box_scale(a, -xf, 1.0 - xf, e)
    return (xf + t * a).clamp(0.0, 1.0).to(x.dtype).reshape(x.shape)


def _signs(u: torch.Tensor) -> torch.Tensor:
    """±1 from uniforms in [0, 1)."""
    return torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))


def _offset(u: torch.Tensor, high: int) -> torch.Tensor:
    """Integers uniform in [0, high] from uniforms in [0, 1), shape (B,)."""
    return (u * (high + 1)).floor().long().clamp(0, high)


def _window(x: torch.Tensor, s: int, r0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, H, W): the s × s window with top-left corner (r0, c0) per example."""
    _, _, h, w = x.shape
    r0, c0 = r0.reshape(-1, 1, 1), c0.reshape(-1, 1, 1)
    ar_h = torch.arange(h, device=x.device).reshape(1, h, 1)
    ar_w = torch.arange(w, device=x.device).reshape(1, 1, w)
    return ((ar_h >= r0) & (ar_h < r0 + s) & (ar_w >= c0) & (ar_w < c0 + s))[:, None]


def _place(
    patch: torch.Tensor,
    x: torch.Tensor,
    s: int,
    r0: torch.Tensor,
    c0: torch.Tensor,
    flip: torch.Tensor,
) -> torch.Tensor:
    """The s × s ``patch`` (transposed where ``flip``) with its corner at (r0, c0), per
    example, shape (B, 1, H, W); outside the window the edge values repeat (mask it)."""
    b, _, h, w = x.shape
    pb = torch.where(flip.reshape(-1, 1, 1), patch.T.expand(b, s, s), patch.expand(b, s, s))
    ri = (torch.arange(h, device=x.device).reshape(1, h) - r0.reshape(-1, 1)).clamp(0, s - 1)
    ci = (torch.arange(w, device=x.device).reshape(1, w) - c0.reshape(-1, 1)).clamp(0, s - 1)
    rows = pb.gather(1, ri[:, :, None].expand(b, h, s))
    return rows.gather(2, ci[:, None, :].expand(b, h, w))[:, None]


def _rect_patch(a: int, bw: int, norm: str = "l2") -> torch.Tensor:
    """The authors' pseudo-Gaussian a × bw rectangle: nested centred rectangles, weight 1/(k+1)²
    for the k-th and unit ℓ2 norm (``norm`` "l2"), or 1/(k+1)⁴ and unit ℓ1 norm ("l1")."""
    power = 4 if norm == "l1" else 2
    delta = torch.zeros(a, bw, dtype=torch.float64)
    if a == 0 or bw == 0:
        return delta
    xc, yc = a // 2 + 1, bw // 2 + 1
    r, c = xc - 1, yc - 1
    for k in range(max(xc, yc)):
        delta[max(r, 0) : min(r + 2 * k + 1, a), max(c, 0) : min(c + 2 * k + 1, bw)] += (
            1.0 / (k + 1) ** power
        )
        r, c = r - 1, c - 1
    return delta / _lp(delta, norm)


def _lp(t: torch.Tensor, norm: str) -> torch.Tensor:
    return (t.abs().sum() if norm == "l1" else t.pow(2).sum().sqrt()).clamp_min(1e-12)


def meta_patch(s: int, x: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """Andriushchenko et al. 2020, Alg. 3's s × s update: a pseudo-Gaussian bump on the upper
    half and its negative on the lower half, unit norm in ``norm`` ("l2", or "l1" with the
    sharper ℓ1 bumps) (``dtype``/``device`` of ``x``; built once per size and device)."""
    return _meta_patch(s, norm, x.dtype, x.device)


@functools.lru_cache(maxsize=256)
def _meta_patch(s: int, norm: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    delta = torch.zeros(s, s, dtype=torch.float64)
    delta[: s // 2] = _rect_patch(s // 2, s, norm)
    delta[s // 2 :] = -_rect_patch(s - s // 2, s, norm)
    delta = delta / _lp(delta, norm)
    return delta.to(device=device, dtype=dtype)


__all__ = ["Square", "fill_l2", "square_p"]
