"""Thin adapters running torchattacks / Foolbox attacks behind the :class:`Attack` contract.

These are the optional extra ``peers`` (``pip install 'unionrobust[peers]'`` for Foolbox, then
``pip install --no-deps 'torchattacks>=3.5'``: its declared torchvision would replace a CPU torch,
and it never imports it); building an
adapter without its package raises a one-line :class:`UnionRobustError` naming the extra.

A peer's output is only a *candidate*: non-finite entries are replaced by the clean value, it is
clipped to [0, 1], its prediction recomputed, and it is then handled exactly like our native
minimum-norm attacks (:mod:`unionrobust.attacks.minnorm`): the result holds the smallest breaking
input found and its norm, and the threat-bound ``x_adv`` is that input if it lies in ball ∩ box,
else its projection onto ball ∩ box if that still breaks the model, else ``x`` (Tramèr & Boneh
2019 §4: perturbations of unbounded attacks outside the ℓp ball are discarded). The evaluation
engine re-checks it again like every attack's output.

Peers draw randomness from torch's global generator: the adapter seeds it with ``seed`` inside a
forked RNG state (the caller's generator is left untouched), so the same seed and batch give the
same result — but unlike native attacks an example's result may depend on its batch.

Registered names: ``ta-ead`` (EAD, ℓ1 decision rule; Chen et al. 2018), ``ta-cw`` (C&W ℓ2),
``ta-fab`` (FAB, ℓ∞/ℓ2), ``ta-square`` (Square, ℓ∞/ℓ2), ``fb-boundary`` (Boundary attack,
ℓ2; Brendel et al. 2018), ``fb-hsj`` (HopSkipJump / Boundary attack++, ℓ∞/ℓ2; Chen & Jordan 2019),
``fb-pointwise`` (Pointwise, ℓ0/ℓ1/ℓ2; Schott et al. 2019).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.base import forward, misclassified
from unionrobust.attacks.blackbox import salt_pepper_search
from unionrobust.attacks.minnorm import MinNormAttack, MinNormTracker
from unionrobust.errors import UnionRobustError, check_int, check_positive
from unionrobust.rng import KeyedRandom
from unionrobust.threats import L2, ThreatModel

#: how the peers are installed without touching torch (torchattacks declares, but never imports,
#: an unpinned torchvision whose newest release pulls another torch)
INSTALL = {
    "foolbox": "pip install 'unionrobust[peers]'",
    "torchattacks": "pip install 'unionrobust[peers]' && pip install --no-deps 'torchattacks>=3.5'",
}


def require(package: str, who: str) -> ModuleType:
    """Import ``package`` or raise a one-line error naming the optional extra."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UnionRobustError(
            f"attack {who!r} needs the optional package {package!r}: "
            f"{INSTALL.get(package, INSTALL['foolbox'])}"
        ) from None


