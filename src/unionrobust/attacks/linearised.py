"""DeepFool and FAB: minimum-norm attacks on the linearised classifier (shared machinery in
:mod:`unionrobust.attacks.minnorm`).

* :class:`DeepFool` (Moosavi-Dezfooli et al. 2016, Alg. 2 and §3.2 for ℓp): linearise the
  class differences f_k − f_y at the iterate, pick l = argmin_k |f_k'| / ‖w_k'‖_q and step
  r = (|f_l'| + 1e-4) / ‖w_l'‖_q^q · |w_l'|^{q−1} ⊙ sign(w_l') (q the dual exponent; for ℓ∞,
  q = 1: r = |f_l'|/‖w_l'‖₁ · sign(w_l')); x_t = clip(x + (1 + overshoot) Σ r). ℓ2 and ℓ∞.
* :class:`FAB` (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast
  adaptive boundary attack", Alg. 1): the same linearisation, but the iterate and the original
  point are both projected onto the chosen hyperplane *inside the box*
  (:func:`project_hyperplane_box`, exact for ℓ1/ℓ2/ℓ∞), mixed with weight
  α = min(‖δ‖/(‖δ‖ + ‖δ_orig‖), α_max), extrapolated by η, and after
  each success pulled back towards x: x ← (1 − β) x_orig + β x. ℓ1, ℓ2 and ℓ∞.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from unionrobust.attacks.base import autocast_for, forward, misclassified, upcast
from unionrobust.attacks.minnorm import MinNormAttack
from unionrobust.errors import (
    UnionRobustError,
    check_finite,
    check_fraction,
    check_int,
    check_number,
    check_positive,
)
from unionrobust.geometry.batch import flat as _flat
from unionrobust.geometry.batch import rows as _rows
from unionrobust.rng import INIT_COUNTER
from unionrobust.threats import ThreatModel


# --------------------------------------------------------------------------- linearisation
def candidate_classes(clean_logits: torch.Tensor, y: torch.Tensor, k: int | None) -> torch.Tensor:
    """(B, K) class indices: ``y`` first, then the K − 1 highest other clean logits."""
    classes = clean_logits.shape[1]
    k = classes if k is None else max(2, min(int(k), classes))
    score = clean_logits.scatter(1, y[:, None], math.inf)
    return score.topk(k, dim=1).indices


def linearise(
    model: nn.Module, x: torch.Tensor, cand: torch.Tensor, amp: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, C), the differences f_k − f_y (B, K−1) and their input gradients
    (B, K−1, *x.shape[1:]) for the candidate classes ``cand`` (``cand[:, 0]`` = y).
    Costs one forward and K − 1 backward passes (one per difference: a targeted pair, FAB-T's
    linearisation, costs a single backward pass)."""
    xr = x.detach().requires_grad_(True)
    k = cand.shape[1] - 1
    with torch.enable_grad():
        with autocast_for(xr, amp):
            logits = model(xr)
        logits = upcast(logits)
        picked = logits.gather(1, cand)
        diff = picked[:, 1:] - picked[:, :1]
        grads = [
            torch.autograd.grad(diff[:, j].sum(), xr, retain_graph=j < k - 1)[0] for j in range(k)
        ]
    return logits.detach(), diff.detach(), torch.stack(grads, dim=1)


def dual_norm(w: torch.Tensor, p: str) -> torch.Tensor:
    """‖w‖_q over the trailing dims of (B, K, ...) for the dual q of ℓp (ℓ∞→1, ℓ2→2, ℓ1→∞)."""
    flat = w.reshape(w.shape[0], w.shape[1], -1)
    if p == "linf":
        return flat.abs().sum(dim=2)
    if p == "l2":
        return flat.norm(dim=2)
    return flat.abs().amax(dim=2)


