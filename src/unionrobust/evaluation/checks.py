"""Checks on what a model returns, shared by every evaluation pass (engine, attack report).

A model whose forward raises, returns something other than a (B, classes) tensor, or returns
non-finite logits is broken, not robust: ``argmax`` of a NaN row is 0, so without these checks a
NaN model would be "correct" and "robust" on every digit of class 0. Policy: a batch in which
every row of the clean logits is non-finite is an error; an isolated non-finite row counts as
not correct (and is counted); a non-finite row at an adversarial point counts as broken.
"""

from __future__ import annotations

import torch
from torch import nn

from unionrobust.attacks.base import (
    check_some_finite,
    frozen_checked,
    misclassified,
    model_output,
)
from unionrobust.errors import UnionRobustError, check_labels
from unionrobust.threats import DEFAULT_TOL, ThreatModel, Union


def model_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Float logits of the frozen ``model`` at ``x`` (no graph), shape-checked; a failing
    forward pass or a model that changes its input in place is a one-line
    :class:`UnionRobustError` (:func:`unionrobust.attacks.base.model_output`)."""
    with frozen_checked([model], x):
        return model_output(model, x)


def known_classes(data: object) -> int | None:
    """The number of classes ``data`` names (a dataset's ``classes`` list, as torchvision's and
    ours have), or None when it does not say."""
    classes = getattr(data, "classes", None)
    return len(classes) if isinstance(classes, list | tuple) and len(classes) >= 2 else None


def check_model_classes(
    model: nn.Module, x: torch.Tensor, num_classes: int | None, source: str = "the data"
) -> None:
    """Raise unless ``model`` returns ``num_classes`` logits per example (one forward on the
    first example of ``x``; nothing to check when ``num_classes`` is None). Without it a
    7-output model on 10-class data passes as long as the labels seen so far are below 7."""
    if num_classes is None or x.shape[0] == 0:
        return
    outputs = int(model_logits(model, x[:1]).shape[1])
    if outputs != num_classes:
        raise UnionRobustError(
            f"the model returns {outputs} logits per example but {source} has {num_classes} "
            "classes; use a model built for this dataset (num_classes)"
        )


def clean_verdicts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct (B,), non-finite (B,)) of the clean pass on one batch, on ``x``'s device.

    Raises when every row is non-finite (a broken model); a non-finite row is never correct.
    """
    logits = model_logits(model, x)
    check_labels(y, x.shape[0], int(logits.shape[1]))
    finite = check_some_finite(logits)
    return (logits.argmax(dim=1) == y) & finite, ~finite


def predicts_wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool (B,): ``model`` misclassifies ``x`` or returns non-finite logits for it."""
    return misclassified(model_logits(model, x), y)


def recheck(
    model: nn.Module,
    threat: ThreatModel | Union,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor,
    tol: float = DEFAULT_TOL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Independently verify an attack's output: (broken (B,), norm (B,) float64).

    Broken iff ``x_adv`` is finite, ``x_adv − x`` lies in the ball of ``threat`` and
    ``x_adv`` in [0, 1] (both up to the threat's float tolerance), and the model misclassifies
    ``x_adv`` clamped to [0, 1] (so the point judged is a valid image) or returns non-finite
    logits there (a broken output is never robust). For a :class:`Union` "inside" means inside
    some member's ball, and the norm is NaN (no single norm applies).
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = getattr(x_adv, "shape", None)
        raise UnionRobustError(f"attack returned x_adv of shape {shape}, expected {tuple(x.shape)}")
    xa = x_adv.detach().to(device=x.device, dtype=x.dtype)
    finite_el = torch.isfinite(xa)
    finite = finite_el.reshape(xa.shape[0], -1).all(dim=1)
    xa = torch.where(finite_el, xa, x)
    inside = threat.contains(xa - x, x, tol) & finite
    xc = xa.clamp(0.0, 1.0)
    broken = inside & predicts_wrong(model, xc, y)
    if isinstance(threat, Union):
        return broken, torch.full(broken.shape, float("nan"), dtype=torch.float64)
    return broken, threat.norm(xc - x).double()
