"""Min-max attacks over K domains: Wang et al. (2020) Algorithm 1 ("APGD" in the paper; here
``DomainMinMax``, registry name ``"minmax-domains"``, not to be confused with Auto-PGD).

Problem (4)/(12): per row r,  min_{δ ∈ X} max_{w ∈ P}  Σ_i w_i F_i(δ) − γ/2‖w − 1/K‖², where
Wang's F_i is an attack loss to MINIMISE (C&W: max(z_y − max_{j≠y} z_j, −κ)). The library's
losses ℓ_i (CE, ``cw_margin``) are maximised, so F_i = −ℓ_i: the weights move to the domain with
the LOWEST attack loss, the one hardest to fool. Each iteration t (Algorithm 1):

    δ^t = Proj_X(δ^{t-1} + v(Σ_i w_i^{t-1} ∇ℓ_i(δ^{t-1})))                       (eq. 13)
    w^t = Proj_P(w^{t-1} + β(−ℓ(δ^t) − γ(w^{t-1} − 1/K)))                       (eq. 14)

Reading: eq. 13 writes a raw gradient step; we take the threat model's steepest-ascent step v of
size α (sign for ℓ∞, normalised for ℓ2, sparse for ℓ1) with its exact ball ∩ [0,1] projection,
as every PGD of the library, so that one domain gives exactly :class:`~unionrobust.attacks.PGD`.
The simplex projection is exact (sorting) instead of bisection. ``F(δ^t)`` comes from the same
forward/backward as the next δ step (per-domain gradients are kept, so re-weighting needs no
extra pass): one forward+backward per iteration for each model (models), or over K·B inputs.

Domains (:class:`Domains`):

* :class:`ModelEnsemble` — K models, one δ per input (eq. 5). Success = every model fooled
  (ASR_all); ASR_avg = mean over models.
* :class:`UniversalGroups` — one model, groups of K consecutive inputs sharing one δ (eq. 6).
  ASR_gp = every input of the group fooled; ASR_avg over inputs. Each perturbed input is clipped
  to [0,1] (x_i + δ ∉ [0,1] for all i at once would pin δ to 0 wherever two inputs differ), so δ
  lives in the ball ∩ [−1,1]; the clipped perturbation of each input is inside the ball too.
* :class:`TransformDomains` — one model, K transformations t_i of x + δ (eq. 7), fixed or random
  (a fresh keyed draw per step: EOT). ASR_gp = fooled under every transformation.

Weights: ``"minmax"`` (learned, eq. 14), ``"uniform"`` (fixed 1/K: ensemble PGD, Liu et al.; EOT,
Athalye et al.; the averaging baseline) or K fixed user weights (normalised to sum 1). The best
iterate per row is kept: most domains fooled first, then the highest mean loss. The weight
trajectory (T+1, rows, K) and the per-iteration fooled fraction of each domain are recorded;
:func:`plot_weights` draws them (Wang Fig. 1c / 3a).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from unionrobust.atomic import atomic_savefig
from unionrobust.attacks.base import autocast_for, frozen_model, loss_and_grad, misclassified
from unionrobust.attacks.pgd import (
    INIT_COUNTER,
    check_start,
    clip01,
    random_start,
    single_threat,
)
from unionrobust.attacks.transforms import Transform, make_transforms
from unionrobust.errors import (
    UnionRobustError,
    check_images,
    check_int,
    check_labels,
    check_logits,
    check_positive,
)
from unionrobust.geometry import project_simplex
from unionrobust.losses import LossFn, get_loss
from unionrobust.rng import KeyedRandom
from unionrobust.threats import L0, ThreatModel, Union

#: counters of transformation draws (apart from step and init counters)
TRANSFORM_COUNTER = 1 << 28


# --------------------------------------------------------------------------- domains


class Domains:
    """K domains: how a perturbation (one per row) becomes K attack losses.

    ``rows(x)``: the number of perturbation rows; ``space(threat, x)``: the
    :class:`PerturbationSpace` the perturbations live in; ``evaluate(delta, x, y, loss_fn,
    rand, counter, grad)`` → (losses (R, K), fooled (R, K), per-domain gradients (K, R, ...) or
    None);
    ``adversarial(delta, x)``: the perturbed inputs (B, ...).
    """

    kind = "domains"
    labels: list[str]

    @property
    def k(self) -> int:
        return len(self.labels)

    def models(self) -> list[nn.Module]:
        raise NotImplementedError

    def rows(self, x: torch.Tensor) -> int:
        return x.shape[0]

    def row_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def space(self, threat: ThreatModel, x: torch.Tensor) -> PerturbationSpace:
        return PerturbationSpace(threat, x, 1.0)

    def adversarial(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return clip01(x, delta)

    def evaluate(self, delta, x, y, loss_fn, rand, counter, grad, amp=False):
        raise NotImplementedError


class ModelEnsemble(Domains):
    """Domains = models (Wang et al. eq. 5): fool all K models with one δ per input."""

    kind = "models"

    def __init__(self, models: Sequence[nn.Module], labels: Sequence[str] | None = None) -> None:
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise UnionRobustError("an ensemble needs a non-empty list of torch.nn.Module models")
        self._models = models
        self.labels = list(labels) if labels is not None else [f"M{i}" for i in range(len(models))]
        if len(self.labels) != len(models):
            raise UnionRobustError(f"need {len(models)} model labels, got {len(self.labels)}")

    def models(self):
        return self._models

    def evaluate(self, delta, x, y, loss_fn, rand, counter, grad, amp=False):
        x_adv = clip01(x, delta)
        losses, fooled, grads = [], [], []
        for m in self._models:
            if grad:
                logits, loss, g = loss_and_grad(m, x_adv, y, loss_fn, amp)
                grads.append(g)
            else:
                with torch.no_grad(), autocast_for(x_adv, amp):
                    logits = m(x_adv).float()
                loss = loss_fn(logits, y)
            losses.append(loss)
            fooled.append(misclassified(logits, y))
        g = torch.stack(grads) if grad else None
        return torch.stack(losses, dim=1), torch.stack(fooled, dim=1), g


class _SingleModel(Domains):
    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise UnionRobustError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model

    def models(self):
        return [self.model]

    def _forward(self, inputs, y, loss_fn, grad, amp, make=None):
        """Loss, fooled and d loss / d inputs for a flat batch; ``make`` maps the leaf to the
        model input (transformations)."""
        leaf = inputs.detach().requires_grad_(grad)
        with torch.enable_grad() if grad else torch.no_grad():
            z = make(leaf) if make is not None else leaf
            with autocast_for(z, amp):
                logits = self.model(z)
            logits = logits.float()
            loss = loss_fn(logits, y)
            g = torch.autograd.grad(loss.sum(), leaf)[0] if grad else None
        return loss.detach(), misclassified(logits.detach(), y), g


class UniversalGroups(_SingleModel):
    """Domains = the K inputs of a group sharing one perturbation (Wang et al. eq. 6). The batch
    is split into consecutive groups of ``group_size`` inputs (its size must be a multiple)."""

    kind = "inputs"

    def __init__(self, model: nn.Module, group_size: int) -> None:
        super().__init__(model)
        self.group = check_int("group_size", group_size, 1)
        self.labels = [f"x{i}" for i in range(self.group)]

    def rows(self, x):
        if x.shape[0] % self.group:
            raise UnionRobustError(
                f"universal attack: batch of {x.shape[0]} is not a multiple of the group size "
                f"{self.group}"
            )
        return x.shape[0] // self.group

    def row_ids(self, ids):
        return ids[:: self.group]

    def space(self, threat, x):
        return PerturbationSpace(threat, torch.full_like(x[:: self.group], 0.5), 2.0)

    def adversarial(self, delta, x):
        k = self.group
        xg = x.reshape(-1, k, *x.shape[1:])
        return (xg + delta.unsqueeze(1)).clamp(0.0, 1.0).reshape(x.shape)

    def evaluate(self, delta, x, y, loss_fn, rand, counter, grad, amp=False):
        k, r = self.group, delta.shape[0]
        loss, fooled, g = self._forward(self.adversarial(delta, x), y, loss_fn, grad, amp)
        if g is not None:
            g = g.reshape(r, k, *x.shape[1:]).transpose(0, 1)
        return loss.reshape(r, k), fooled.reshape(r, k), g


class TransformDomains(_SingleModel):
    """Domains = transformations of x + δ (Wang et al. eq. 7); random ones draw afresh at every
    step and at the final scoring (EOT). With random transformations the returned ``fooled``
    is under the draws of the returned iterate; score the result again (fresh draws) for an
    unbiased success rate."""

    kind = "transforms"

    def __init__(self, model: nn.Module, transforms: Sequence[Transform] | str) -> None:
        super().__init__(model)
        ts = make_transforms(transforms) if isinstance(transforms, str) else list(transforms)
        if not ts or not all(isinstance(t, Transform) for t in ts):
            raise UnionRobustError("need a non-empty list of Transform objects")
        self.transforms = ts
        self.labels = [t.name for t in ts]

    def evaluate(self, delta, x, y, loss_fn, rand, counter, grad, amp=False):
        k, b = self.k, x.shape[0]
        base = TRANSFORM_COUNTER + counter * k

        def make(leaf):
            parts = leaf.split(b)
            return torch.cat(
                [
                    t(p, rand, base + i)
                    for i, (t, p) in enumerate(zip(self.transforms, parts, strict=True))
                ]
            )

        inputs = clip01(x, delta).repeat(k, *([1] * (x.dim() - 1)))
        loss, fooled, g = self._forward(inputs, y.repeat(k), loss_fn, grad, amp, make)
        if g is not None:
            g = g.reshape(k, b, *x.shape[1:])
        return loss.reshape(k, b).T, fooled.reshape(k, b).T, g


class PerturbationSpace:
    """Where a perturbation lives: ``threat`` scaled by 1/``scale`` around ``base``.

    Per-input domains use (threat, x, 1): the ball ∩ [0,1] box of the core. The universal domain
    uses ball ∩ [−1, 1] = 2·{u : ‖u‖ ≤ ε/2, 0.5 + u ∈ [0, 1]}, so the core's exact projection
    P_{sC}(v) = s·P_C(v/s) serves it (ℓ0 counts coordinates: its k is not scaled).
    """

    def __init__(self, threat: ThreatModel, base: torch.Tensor, scale: float) -> None:
        self.base, self.scale = base, scale
        if scale == 1.0 or isinstance(threat, L0):
            self.threat = threat
        else:
            self.threat = threat.with_size(threat.size / scale)

    def init(self, rand: KeyedRandom, counter: int) -> torch.Tensor:
        return self.scale * self.threat.random_init(self.base, rand, counter)

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        s = self.scale
        return (
            s * self.threat.project(delta / s, self.base)
            if s != 1.0
            else self.threat.project(delta, self.base)
        )

    def step(self, delta, grad, alpha, rand, counter):
        s, t = self.scale, self.threat
        u = delta / s if s != 1.0 else delta
        u = t.project(u + t.step(grad * s, alpha / s, u, self.base, rand, counter), self.base)
        return u * s if s != 1.0 else u


# --------------------------------------------------------------------------- the attack


@dataclass
class MinMaxResult:
    """Outcome of a min-max domain attack.

    ``x_adv`` (B, ...) perturbed inputs (before any transformation); ``delta`` (R, ...) one
    perturbation per row (R = B, or the number of groups); ``fooled``/``loss`` (R, K) per domain
    at the best iterate; ``weights`` (R, K) final domain weights; ``trajectory`` (T+1, R, K) the
    weights per iteration; ``fooled_history`` (T+1, K) fraction of rows fooled per domain at each
    iterate; ``labels`` the domain names.
    """

    x_adv: torch.Tensor
    delta: torch.Tensor
    fooled: torch.Tensor
    loss: torch.Tensor
    weights: torch.Tensor
    trajectory: torch.Tensor
    fooled_history: torch.Tensor
    labels: list[str]
    kind: str = "domains"
    extra: dict = field(default_factory=dict)

    @property
    def success(self) -> torch.Tensor:
        """(R,) every domain fooled."""
        return self.fooled.all(dim=1)

    def metrics(self) -> dict[str, float]:
        """ASR_all (models) or ASR_gp (inputs, transforms), ASR_avg and per-domain ASR, in %."""
        f = self.fooled.double()
        key = "asr_all" if self.kind == "models" else "asr_gp"
        out = {key: 100 * float(self.success.double().mean()), "asr_avg": 100 * float(f.mean())}
        for lab, v in zip(self.labels, f.mean(dim=0).tolist(), strict=True):
            out[f"asr_{lab}"] = 100 * v
        return out


WEIGHTINGS = ("minmax", "uniform")


class DomainMinMax:
    """Wang et al. Algorithm 1 over ``domains`` (see the module docstring).

    ``threat``: any additive threat model of the core (one member). ``alpha`` None → the
    threat's ``default_alpha(steps)``; ``w_lr`` = β, ``gamma`` = γ of eq. 14 (defaults β = 1/50,
    γ = 4 from Wang et al. App. C.2 / Table 2); ``weights`` ``"minmax"``, ``"uniform"`` or K
    numbers; ``loss`` ``"cw"`` (κ = ``kappa``, 50 in App. C.2) or ``"ce"``; ``start`` ``"zero"``
    or ``"random"``. The models are frozen (eval mode, no parameter grads) and restored after.
    """

    name = "minmax-domains"

    def __init__(
        self,
        threat: ThreatModel | Union,
        steps: int = 50,
        alpha: float | None = None,
        w_lr: float = 1 / 50,
        gamma: float = 4.0,
        weights: str | Sequence[float] = "minmax",
        loss: str = "cw",
        kappa: float | None = 50.0,
        start: str = "zero",
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        self.threat = single_threat(threat, "DomainMinMax")
        self.steps = check_int("steps", steps, 1)
        self.alpha = (
            self.threat.default_alpha(self.steps)
            if alpha is None
            else check_positive("alpha", alpha)
        )
        try:
            self.w_lr, self.gamma = float(w_lr), float(gamma)
        except (TypeError, ValueError):
            raise UnionRobustError("w_lr and gamma must be numbers") from None
        if not (self.w_lr >= 0 and self.gamma >= 0) or float("inf") in (self.w_lr, self.gamma):
            raise UnionRobustError(f"need finite w_lr >= 0, gamma >= 0; got {w_lr}, {gamma}")
        if isinstance(weights, str):
            if weights not in WEIGHTINGS:
                raise UnionRobustError(
                    f"weights must be one of {', '.join(WEIGHTINGS)} or a list of numbers, "
                    f"got {weights!r}"
                )
            self.fixed = None
        else:
            w = torch.as_tensor([float(v) for v in weights], dtype=torch.float64)
            if w.numel() == 0 or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise UnionRobustError(f"fixed weights must be >= 0 and not all 0, got {weights}")
            self.fixed = w / w.sum()
        self.weighting = weights if isinstance(weights, str) else "fixed"
        self.loss_name = loss
        self.loss_fn: LossFn = get_loss(loss, kappa if loss == "cw" else None)
        self.start = check_start(start)
        self.seed = int(seed)
        self.amp = bool(amp)

    def __repr__(self) -> str:
        return (
            f"DomainMinMax({self.threat!r}, steps={self.steps}, alpha={self.alpha:g}, "
            f"w_lr={self.w_lr:g}, gamma={self.gamma:g}, weights={self.weighting!r}, "
            f"loss={self.loss_name!r})"
        )

    def _initial_weights(self, r: int, k: int, like: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            if self.fixed.numel() != k:
                raise UnionRobustError(f"got {self.fixed.numel()} fixed weights for {k} domains")
            return self.fixed.to(like.device, like.dtype).expand(r, k).clone()
        return torch.full((r, k), 1.0 / k, device=like.device, dtype=like.dtype)

    def __call__(
        self,
        domains: Domains,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None = None,
    ) -> MinMaxResult:
        if not isinstance(domains, Domains):
            raise UnionRobustError(
                f"domains must be a Domains object, got {type(domains).__name__}"
            )
        check_images(x)
        check_labels(y, x.shape[0])
        y = y.to(device=x.device, dtype=torch.int64)
        x = x.detach()
        ids = (
            torch.arange(x.shape[0], device=x.device)
            if example_ids is None
            else example_ids.to(x.device, torch.int64)
        )
        if ids.shape != (x.shape[0],):
            raise UnionRobustError(f"example_ids must have shape ({x.shape[0]},)")
        r = domains.rows(x)
        rand = KeyedRandom(self.seed, domains.row_ids(ids))
        with contextlib.ExitStack() as stack:
            for m in domains.models():
                stack.enter_context(frozen_model(m))
            with torch.no_grad():
                for m in domains.models():
                    check_labels(y, x.shape[0], check_logits(m(x[:1]), 1))
            return self._run(domains, x, y, rand, r)

    def _run(self, domains: Domains, x, y, rand: KeyedRandom, r: int) -> MinMaxResult:
        k = domains.k
        space = domains.space(self.threat, x)
        delta0 = torch.zeros_like(space.base)
        delta = space.init(rand, INIT_COUNTER) if random_start(self.start, 0) else delta0
        w = self._initial_weights(r, k, x)
        learn = self.fixed is None and self.weighting == "minmax"
        uniform = 1.0 / k

        def ev(d, t, grad):
            return domains.evaluate(d, x, y, self.loss_fn, rand, t, grad, self.amp)

        # best iterate: most domains fooled, then highest mean loss; starts at δ = 0
        f0, fooled0, _ = ev(delta0, self.steps + 1, False)
        best = [delta0.clone(), fooled0, f0]
        best_key = (fooled0.sum(dim=1), f0.mean(dim=1))

        def track(d, f, fooled):
            n, m = fooled.sum(dim=1), f.mean(dim=1)
            better = (n > best_key[0]) | ((n == best_key[0]) & (m > best_key[1]))
            shape = (-1,) + (1,) * (d.dim() - 1)
            best[0] = torch.where(better.reshape(shape), d, best[0])
            best[1] = torch.where(better.reshape(-1, 1), fooled, best[1])
            best[2] = torch.where(better.reshape(-1, 1), f, best[2])
            best_key[0].copy_(torch.where(better, n, best_key[0]))
            best_key[1].copy_(torch.where(better, m, best_key[1]))

        traj, hist = [], []
        for t in range(self.steps):
            f, fooled, grads = ev(delta, t, True)
            track(delta, f, fooled)
            hist.append(fooled.float().mean(dim=0))
            if learn and t > 0:  # eq. 14 with F = −ℓ(δ^t); w^0 is given
                w = project_simplex(w - self.w_lr * (f.to(w.dtype) + self.gamma * (w - uniform)))
            traj.append(w)
            g = (w.T.reshape(k, r, *([1] * (grads.dim() - 2))) * grads).sum(dim=0)
            delta = space.step(delta, g, self.alpha, rand, t)
        f, fooled, _ = ev(delta, self.steps, False)
        track(delta, f, fooled)
        hist.append(fooled.float().mean(dim=0))
        if learn:
            w = project_simplex(w - self.w_lr * (f.to(w.dtype) + self.gamma * (w - uniform)))
        traj.append(w)
        return MinMaxResult(
            x_adv=domains.adversarial(best[0], x),
            delta=best[0],
            fooled=best[1],
            loss=best[2],
            weights=w,
            trajectory=torch.stack(traj),
            fooled_history=torch.stack(hist),
            labels=list(domains.labels),
            kind=domains.kind,
        )


# --------------------------------------------------------------------------- conveniences


def ensemble_attack(models, x, y, threat, example_ids=None, **kwargs) -> MinMaxResult:
    """Min-max (or ``weights="uniform"``: ensemble PGD) attack fooling all ``models``."""
    return DomainMinMax(threat, **kwargs)(ModelEnsemble(models), x, y, example_ids)


def universal_attack(model, x, y, threat, group_size, example_ids=None, **kwargs):
    """One perturbation per group of ``group_size`` consecutive inputs."""
    return DomainMinMax(threat, **kwargs)(UniversalGroups(model, group_size), x, y, example_ids)


def transform_attack(model, x, y, threat, transforms="ori, flh, flv, bri, gam, crop", **kwargs):
    """A perturbation that survives the ``transforms`` (EOT with ``weights="uniform"``)."""
    example_ids = kwargs.pop("example_ids", None)
    return DomainMinMax(threat, **kwargs)(TransformDomains(model, transforms), x, y, example_ids)


def plot_weights(result: MinMaxResult, path: str | os.PathLike, title: str = "") -> None:
    """Two panels: per-domain weights over iterations (median and 25-75 % band over rows, as
    Wang Fig. 1c / 3a) and the per-iteration fraction of rows fooled per domain (Fig. 1a-b).
    Written atomically (temp file + rename). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnionRobustError("plotting needs matplotlib: pip install matplotlib") from None
    traj = result.trajectory.detach().double().cpu()  # (T+1, R, K)
    hist = result.fooled_history.detach().double().cpu()
    its = list(range(traj.shape[0]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    q = torch.quantile(traj, torch.tensor([0.25, 0.5, 0.75], dtype=traj.dtype), dim=1)
    for i, lab in enumerate(result.labels):
        (line,) = a.plot(its, q[1, :, i], label=lab)
        a.fill_between(its, q[0, :, i], q[2, :, i], alpha=0.2, color=line.get_color())
        b.plot(its, 100 * hist[:, i], label=lab, color=line.get_color())
    a.set_xlabel("iteration")
    a.set_ylabel("domain weight w (median, 25-75%)")
    b.set_xlabel("iteration")
    b.set_ylabel("fooled (%)")
    a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