def closest_hyperplane(
    f: torch.Tensor, w: torch.Tensor, p: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linearised boundary nearest in ℓp: (f_l (B,), w_l (B, ...)), l = argmin |f|/‖w‖_q."""
    dist = f.abs() / dual_norm(w, p).clamp_min(1e-12)
    idx = dist.argmin(dim=1)
    b = torch.arange(f.shape[0], device=f.device)
    return f[b, idx], w[b, idx]


def project_hyperplane_box(
    w: torch.Tensor, c: torch.Tensor, z: torch.Tensor, p: str
) -> torch.Tensor:
    """argmin ‖δ‖_p s.t. ⟨w, δ⟩ = c and z + δ ∈ [0, 1] (per example; Croce & Hein 2020 §3.1).

    ℓ1: fractional knapsack — coordinates by decreasing |w_i| move to the box until the
    constraint holds (exact). ℓ2 / ℓ∞: by the KKT conditions δ = clip(t·s·v, −z, 1 − z) with
    v = w (ℓ2) or sign(w) (ℓ∞), s = sign(c), and t ≥ 0 the root of the monotone, piecewise
    linear P(t) = Σ |w_i|·min(t·v_i, room_i) = |c|, solved exactly: sort the breakpoints
    room_i / v_i, find the first at which P reaches |c| and solve the linear piece before it
    (one sort instead of a bisection). Where the box makes the constraint infeasible, the point
    of the box that gets closest to the hyperplane is returned.
    """
    shape = z.shape
    wf, zf = _flat(w), _flat(z)
    s = torch.sign(c).reshape(-1, 1)
    need = c.abs().reshape(-1, 1).to(wf.dtype)
    direction = s * torch.sign(wf)  # the sign each coordinate moves by
    room = torch.where(direction > 0, 1.0 - zf, zf).clamp_min(0.0)
    aw = wf.abs()
    if p == "l1":
        order = aw.argsort(dim=1, descending=True)
        aw_s, room_s = aw.gather(1, order), room.gather(1, order)
        cap = aw_s * room_s
        before = cap.cumsum(dim=1) - cap
        amount_s = ((need - before) / aw_s.clamp_min(1e-30)).clamp(min=0.0)
        amount_s = torch.minimum(amount_s, room_s) * (aw_s > 0)
        amount = torch.zeros_like(amount_s).scatter(1, order, amount_s)
        return (direction * amount).reshape(shape)
    v = aw if p == "l2" else (aw > 0).to(aw.dtype)
    moving = v > 0
    brk = torch.where(moving, room / v.clamp_min(1e-30), torch.zeros_like(v))
    # coordinates that cannot move (v = 0) sort last with slope 0 and add nothing
    key = torch.where(moving, brk, torch.full_like(brk, float("inf")))
    t_s, order = key.sort(dim=1)
    slope_s = (aw * v).gather(1, order)  # dP/dt of a coordinate until it saturates
    full_s = (aw * torch.minimum(brk * v, room)).gather(1, order)  # its share once saturated
    done = full_s.cumsum(dim=1)  # saturated by breakpoint k (inclusive)
    total = slope_s.sum(dim=1, keepdim=True)
    rest = total - slope_s.cumsum(dim=1)  # slope after breakpoint k
    finite = torch.isfinite(t_s)  # the unmoving coordinates add nothing: P there is `done`
    at_brk = done + torch.where(finite, t_s, 0.0) * rest
    reached = (at_brk >= need) & finite
    k = reached.to(torch.int8).argmax(dim=1, keepdim=True)  # the first breakpoint reaching |c|
    prev = (k - 1).clamp_min(0)
    done_prev = torch.where(k > 0, done.gather(1, prev), torch.zeros_like(need))
    rest_prev = torch.where(k > 0, rest.gather(1, prev), total)
    t = (need - done_prev) / rest_prev.clamp_min(1e-30)
    t_max = brk.amax(dim=1, keepdim=True)  # infeasible: every coordinate to the box
    t = torch.where(reached.any(dim=1, keepdim=True), t, t_max).clamp_min(0.0)
    return (direction * torch.minimum(t * v, room)).reshape(shape)


# --------------------------------------------------------------------------- DeepFool
class DeepFool(MinNormAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016) for ℓ2 and ℓ∞; see the module doc.

    ``steps``: at most this many linearisations (stops when every example is broken — one host
    sync per step); ``overshoot``: the paper's 0.02; ``candidates``: how many classes (the true
    one and the highest other clean logits) are linearised, None = all (costs one backward pass
    per class and step).
    """

    name = "deepfool"
    norms_supported = ("linf", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int | None = 10,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.overshoot = check_finite("overshoot", overshoot, 0.0)
        self.candidates = None if candidates is None else check_int("candidates", candidates, 2)

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        p = self.threat.name
        cand = candidate_classes(clean_logits, y, self.candidates)
        r_tot = torch.zeros_like(x)
        active = ~misclassified(clean_logits, y)
        for _ in range(self.steps):
            x_t = (x + (1 + self.overshoot) * r_tot).clamp(0.0, 1.0)
            logits, f, w = linearise(model, x_t, cand, self.amp)
            broken = misclassified(logits, y)
            tracker.update(x_t, broken)
            active = active & ~broken
            if not bool(active.any()):
                return
            fl, wl = closest_hyperplane(f, w, p)
            wf = _flat(wl)
            if p == "l2":
                r = ((fl.abs() + 1e-4) / wf.pow(2).sum(dim=1).clamp_min(1e-12)).reshape(-1, 1) * wf
            else:
                r = ((fl.abs() + 1e-4) / wf.abs().sum(dim=1).clamp_min(1e-12)).reshape(
                    -1, 1
                ) * torch.sign(wf)
            r_tot = r_tot + _rows(active, x) * r.reshape(x.shape)
        x_t = (x + (1 + self.overshoot) * r_tot).clamp(0.0, 1.0)
        tracker.update(x_t, misclassified(forward(model, x_t, self.amp), y))


# --------------------------------------------------------------------------- FAB
class FAB(MinNormAttack):
    """Fast adaptive boundary attack (Croce & Hein 2020, Alg. 1), ℓ1/ℓ2/ℓ∞; untargeted, or
    targeted (FAB-T, as AutoAttack runs it) with ``n_targets``.

    Untargeted: each step linearises every candidate class (``candidates``: the true one and
    the highest other clean logits, None = all) and takes the closest hyperplane. FAB-T: one
    pass per target class t, the ``n_targets`` highest other clean logits in turn, linearising
    only f_t − f_y (one backward pass per step); passes after the first run only on the points
    not yet broken within ε (AutoAttack's protocol). ``steps`` iterations per pass (each: one
    forward and the backward passes, plus one forward); η = 1.05 (``eta``), β = 0.9
    (``beta``), α_max = 0.1 (``alpha_max``) as in the paper and AutoAttack. ``restarts`` > 1
    starts the later runs from a random point of the ball of radius ``min(found norm, ε)/2``
    around x (the paper's restarts, §3.3). ``early_stop``: every 10 steps, drop the points
    already broken within ε (the verdict at ε is the same; their minimum norm is not sought
    further).
    """

    name = "fab"

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 20,
        restarts: int = 1,
        eta: float = 1.05,
        beta: float = 0.9,
        alpha_max: float = 0.1,
        candidates: int | None = None,
        n_targets: int | None = None,
        early_stop: bool = False,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.eta = check_positive("eta", eta)
        self.beta = check_fraction("beta", beta, one=False)
        self.alpha_max = check_number("alpha_max", alpha_max, 0.0, 1.0)
        self.candidates = None if candidates is None else check_int("candidates", candidates, 2)
        self.n_targets = None if n_targets is None else check_int("n_targets", n_targets, 1)
        if self.n_targets is not None and self.candidates is not None:
            raise UnionRobustError(
                "FAB: give candidates (untargeted) or n_targets (FAB-T), not both"
            )
        self.early_stop = bool(early_stop)

    def _passes(self, clean_logits: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """The candidate classes of each pass: all of them at once (untargeted), or (y, t) for
        each target t (FAB-T)."""
        if self.n_targets is None:
            return [candidate_classes(clean_logits, y, self.candidates)]
        ranked = candidate_classes(clean_logits, y, self.n_targets + 1)
        return [ranked[:, [0, k]] for k in range(1, ranked.shape[1])]

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        eps = self.threat.size
        for k, cand in enumerate(self._passes(clean_logits, y)):
            for r in range(self.restarts):
                if k == 0 and r == 0:
                    rows = torch.arange(x.shape[0], device=x.device)
                else:  # AutoAttack: later passes only on the points still robust within ε
                    rows = (tracker.norms > eps).nonzero().squeeze(1)
                    if rows.numel() == 0:
                        return
                local = tracker.subset(rows)
                start = x[rows]
                if r > 0:
                    radius = local.norms.clamp_max(eps) / 2
                    unit = self.threat.with_size(1.0)
                    noise = unit.random_init(start, rand.subset(rows), INIT_COUNTER + 4 * r)
                    scale = radius / self.threat.norm(noise).clamp_min(1e-12)
                    start = (start + _rows(scale, start) * noise).clamp(0.0, 1.0)
                self._once(model, y[rows], cand[rows], start, local)
                tracker.merge(local, rows)

    def _once(self, model, y, cand, start, tracker) -> None:
        """One FAB run from ``start`` on the rows of ``tracker`` (a subset tracker)."""
        p = self.threat.name
        norm = self.threat.norm
        x, x_i = tracker.x, start
        rows = torch.arange(x.shape[0], device=x.device)
        sub = tracker
        for step in range(self.steps):
            if self.early_stop and step and step % 10 == 0:
                keep = sub.norms > self.threat.size
                if not bool(keep.all()):
                    tracker.merge(sub, rows)
                    rows, x_i, y, cand = rows[keep], x_i[keep], y[keep], cand[keep]
                    if rows.numel() == 0:
                        return
                    sub, x = tracker.subset(rows), x[keep]
            _, f, w = linearise(model, x_i, cand, self.amp)
            fl, wl = closest_hyperplane(f, w, p)
            d_i = project_hyperplane_box(wl, -fl, x_i, p)
            shift = (_flat(wl) * _flat(x - x_i)).sum(dim=1)
            d_o = project_hyperplane_box(wl, -(fl + shift), x, p)
            n_i, n_o = norm(d_i), norm(d_o)
            a = (n_i / (n_i + n_o).clamp_min(1e-12)).clamp_max(self.alpha_max)
            a = _rows(a, x)
            x_new = ((1 - a) * (x_i + self.eta * d_i) + a * (x + self.eta * d_o)).clamp(0.0, 1.0)
            broken = misclassified(forward(model, x_new, self.amp), y)
            sub.update(x_new, broken)
            back = ((1 - self.beta) * x + self.beta * x_new).clamp(0.0, 1.0)
            x_i = torch.where(_rows(broken, x), back, x_new)
        tracker.merge(sub, rows)


__all__ = ["FAB", "DeepFool", "project_hyperplane_box"]
