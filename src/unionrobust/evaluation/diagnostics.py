"""Diagnostics that say when an evaluation is not to be trusted.

AutoAttack-style model checks (Croce & Hein's ``checks.py`` ideas, re-derived):

- ``randomized``: two forward passes on the same inputs (eval mode, as the attacks see the model)
  give different logits — gradients of a randomised model are noisy: the message points to the
  ``rand`` suite (EOT and a K-of-K re-check), else expect overrated robustness;
- ``probabilities``: every output row is non-negative and sums to 1 (softmax outputs, not
  logits) — cross-entropy on probabilities has vanishing gradients;
- ``zero_gradients`` / ``nan_gradients``: the input gradient of the cross-entropy loss is exactly
  zero, or not finite, on some points — first-order attacks cannot move there;
- ``training_mode``: the model was handed over in training mode (the evaluation runs it in eval
  mode, so BatchNorm/Dropout may behave unlike the model as used).

Gradient masking (Tramèr & Boneh 2019 §4; Maini et al. 2020 §5.1): from an evaluation's verdict
table, per threat, the points that a gradient-free or decision-based attack broke although every
first-order attack of that threat ran on them and failed. Flagged when the Wilson 95% lower bound
of that fraction (over clean-correct points) exceeds ``threshold``: a working first-order attack
leaves (almost) nothing for a weaker gradient-free one to find.

First-layer filters (Maini et al. 2020 App. E, Fig. 6–9; Tramèr & Boneh §4 "threshold filters"
``z = ReLU(α (x − ε))``): :func:`thresholding_filters` counts filters of the first conv layer
that act as a pixel threshold (:mod:`unionrobust.evaluation.filters`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from unionrobust.attacks.base import frozen_model
from unionrobust.errors import UnionRobustError, check_images, check_labels, check_logits
from unionrobust.evaluation.filters import thresholding_filters
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.threats import parse

#: attack names (registry names) that use no gradient of the model: decision-based, score-based
#: or random search. Everything else in a suite is treated as first-order (gradient-based).
GRADIENT_FREE_ATTACKS = frozenset(
    {
        "square",
        "square-linf",
        "square-l2",
        "ta-square",
        "fb-boundary",
        "boundary-search",
        "fb-pointwise",
        "boundary",
        "boundary-l2",
        "hsja",
        "fb-hsj",
        "pointwise",
        "salt-and-pepper",
        "salt-pepper",
        "saltandpepper",
        "gaussian-noise",
        "uniform-noise",
        "noise",
        "random-search",
        "random-noise",
    }
)
#: attacks that are neither (exhaustive search over a transformation lattice): ignored here
NEUTRAL_ATTACKS = frozenset({"spatial-grid", "spatial-worst-of-k"})


# --------------------------------------------------------------------------- model checks
def check_randomized(model: nn.Module, x: torch.Tensor, atol: float = 1e-6) -> dict[str, Any]:
    """Two forward passes (eval mode, no grad) on ``x``; flagged when they differ."""
    with frozen_model(model), torch.no_grad():
        a = model(x).float()
        b = model(x).float()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return {
        "flag": bool(diff > atol),
        "max_abs_difference": diff,
        "message": (
            "two forward passes differ: the model is randomised; evaluate it with --suite rand "
            "(EOT APGD, each final point re-checked K of K times), else gradients are noisy and "
            "the robust accuracy is likely overestimated"
            if diff > atol
            else "deterministic"
        ),
    }


def check_probabilities(logits: torch.Tensor, atol: float = 1e-4) -> dict[str, Any]:
    """Flagged when every row is non-negative and sums to 1 (the model outputs probabilities)."""
    z = logits.detach().double()
    sums = z.sum(dim=1)
    probs = bool((z >= -atol).all() and (sums - 1).abs().max() <= atol)
    logprobs = bool((z <= atol).all() and (torch.logsumexp(z, dim=1)).abs().max() <= atol)
    if probs:
        msg = "outputs are probabilities (rows sum to 1): return logits, not softmax"
    elif logprobs:
        msg = "outputs are log-probabilities (log_softmax); fine for CE, but DLR/CW see shifts"
    else:
        msg = "outputs look like logits"
    return {"flag": probs, "log_probabilities": logprobs, "message": msg}


def check_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, atol: float = 0.0
) -> dict[str, Any]:
    """Input gradient of the cross-entropy loss per point: fraction exactly zero (max |g| <=
    ``atol``) and fraction with a NaN/inf entry. Parameters get no ``.grad``."""
    with frozen_model(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg).float()
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        detached = not loss.requires_grad  # e.g. .detach()/numpy inside forward
        g = None if detached else torch.autograd.grad(loss, xg, allow_unused=True)[0]
    if g is None:
        g = torch.zeros_like(x)
    flat = g.detach().reshape(g.shape[0], -1)
    finite = torch.isfinite(flat).all(dim=1)
    zero = finite & (flat.abs().amax(dim=1) <= atol)
    n = max(int(flat.shape[0]), 1)
    fz, fn = int(zero.sum()) / n, int((~finite).sum()) / n
    parts = []
    if fz > 0:
        parts.append(f"{100 * fz:.1f}% of points have a zero input gradient")
    if fn > 0:
        parts.append(f"{100 * fn:.1f}% have a NaN/inf input gradient")
    if detached:
        parts.insert(0, "the output is not differentiable w.r.t. the input (graph cut)")
    return {
        "zero_fraction": fz,
        "nan_fraction": fn,
        "flag": bool(fz > 0 or fn > 0),
        "message": "; ".join(parts) + " (first-order attacks cannot move there)"
        if parts
        else "input gradients non-zero and finite",
    }


def check_training_mode(model: nn.Module) -> dict[str, Any]:
    """Flagged when the model (or any sub-module) is in training mode as handed over."""
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    return {
        "flag": bool(training),
        "modules": training,
        "message": (
            "the model was in training mode (evaluated in eval mode; call model.eval() if "
            "that is how it is used)"
            if training
            else "eval mode"
        ),
    }


# --------------------------------------------------------------------------- masking flag
def _is_gradient_free(name: str, gradient_free: frozenset[str]) -> bool:
    return name in gradient_free


def is_gradient_free(name: str) -> bool:
    """Whether registry attack ``name`` uses no gradient of the model
    (:data:`GRADIENT_FREE_ATTACKS`)."""
    return name in GRADIENT_FREE_ATTACKS


#: how many example ids a masking message lists (report.json keeps them all)
_SHOWN_IDS = 20


def gradient_masking(
    report: Any,
    threshold: float = 0.01,
    gradient_free: Iterable[str] | None = None,
    first_layer: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per threat of an :class:`EvaluationReport`: points broken only by gradient-free attacks.

    For threat t, ``extra`` = the clean-correct points that a gradient-free entry of t broke
    although every first-order entry of t before it ran on them and failed (``report.ran(e)``:
    with the cascade, an entry ran on a point iff it was still robust for t — for the union in
    union-only mode — before that entry); a gradient-free entry with no first-order entry
    before it gives no evidence. The flag fires when the Wilson 95% lower bound
    of ``extra / clean-correct`` exceeds ``threshold`` (a fraction). Threats without both
    kinds of attack are reported as not checked. The evidence: ``points``, the example ids of
    those points, and ``thresholding_filters``, the count of thresholding first-layer filters
    (``first_layer``: :func:`thresholding_filters`' result, when known).
    """
    n_filters = None if first_layer is None else int(first_layer.get("count", 0))
    filter_note = (
        ""
        if not n_filters
        else (f"; {n_filters} of {first_layer.get('filters')} first-layer filters threshold pixels")
    )
    names = GRADIENT_FREE_ATTACKS if gradient_free is None else frozenset(gradient_free)
    n_entries = len(report.entry_threat)
    cc = report.clean_correct.bool()
    n_cc = int(cc.sum())
    out: dict[str, Any] = {"threshold": threshold, "flag": False, "per_threat": {}}
    for t, spec in enumerate(report.threats):
        mine = [e for e in range(n_entries) if report.entry_threat[e] == t]
        grad = [
            e
            for e in mine
            if not _is_gradient_free(report.entries[e]["attack"], names)
            and report.entries[e]["attack"] not in NEUTRAL_ATTACKS
        ]
        free = [e for e in mine if _is_gradient_free(report.entries[e]["attack"], names)]
        row: dict[str, Any] = {
            "gradient_attacks": [report.entry_keys[e] for e in grad],
            "gradient_free_attacks": [report.entry_keys[e] for e in free],
        }
        if not grad or not free:
            row.update(
                checked=False,
                flag=False,
                message="needs first-order and gradient-free "
                "attacks for this threat (e.g. the 'full' suite)",
            )
            out["per_threat"][spec] = row
            continue
        # a gradient-free entry's break counts when every first-order entry before it ran on
        # the point and failed (``standard`` runs first-order passes after its Square probe);
        # an entry that attacked no point at all (a gated pass that gave way) is not required
        only_free = torch.zeros_like(cc)
        for f in free:
            before = [e for e in grad if e < f and report.attacked[e] > 0]
            if not before:
                continue
            survived = cc.clone()
            for e in before:
                survived &= report.ran(e) & ~report.broken[:, e]
            only_free |= survived & report.broken[:, f]
        by_grad = torch.zeros_like(cc)
        for e in grad:
            by_grad |= report.broken[:, e]
        extra = int(only_free.sum())
        ids = [int(i) for i in report.example_ids[only_free.cpu()].tolist()]
        shown = ", ".join(map(str, ids[:_SHOWN_IDS])) + (", …" if len(ids) > _SHOWN_IDS else "")
        lo, hi = wilson_interval(extra, n_cc) if n_cc else (math.nan, math.nan)
        flag = bool(n_cc and lo > threshold)
        row.update(
            checked=True,
            flag=flag,
            broken_by_gradient=int((by_grad & cc).sum()),
            broken_only_by_gradient_free=extra,
            clean_correct=n_cc,
            fraction=extra / n_cc if n_cc else math.nan,
            ci95=[lo, hi],
            points=ids,
            thresholding_filters=n_filters,
            message=(
                f"gradient-free attacks broke {extra}/{n_cc} points that first-order attacks "
                f"could not (ids {shown}){filter_note}: likely gradient masking; "
                "trust the gradient-free passes, not PGD/APGD alone"
                if flag
                else f"{extra}/{n_cc} points broken only by gradient-free attacks"
                + (f" (ids {shown})" if ids else "")
                + filter_note
            ),
        )
        out["flag"] = out["flag"] or flag
        out["per_threat"][spec] = row
    return out


