"""Affine attacks (Tramèr & Boneh 2019 §2.5, §4): perturbations compounding r1 ∈ β·S1 with
r2 ∈ (1−β)·S2 for β ∈ [0, 1].

* :class:`AffineLp` — two additive ℓp threats (ℓ∞ with ℓ1 in the paper): x_adv = x + r1 + r2,
  ‖r1‖ ≤ β·ε1, ‖r2‖ ≤ (1−β)·ε2, x_adv ∈ [0,1], found by alternating projected steps on the two
  parts ("updates both perturbations in alternation", §4): each iteration takes one gradient
  and moves the next part in turn (parts with a zero budget are skipped, so β ∈ {0, 1} is
  exactly :class:`~unionrobust.attacks.PGD` on the other threat). Invariants: x + r1 ∈ [0,1]
  (r1 projected around x) and x + r1 + r2 ∈ [0,1] (r2 projected around x + r1; moving r1
  re-projects r2).
* :class:`AffineSpatial` — ℓ∞ (S1) with rotation-translation (S2): draw ``k`` transforms from
  (1−β)·S_RT (β = 1 leaves the identity only), attack each transformed input with ℓ∞ PGD of
  budget β·ε and keep the worst, x_adv = T_θ(x) + r (§4). β always scales the FIRST threat
  here; §4 writes β for the rotation share (±3β px, ±30β°), i.e. our 1−β. β = 0 is the
  worst-of-k spatial attack on the same draws, β = 1 ℓ∞ PGD.

β is swept over ``betas`` (each example keeps its worst β; with ``shrink`` later values run only
on examples not yet fooled) or, with ``draw=True``, one β per example drawn uniformly from
``betas`` (keyed by example id). Claim 3: on linear models AffineLp is never stronger than the
union of S1 and S2; AffineSpatial can be (Theorem 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unionrobust.attacks.base import (
    Attack,
    AttackResult,
    forward,
    loss_and_grad,
    misclassified,
)
from unionrobust.attacks.best import PayloadTracker
from unionrobust.attacks.pgd import (
    PGD,
    check_start,
    clip01,
    random_start,
)
from unionrobust.attacks.spatial import WorstOfK
from unionrobust.errors import UnionRobustError, check_int, check_number, check_positive
from unionrobust.losses import get_loss
from unionrobust.rng import BETA_COUNTER, INIT_COUNTER, SPATIAL_DRAW_COUNTER, KeyedRandom
from unionrobust.threats import AdditiveThreat, Linf, SearchedThreat, ThreatModel, Union
from unionrobust.threats.spatial import RotationTranslation, rotate_translate


@dataclass
class AffineResult(AttackResult):
    """An :class:`AttackResult` plus the decomposition: ``beta`` (B,), ``parts`` (r1, r2) for
    :class:`AffineLp` or (θ (B, 3), r) for :class:`AffineSpatial`."""

    beta: torch.Tensor | None = None
    parts: tuple[torch.Tensor, torch.Tensor] | None = None


def check_betas(betas: float | Sequence[float]) -> tuple[float, ...]:
    vals = (betas,) if isinstance(betas, int | float) else tuple(betas)
    if not vals:
        raise UnionRobustError("need at least one beta")
    return tuple(check_number("beta", b, 0.0, 1.0) for b in vals)


class _Affine(Attack):
    def __init__(self, threat, betas, draw, shrink, loss, kappa, seed, amp) -> None:
        super().__init__(threat, seed=seed, amp=amp)
        self.betas = check_betas(betas)
        self.draw = bool(draw)
        self.shrink = bool(shrink)
        self.loss_name = loss
        self.loss_fn = get_loss(loss, kappa)

    def _one_beta(self, model, x, y, rand, beta: float) -> AffineResult:
        raise NotImplementedError

    def _run(self, model, x, y, rand, clean_logits) -> AffineResult:
        b = x.shape[0]
        payload = {
            "beta": torch.full((b,), float("nan"), dtype=torch.float64, device=x.device),
            "p1": torch.zeros(b, *self._part1_shape(x), device=x.device, dtype=self._p1_dtype(x)),
            "p2": torch.zeros_like(x),
        }
        clean_loss = self.loss_fn(clean_logits, y)
        tracker = PayloadTracker(x, clean_loss, misclassified(clean_logits, y), payload)
        if self.draw:
            pick = rand.randint(BETA_COUNTER, 0, len(self.betas) - 1)
        for i, beta in enumerate(self.betas):
            if self.draw:
                idx = (pick == i).nonzero().squeeze(1)
            elif i == 0 or not self.shrink:
                idx = torch.arange(b, device=x.device)
            else:
                idx = (~tracker.success).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            res = self._one_beta(model, x[idx], y[idx], rand.subset(idx), beta)
            found = {"beta": torch.full_like(res.loss, beta, dtype=torch.float64)}
            found.update(p1=res.parts[0], p2=res.parts[1])
            tracker.update(res.x_adv, res.loss, res.success, index=idx, payload=found)
        pl = tracker.payload
        return AffineResult(
            tracker.x_adv, tracker.success, tracker.loss, None, pl["beta"], (pl["p1"], pl["p2"])
        )

    def _part1_shape(self, x):
        return x.shape[1:]

    def _p1_dtype(self, x):
        return x.dtype


class AffineLp(_Affine):
    """β·S1 compounded with (1−β)·S2 for two additive threats, alternating PGD steps.

    ``alpha`` (one value or one per threat) is the step at the FULL budget, scaled by β resp.
    1−β (None → each scaled threat's ``default_alpha(steps)``).
    """

    name = "affine"

    def __init__(
        self,
        threat1: ThreatModel,
        threat2: ThreatModel,
        betas: float | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        steps: int = 50,
        alpha: float | Sequence[float | None] | None = None,
        draw: bool = False,
        shrink: bool = True,
        start: str = "zero",
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        for t in (threat1, threat2):
            if not isinstance(t, AdditiveThreat):
                raise UnionRobustError(
                    f"AffineLp compounds two additive threat models, got {getattr(t, 'spec', t)}"
                )
        super().__init__(Union([threat1, threat2]), betas, draw, shrink, loss, kappa, seed, amp)
        self.steps = check_int("steps", steps, 1)
        alphas = alpha if isinstance(alpha, Sequence) else (alpha, alpha)
        if len(alphas) != 2:
            raise UnionRobustError(f"alpha needs one value or two, got {alpha!r}")
        self.alphas = tuple(None if a is None else check_positive("alpha", a) for a in alphas)
        self.start = check_start(start)

    def _one_beta(self, model, x, y, rand, beta):
        t1, t2 = self.threat.members
        scales = (beta, 1.0 - beta)
        threats = [
            t.with_size(t.size * s) if s > 0 else None
            for t, s in zip((t1, t2), scales, strict=True)
        ]
        alphas = [
            None if th is None else (th.default_alpha(self.steps) if a is None else a * s)
            for th, a, s in zip(threats, self.alphas, scales, strict=True)
        ]
        parts = [torch.zeros_like(x), torch.zeros_like(x)]
        present = [i for i in (0, 1) if threats[i] is not None]

        def base(i):  # r1 around x, r2 around x + r1
            return x if i == 0 else clip01(x, parts[0])

        if random_start(self.start, 0):
            for n, i in enumerate(present):
                parts[i] = threats[i].random_init(base(i), rand, INIT_COUNTER + n)
        none = torch.full_like(y, -torch.inf, dtype=x.dtype)
        tracker = PayloadTracker(x, none, y < 0, {"r1": parts[0], "r2": parts[1]})

        def track(x_adv, loss, succ):
            tracker.update(x_adv, loss, succ, payload={"r1": parts[0], "r2": parts[1]})

        for t in range(self.steps):
            x_adv = clip01(x, parts[0] + parts[1])
            logits, loss, grad = loss_and_grad(model, x_adv, y, self.loss_fn, self.amp)
            track(x_adv, loss, misclassified(logits, y))
            i = present[t % len(present)]
            th, b_i = threats[i], base(i)
            parts[i] = th.project(parts[i] + th.step(grad, alphas[i], parts[i], b_i, rand, t), b_i)
            if i == 0 and threats[1] is not None:  # keep x + r1 + r2 in the box
                parts[1] = threats[1].project(parts[1], clip01(x, parts[0]))
        x_adv = clip01(x, parts[0] + parts[1])
        logits = forward(model, x_adv, self.amp)
        track(x_adv, self.loss_fn(logits, y), misclassified(logits, y))
        best_parts = (tracker.payload["r1"], tracker.payload["r2"])
        return AffineResult(tracker.x_adv, tracker.success, tracker.loss, None, None, best_parts)

    def __repr__(self) -> str:
        t1, t2 = self.threat.members
        return f"AffineLp({t1!r}, {t2!r}, betas={self.betas}, steps={self.steps})"


class AffineSpatial(_Affine):
    """ℓ∞ noise with budget β·ε on top of the worst of ``k`` random rotation-translations
    from (1−β)·S_RT (Tramèr & Boneh §4). ``steps``/``alpha``/``start`` configure the ℓ∞ PGD
    run on each transformed input (``alpha`` at the full budget, scaled by β)."""

    name = "affine-spatial"
    threat_kind = ThreatModel  # an additive member and a searched one, checked below

    def __init__(
        self,
        linf: Linf,
        rt: RotationTranslation,
        betas: float | Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        k: int = 10,
        steps: int = 50,
        alpha: float | None = None,
        start: str = "random",
        draw: bool = False,
        shrink: bool = True,
        loss: str = "ce",
        kappa: float | None = None,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        if not isinstance(linf, AdditiveThreat):
            raise UnionRobustError("AffineSpatial needs an additive threat first (e.g. Linf)")
        if not isinstance(rt, RotationTranslation):
            raise UnionRobustError("AffineSpatial needs a RotationTranslation second")
        super().__init__(Union([linf, rt]), betas, draw, shrink, loss, kappa, seed, amp)
        self.k = check_int("k", k, 1)
        self.steps = check_int("steps", steps, 1)
        self.alpha = None if alpha is None else check_positive("alpha", alpha)
        self.start = check_start(start)
        self.kappa = kappa

    def _part1_shape(self, x):
        return (3,)

    def _p1_dtype(self, x):
        return torch.float64

    def _one_beta(self, model, x, y, rand: KeyedRandom, beta):
        lp, rt = self.threat.members
        rt_b = rt.scaled(1.0 - beta)
        lp_b = lp.with_size(lp.size * beta) if beta > 0 else None
        if lp_b is None:  # β = 0: exactly the worst-of-k attack on the same draws
            kw = dict(loss=self.loss_name, kappa=self.kappa, shrink=self.shrink, amp=self.amp)
            res = WorstOfK(rt_b, k=self.k, seed=self.seed, **kw)(model, x, y, rand.ids)
            parts = (res.params, torch.zeros_like(x))
            return AffineResult(res.x_adv, res.success, res.loss, None, None, parts)
        draws = 1 if rt_b is None else self.k
        clean = forward(model, x, self.amp)  # start from the clean point, as WorstOfK
        payload = {
            "params": torch.zeros(x.shape[0], 3, dtype=torch.float64, device=x.device),
            "noise": torch.zeros_like(x),
        }
        tracker = PayloadTracker(x, self.loss_fn(clean, y), misclassified(clean, y), payload)
        for j in range(draws):
            idx = (~tracker.success).nonzero().squeeze(1) if self.shrink else None
            if idx is not None and idx.numel() == 0:
                break
            if idx is None:
                idx = torch.arange(x.shape[0], device=x.device)
            xs, ys, rs = x[idx], y[idx], rand.subset(idx)
            if rt_b is None:
                theta = torch.zeros(idx.numel(), 3, dtype=torch.float64, device=x.device)
            else:
                theta = rt_b.random_params(rs, SPATIAL_DRAW_COUNTER + j)
            xt = rotate_translate(xs, theta).clamp(0.0, 1.0)
            if lp_b is not None:
                alpha = None if self.alpha is None else self.alpha * beta
                pgd = PGD(
                    lp_b,
                    steps=self.steps,
                    alpha=alpha,
                    start=self.start,
                    loss=self.loss_name,
                    kappa=self.kappa,
                    seed=self.seed,
                    amp=self.amp,
                )
                res = pgd(model, xt, ys, rs.ids)
                xa, loss, succ = res.x_adv, res.loss, res.success
            else:
                logits = forward(model, xt, self.amp)
                xa, loss, succ = xt, self.loss_fn(logits, ys), misclassified(logits, ys)
            found = {"params": theta, "noise": xa - xt}
            tracker.update(xa, loss, succ, index=idx, payload=found)
        parts = (tracker.payload["params"], tracker.payload["noise"])
        return AffineResult(tracker.x_adv, tracker.success, tracker.loss, None, None, parts)

    def __repr__(self) -> str:
        lp, rt = self.threat.members
        return f"AffineSpatial({lp!r}, {rt!r}, betas={self.betas}, k={self.k})"


def affine_attack(
    s1: ThreatModel, s2: ThreatModel, k: int = 10, **kwargs
) -> AffineLp | AffineSpatial:
    """The affine attack for ``β·s1 + (1−β)·s2``: :class:`AffineSpatial` when ``s2`` is searched
    (rotation-translation; ``k`` draws per β), :class:`AffineLp` for two additive threats."""
    if isinstance(s2, SearchedThreat):
        return AffineSpatial(s1, s2, k=k, **kwargs)
    return AffineLp(s1, s2, **kwargs)


def affine_contains(
    result: AffineResult, x: torch.Tensor, attack: AffineLp | AffineSpatial, tol: float = 1e-5
) -> torch.Tensor:
    """Bool (B,): ``result.x_adv`` decomposes as its recorded parts inside β·S1 and (1−β)·S2
    and lies in [0, 1] (rows left at the clean input count as inside)."""
    s1, s2 = attack.threat.members
    beta = result.beta.to(x.device)
    clean = torch.isnan(beta)
    b = torch.where(clean, torch.zeros_like(beta), beta)
    xa = result.x_adv
    flat = xa.reshape(x.shape[0], -1)
    ok = (flat >= -1e-6).all(1) & (flat <= 1 + 1e-6).all(1)
    p1, p2 = result.parts
    if isinstance(attack, AffineLp):
        ok &= s1.norm(p1).double() <= s1.size * b * (1 + tol) + 1e-6
        ok &= s2.norm(p2).double() <= s2.size * (1 - b) * (1 + tol) + 1e-6
        ok &= ((x + p1 + p2).clamp(0, 1) - xa).abs().reshape(x.shape[0], -1).amax(1) <= 1e-5
    else:
        ok &= (p1[:, 0].abs() <= s2.max_rot * (1 - b) + 1e-6) & (
            p1[:, 1:].abs() <= s2.max_trans * (1 - b).unsqueeze(1) + 1e-6
        ).all(1)
        ok &= s1.norm(p2).double() <= s1.size * b * (1 + tol) + 1e-6
        xt = rotate_translate(x, p1).clamp(0, 1)
        ok &= ((xt + p2) - xa).abs().reshape(x.shape[0], -1).amax(1) <= 1e-5
    unchanged = (xa == x).reshape(x.shape[0], -1).all(1)
    return ok | (clean & unchanged)
