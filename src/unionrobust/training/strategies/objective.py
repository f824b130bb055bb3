"""Training objectives shared by every adversarial strategy: CE, TRADES and TRADES-XENT.

Per example, with clean input x and the adversarial inputs x_1..x_K that enter the loss with
weights ω_k (Σ ω_k = 1: one-hot for MAX/SAT/E-AT/MSD/single, 1/K for AVG, the domain weights w
for min-max):

* ``"ce"`` (Madry et al. 2018): (1 − mix)·CE(f(x), y) + mix·Σ ω_k CE(f(x_k), y); ``mix`` = 1 is
  plain adversarial training, ``mix`` = 0.5 the clean/adversarial ratio of Wang et al. App. C.2.
* ``"trades"`` (Zhang et al. 2019): CE(f(x), y) + β·Σ ω_k KL(f(x) ‖ f(x_k)), the x_k maximising
  that KL (the attacks run with the KL loss against the clean prediction, computed in eval mode;
  they start from a random point of the ball rather than TRADES' x + 0.001·N(0, I), and like
  every attack here return the best iterate, a misclassified one first).
* ``"trades-xent"`` (Gowal et al. 2020, used by Croce & Hein App. A): the same TRADES loss, the
  x_k maximising the cross-entropy instead of the KL.

Gradients flow through both f(x) and f(x_k), as in TRADES.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unionrobust.errors import UnionRobustError, check_finite, check_number, unknown_name
from unionrobust.losses import cross_entropy, trades_kl

LOSSES = ("ce", "trades", "trades-xent")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_attack_loss(clean_logits: torch.Tensor) -> LossFn:
    """The TRADES attack loss KL(f(x) ‖ f(x')) per example, against fixed clean logits.

    Attacks call it on the whole batch (row i = example i) or on n whole copies of it stacked
    (MSD scores its K candidates as one K·B batch); an attack that shrinks the batch
    (restarts > 1) would misalign rows, which is refused.
    """
    ref = F.log_softmax(clean_logits.detach().float(), dim=1)
    batch = ref.shape[0]

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        if batch == 0 or n % batch:
            raise UnionRobustError(
                "loss 'trades' needs attacks that keep the whole batch (restarts=1)"
            )
        return trades_kl(logits, ref if n == batch else ref.repeat(n // batch, 1))

    return loss_fn


class Objective:
    """The training loss ``loss`` ∈ {"ce", "trades", "trades-xent"} with ``beta`` and ``mix``."""

    def __init__(self, loss: str = "ce", beta: float = 6.0, mix: float = 1.0) -> None:
        if loss not in LOSSES:
            raise unknown_name("training loss", str(loss), LOSSES)
        self.loss = loss
        self.beta = check_finite("beta", beta, 0.0)
        self.mix = check_number("mix", mix, 0.0, 1.0)
        if loss != "ce" and self.mix != 1.0:
            raise UnionRobustError(
                f"mix applies to loss 'ce' only; {loss!r} already has its clean term (use beta)"
            )

    @property
    def kl_attack(self) -> bool:
        """Attacks maximise KL(f(x) ‖ f(x')) rather than the cross-entropy."""
        return self.loss == "trades"

    @property
    def needs_clean(self) -> bool:
        """The loss has a clean term, so f(x) joins the training forward."""
        return self.loss != "ce" or self.mix < 1.0

    def clean_term(self, clean_logits: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """(B,) clean part of the per-example loss (zeros when there is none)."""
        if clean_logits is None:
            return torch.zeros(y.shape[0], device=y.device)
        weight = 1.0 - self.mix if self.loss == "ce" else 1.0
        return weight * cross_entropy(clean_logits, y)

    def adv_term(
        self, clean_logits: torch.Tensor | None, adv_logits: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """(B,) adversarial part for one adversarial input per example."""
        if self.loss == "ce":
            return self.mix * cross_entropy(adv_logits, y)
        assert clean_logits is not None
        return self.beta * trades_kl(adv_logits, clean_logits)

    def combine(
        self,
        clean_logits: torch.Tensor | None,
        adv_logits: list[torch.Tensor],
        y: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example loss (B,) and the adversarial terms (K, B); ``weights`` (B, K) or uniform."""
        terms = torch.stack([self.adv_term(clean_logits, a, y) for a in adv_logits])
        if weights is None:
            adv = terms.mean(dim=0)
        else:
            adv = (weights.T.to(terms.dtype) * terms).sum(dim=0)
        return self.clean_term(clean_logits, y) + adv, terms

    def __repr__(self) -> str:
        return f"Objective({self.loss!r}, beta={self.beta:g}, mix={self.mix:g})"


def diversity_logdet(grads: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DPAR (Wang et al. eq. 16): h = log det(GᵀG) per example, G = the K input gradients
    ``grads`` (K, B, D) normalised to unit ℓ2 norm as columns; 0 when they are orthogonal,
    → −∞ as they align. ``eps``·I keeps the log finite for parallel gradients (our addition)."""
    g = grads / grads.norm(dim=2, keepdim=True).clamp_min(1e-12)
    g = g.permute(1, 0, 2)  # (B, K, D)
    gram = g @ g.transpose(1, 2)
    eye = torch.eye(gram.shape[1], device=gram.device, dtype=gram.dtype)
    return torch.linalg.slogdet(gram + eps * eye).logabsdet