# --------------------------------------------------------------------------- all together
def run_diagnostics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threats: Any = None,
    max_points: int = 64,
    report: Any = None,
) -> dict[str, Any]:
    """All model checks on the first ``max_points`` of (x, y), the first-layer filter count and,
    given an evaluation ``report``, the gradient-masking flag. ``threats`` (spec or Union) is
    recorded only. Returns a JSON-able dict; ``flags`` lists the names of the checks that fired.
    The model is left exactly as found (``frozen_model``)."""
    check_images(x)
    check_labels(y, x.shape[0])
    if x.shape[0] == 0:
        raise UnionRobustError("diagnostics need at least one example")
    dev = next((p.device for p in model.parameters()), x.device)
    xs = x[:max_points].to(dev)
    ys = y[:max_points].to(dev).long()
    out: dict[str, Any] = {"points": int(xs.shape[0])}
    if threats is not None:
        out["threats"] = parse(threats).spec
    out["training_mode"] = check_training_mode(model)
    out["randomized"] = check_randomized(model, xs)
    with frozen_model(model), torch.no_grad():
        logits = model(xs)
    classes = check_logits(logits, xs.shape[0])
    check_labels(ys, xs.shape[0], classes)
    out["probabilities"] = check_probabilities(logits)
    out["gradients"] = check_gradients(model, xs, ys)
    out["first_layer"] = thresholding_filters(model)
    if report is not None:
        out["gradient_masking"] = gradient_masking(report, first_layer=out["first_layer"])
    out["flags"] = flags_of(out)
    return out


def flags_of(diag: dict[str, Any]) -> list[str]:
    """Names of the diagnostics that fired (thresholding filters count when there are any)."""
    names = [
        k
        for k in ("training_mode", "randomized", "probabilities", "gradients", "gradient_masking")
        if isinstance(diag.get(k), dict) and diag[k].get("flag")
    ]
    if diag.get("first_layer", {}).get("count", 0) > 0:
        names.append("thresholding_filters")
    return names