class PeerAttack(MinNormAttack):
    """Base class: ``_peer(model, x, y, classes)`` returns the library's adversarial inputs."""

    package = "torchattacks"

    def __init__(
        self, threat: ThreatModel | str, refine_steps: int = 10, seed: int = 0, amp: bool = False
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.lib = require(self.package, self.name)

    def _peer(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
    ) -> Any:
        raise NotImplementedError

    def _search(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        rand: KeyedRandom,
        clean_logits: torch.Tensor,
        tracker: MinNormTracker,
    ) -> None:
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(self.seed)
            out = self._peer(model, x, y, rand, clean_logits)
        xa = torch.as_tensor(out).detach().to(device=x.device, dtype=x.dtype)
        if xa.shape != x.shape:
            raise UnionRobustError(
                f"{self.name}: the peer returned shape {tuple(xa.shape)}, expected {tuple(x.shape)}"
            )
        xa = torch.where(torch.isfinite(xa), xa, x).clamp(0.0, 1.0)
        tracker.update(xa, misclassified(forward(model, xa, self.amp), y))


class TAEAD(PeerAttack):
    """torchattacks ``EADL1`` (Chen et al. 2018, elastic-net, ℓ1 decision rule), ℓ1."""

    name = "ta-ead"
    norms_supported = ("l1",)

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 100,
        binary_search_steps: int = 9,
        beta: float = 1e-3,
        lr: float = 0.01,
        initial_const: float = 1e-3,
        kappa: float = 0.0,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.kw = dict(
            max_iterations=check_int("steps", steps, 1),
            binary_search_steps=check_int("binary_search_steps", binary_search_steps, 1),
            beta=check_positive("beta", beta),
            lr=check_positive("lr", lr),
            initial_const=check_positive("initial_const", initial_const),
            kappa=float(kappa),
        )

    def _peer(self, model, x, y, rand, clean_logits):
        return self.lib.EADL1(model, **self.kw)(x, y)


class TACW(PeerAttack):
    """torchattacks ``CW`` (Carlini & Wagner 2017, ℓ2; one constant ``c``, no binary search).

    With the paper's κ = 0 the iterate approaches the boundary from the clean side and often
    stops just short of it (on a linear model it never crosses); our default κ = 1 (logits)
    crosses it, and the adapter's line search towards x then removes the excess margin."""

    name = "ta-cw"
    norms_supported = ("l2",)

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 100,
        c: float = 1.0,
        kappa: float = 1.0,
        lr: float = 0.01,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.kw = dict(
            steps=check_int("steps", steps, 1),
            c=check_positive("c", c),
            kappa=float(kappa),
            lr=check_positive("lr", lr),
        )

    def _peer(self, model, x, y, rand, clean_logits):
        return self.lib.CW(model, **self.kw)(x, y)


_TA_NORMS = {"linf": "Linf", "l2": "L2"}


class TAFAB(PeerAttack):
    """torchattacks ``FAB`` (Croce & Hein 2020), ℓ∞/ℓ2, at the threat's radius (torchattacks
    3.5's FAB fails on ℓ1: use the native ``fab``)."""

    name = "ta-fab"
    norms_supported = ("linf", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 20,
        restarts: int = 1,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)

    def _peer(self, model, x, y, rand, clean_logits):
        return self.lib.FAB(
            model,
            norm=_TA_NORMS[self.threat.name],
            eps=self.threat.size,
            steps=self.steps,
            n_restarts=self.restarts,
            seed=self.seed,
            n_classes=clean_logits.shape[1],
        )(x, y)


class TASquare(PeerAttack):
    """torchattacks ``Square`` (Andriushchenko et al. 2020), ℓ∞/ℓ2, at the threat's radius."""

    name = "ta-square"
    norms_supported = ("linf", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 1000,
        restarts: int = 1,
        p_init: float = 0.8,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=0, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.restarts = check_int("restarts", restarts, 1)
        self.p_init = check_positive("p_init", p_init)

    def _peer(self, model, x, y, rand, clean_logits):
        return self.lib.Square(
            model,
            norm=_TA_NORMS[self.threat.name],
            eps=self.threat.size,
            n_queries=self.steps,
            n_restarts=self.restarts,
            p_init=self.p_init,
            seed=self.seed,
        )(x, y)


class FoolboxAttack(PeerAttack):
    """Base for Foolbox 3 minimisation attacks (run with ``epsilons=None``: unbounded), started
    from our salt-and-pepper points (:func:`starting_points`) on the clean-correct inputs that
    have one (Foolbox's own initialisation aborts the batch when it fails for any input)."""

    package = "foolbox"

    def _make(self) -> Any:
        raise NotImplementedError

    def _peer(self, model, x, y, rand, clean_logits):
        idx, start = starting_points(model, x, y, rand, clean_logits, self.amp)
        out = x.clone()
        if idx.numel() > 0:
            fmodel = self.lib.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
            raw, _, _ = self._make()(fmodel, x[idx], y[idx], epsilons=None, starting_points=start)
            out[idx] = raw.to(x.dtype)
        return out


def starting_points(model, x, y, rand, clean_logits, amp=False):
    """Misclassified starting points for decision-based peers from our own salt-and-pepper
    search (density up to 1): (index of the clean-correct points that have one, the points).
    Foolbox's own initialisation raises when it fails for any input."""
    tracker = MinNormTracker(x, L2(1.0), misclassified(clean_logits, y))
    salt_pepper_search(model, x, y, rand, tracker, steps=20, repeats=3, max_p=1.0, amp=amp)
    idx = (tracker.found & ~misclassified(clean_logits, y)).nonzero().squeeze(1)
    return idx, tracker.best[idx]


class FBBoundary(FoolboxAttack):
    """Foolbox ``BoundaryAttack`` (Brendel et al. 2018), ℓ2. Foolbox's default is 25 000 steps;
    ours is 5 000 (raise it for a final evaluation)."""

    name = "fb-boundary"
    norms_supported = ("l2",)

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 5000,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)

    def _make(self):
        return self.lib.attacks.BoundaryAttack(steps=self.steps)


class FBHopSkipJump(FoolboxAttack):
    """Foolbox ``HopSkipJumpAttack`` (Chen & Jordan 2019, "Boundary Attack++"; Tramèr & Boneh
    §4 use it for ℓ∞), ℓ∞/ℓ2. Foolbox's defaults are 64 steps and up to 10 000 gradient
    estimates per step; ours are 32 and 1 000 (raise them for a final evaluation)."""

    name = "fb-hsj"
    norms_supported = ("linf", "l2")

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 32,
        max_gradient_evals: int = 1000,
        refine_steps: int = 10,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.max_gradient_evals = check_int("max_gradient_evals", max_gradient_evals, 1)

    def _make(self):
        return self.lib.attacks.HopSkipJumpAttack(
            steps=self.steps,
            initial_gradient_eval_steps=min(100, self.max_gradient_evals),
            max_gradient_eval_steps=self.max_gradient_evals,
            constraint=self.threat.name,
        )


class FBPointwise(FoolboxAttack):
    """Foolbox ``PointwiseAttack`` (Schott et al. 2019), ℓ0/ℓ1/ℓ2."""

    name = "fb-pointwise"
    norms_supported = ("l0", "l1", "l2")

    def __init__(self, threat: ThreatModel | str, seed: int = 0, amp: bool = False) -> None:
        super().__init__(threat, refine_steps=0, seed=seed, amp=amp)

    def _make(self):
        return self.lib.attacks.PointwiseAttack()


__all__ = ["TACW", "TAEAD", "TAFAB", "FBBoundary", "FBPointwise", "PeerAttack", "TASquare"]
