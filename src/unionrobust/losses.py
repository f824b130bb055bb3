"""Per-example attack and training losses; each maps ``(logits, y)`` to a (B,) tensor.

Attacks maximise these. CW margin (Carlini & Wagner 2017), DLR and targeted DLR
(Croce & Hein 2020, eq. 5 and its targeted form), TRADES KL (Zhang et al. 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from unionrobust.errors import UnionRobustError, unknown_name


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example."""
    return F.cross_entropy(logits, y, reduction="none")


def _true_and_other(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return true, other


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """max_{j≠y} z_j − z_y, capped at ``kappa`` (C&W's confidence; inf = no cap)."""
    true, other = _true_and_other(logits, y)
    margin = other - true
    return margin.clamp(max=kappa) if kappa != float("inf") else margin


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020, eq. 5), shift and scale invariant.

    −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12); needs at least 3 classes.
    """
    if logits.shape[1] < 3:
        raise UnionRobustError("the DLR loss needs at least 3 classes; use 'ce' or 'cw'")
    top = logits.topk(3, dim=1).values
    true, other = _true_and_other(logits, y)
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12); needs
    at least 4 classes."""
    if logits.shape[1] < 4:
        raise UnionRobustError("the targeted DLR loss needs at least 4 classes; use 'ce' or 'dlr'")
    top = logits.topk(4, dim=1).values
    true = logits.gather(1, y[:, None]).squeeze(1)
    tgt = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def trades_kl(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(p_clean ‖ p_adv) per example, the TRADES robustness term."""
    return F.kl_div(
        F.log_softmax(logits_adv, dim=1),
        F.log_softmax(logits_clean, dim=1),
        reduction="none",
        log_target=True,
    ).sum(dim=1)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: untargeted losses by name
LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}


def get_loss(name: str, kappa: float | None = None) -> LossFn:
    """Loss by name (``ce``, ``cw``, ``dlr``); ``kappa`` caps the CW margin."""
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    if name == "cw" and kappa is not None:
        return lambda logits, y: cw_margin(logits, y, kappa)
    return LOSSES[name]
