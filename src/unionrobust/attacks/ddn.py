""":class:`DDN` (Rony et al. 2019, Alg. 1), ℓ2: a normalised gradient step on the CE loss, then
  the perturbation is rescaled to a norm ε_k that shrinks by (1 − γ) while the iterate is
  adversarial and grows by (1 + γ) while it is not. Alg. 1 uses a constant step α; the authors'
  implementation anneals it (cosine, α → α/100), which we follow by default (``anneal=True``).

Shared machinery (tracker, line search, threat-bound result) in :mod:`unionrobust.attacks.minnorm`.
"""

from __future__ import annotations

import math

import torch

from unionrobust.attacks.base import forward, loss_and_grad, misclassified
from unionrobust.attacks.minnorm import MinNormAttack
from unionrobust.errors import (
    check_fraction,
    check_int,
    check_positive,
)
from unionrobust.geometry.batch import flat as _flat
from unionrobust.losses import cross_entropy
from unionrobust.threats import ThreatModel


# --------------------------------------------------------------------------- DDN
class DDN(MinNormAttack):
    """Decoupled direction and norm (Rony et al. 2019, Alg. 1), ℓ2; see the module doc.

    ``steps`` forward+backward passes; ``gamma`` γ = 0.05, ``init_norm`` ε₀ = 1 and ``alpha``
    α = 1 as in the paper. The norm never exceeds the largest ℓ2 distance the box allows.
    ε can shrink only by (1 − γ) per step, so a point whose minimum norm is far below
    ε₀(1 − γ)^steps ends far outside it; ``refine_steps`` = 16 bisection forwards (2⁻¹⁶ of the
    found norm, against 2⁻¹⁰ for the other attacks) bring it back to the boundary.
    """

    name = "ddn"
    norms_supported = ("l2",)

    def __init__(
        self,
        threat: ThreatModel | str,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        alpha: float = 1.0,
        anneal: bool = True,
        refine_steps: int = 16,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        super().__init__(threat, refine_steps=refine_steps, seed=seed, amp=amp)
        self.steps = check_int("steps", steps, 1)
        self.gamma = check_fraction("gamma", gamma, one=False)
        self.init_norm = check_positive("init_norm", init_norm)
        self.alpha = check_positive("alpha", alpha)
        self.anneal = bool(anneal)

    def _search(self, model, x, y, rand, clean_logits, tracker) -> None:
        b = x.shape[0]
        delta = torch.zeros_like(x)
        eps = torch.full((b,), self.init_norm, dtype=x.dtype, device=x.device)
        worst = _flat(torch.maximum(x, 1 - x)).norm(dim=1)
        for k in range(self.steps):
            alpha = self.alpha
            if self.anneal:
                alpha = (
                    0.01 * self.alpha
                    + 0.99 * self.alpha * (1 + math.cos(math.pi * k / self.steps)) / 2
                )
            x_k = (x + delta).clamp(0.0, 1.0)
            logits, _, grad = loss_and_grad(model, x_k, y, cross_entropy, self.amp)
            broken = misclassified(logits, y)
            tracker.update(x_k, broken)
            g = _flat(grad)
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            d = _flat(delta) + alpha * g
            eps = torch.where(broken, eps * (1 - self.gamma), eps * (1 + self.gamma))
            eps = torch.minimum(eps, worst)
            d = d * (eps / d.norm(dim=1).clamp_min(1e-12)).reshape(-1, 1)
            delta = (x + d.reshape(x.shape)).clamp(0.0, 1.0) - x
        x_k = (x + delta).clamp(0.0, 1.0)
        tracker.update(x_k, misclassified(forward(model, x_k, self.amp), y))
