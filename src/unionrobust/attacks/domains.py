"""Domains of the min-max attack (Wang et al. 2020 §2.2): how one perturbation per row becomes
K attack losses, and the set it lives in.

* :class:`ModelEnsemble` — K models, one δ per input (eq. 5).
* :class:`UniversalGroups` — one model, groups of K consecutive inputs sharing one δ (eq. 6).
  Each perturbed input is clipped to [0,1] (x_i + δ ∉ [0,1] for all i at once would pin δ to 0
  wherever two inputs differ), so δ lives in the ball ∩ [−1,1] (:class:`PerturbationSpace`).
* :class:`TransformDomains` — one model, K transformations t_i of x + δ (eq. 7), fixed or random
  (a fresh keyed draw per step: EOT).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unionrobust.attacks.base import (
    autocast_for,
    input_grad,
    loss_and_grad,
    misclassified,
    upcast,
)
from unionrobust.attacks.pgd import clip01
from unionrobust.attacks.transforms import Transform, make_transforms
from unionrobust.errors import UnionRobustError, check_int
from unionrobust.rng import TRANSFORM_COUNTER, KeyedRandom
from unionrobust.threats import L0, ThreatModel


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
                    logits = upcast(m(x_adv))
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
            logits = upcast(logits)
            loss = loss_fn(logits, y)
            g = input_grad(loss, leaf) if grad else None
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
