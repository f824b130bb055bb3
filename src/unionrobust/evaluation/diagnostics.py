"""Diagnostics that say when an evaluation is not to be trusted.

AutoAttack-style model checks (Croce & Hein's ``checks.py`` ideas, re-derived):

- ``randomized``: two forward passes on the same inputs (eval mode, as the attacks see the model)
  give different logits — gradients of a randomised model are noisy, use EOT or expect overrated
  robustness;
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
that act as a pixel threshold, :func:`filter_grid_png` draws the filters as a PNG grid.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from unionrobust.attacks.base import frozen_model
from unionrobust.errors import UnionRobustError, check_images, check_labels, check_logits
from unionrobust.evaluation.metrics import wilson_interval
from unionrobust.models.normalize import Normalize
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

#: first modules whose weights are "first-layer filters"
_FIRST_LAYERS = (nn.Conv2d, nn.Conv1d, nn.Linear)


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
            "two forward passes differ: the model is randomised; gradients are noisy (use EOT "
            "attacks) and the robust accuracy is likely overestimated"
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


# --------------------------------------------------------------------------- first-layer filters
def first_layer(model: nn.Module) -> nn.Module | None:
    """The first Conv1d/Conv2d/Linear module in registration order (None if there is none)."""
    return next((m for m in model.modules() if isinstance(m, _FIRST_LAYERS)), None)


def _pixel_space_first_layer(
    model_or_layer: nn.Module,
) -> tuple[nn.Module | None, torch.Tensor, torch.Tensor | None]:
    """(layer, weights (F, D) float64, bias (F,) or None) of the first layer, with a preceding
    Normalize((x − μ)/σ) folded in for conv layers."""
    norm = None
    layer = model_or_layer if isinstance(model_or_layer, _FIRST_LAYERS) else None
    if layer is None:
        for m in model_or_layer.modules():
            if isinstance(m, Normalize) and norm is None:
                norm = m
            elif isinstance(m, _FIRST_LAYERS):
                layer = m
                break
    if layer is None:
        return None, torch.zeros(0), None
    w4 = layer.weight.detach().double().cpu()
    b = None if layer.bias is None else layer.bias.detach().double().cpu()
    if norm is not None and isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        shape = (1, -1) + (1,) * (w4.dim() - 2)
        mean = norm.mean.detach().double().cpu().reshape(-1)
        std = norm.std.detach().double().cpu().reshape(-1)
        channels = w4.shape[1]
        mean, std = mean.expand(channels).reshape(shape), std.expand(channels).reshape(shape)
        shift = (w4 * mean / std).flatten(1).sum(dim=1)
        w4 = w4 / std
        b = -shift if b is None else b - shift
    return layer, w4.reshape(w4.shape[0], -1), b


def thresholding_filters(
    model_or_layer: nn.Module, dominance: float = 0.8, max_threshold: float = 1.0
) -> dict[str, Any]:
    """Count the first layer's thresholding filters.

    Criterion (precise reading of Tramèr & Boneh §4's ``z = ReLU(α (x − ε))`` and Maini et al.
    App. E "filters with only one non-zero element"): a filter with weights ``w`` (flattened over
    input channels and kernel) and bias ``b`` is *thresholding* iff

    1. its largest-magnitude weight ``w_m`` is positive,
    2. ``w_m >= dominance · ‖w‖₁`` (nearly all its ℓ1 mass is that one weight; 0.8 by default),
    3. it has a bias and the threshold ``t = −b / w_m`` lies in ``(0, max_threshold]``: the
       unit (with the ReLU that follows) is zero until pixel ``m`` exceeds ``t`` — a hard
       "x > t" whose gradient vanishes below t. ``t`` is in pixel units: a
       :class:`~unionrobust.models.normalize.Normalize` layer before a conv layer is folded into
       its weights and bias (w/σ, b − Σ w μ/σ); BatchNorm after the layer is not folded in.

    The weight's position (centre or not) is reported, not required: an off-centre single weight
    thresholds a shifted pixel. Returns the count, the filter count and per-filter details.
    """
    layer, w, b = _pixel_space_first_layer(model_or_layer)
    if layer is None:
        return {"available": False, "count": 0, "filters": 0, "thresholding": []}
    m = w.abs().argmax(dim=1)
    wm = w.gather(1, m.reshape(-1, 1)).reshape(-1)
    l1 = w.abs().sum(dim=1)
    dominant = (wm > 0) & (wm >= dominance * l1)
    if b is None:
        t = torch.full_like(wm, math.nan)
        ok = torch.zeros_like(dominant)
    else:
        t = -b / wm.where(wm != 0, torch.ones_like(wm))
        ok = (t > 0) & (t <= max_threshold)
    thr = dominant & ok
    kernel = tuple(layer.weight.shape[2:])
    centre = None
    if kernel:
        per_channel = int(np.prod(kernel))
        pos = m % per_channel
        centre_index = int(np.ravel_multi_index(tuple(k // 2 for k in kernel), kernel))
        centre = (pos == centre_index).tolist()
    details = [
        {
            "filter": int(i),
            "weight": float(wm[i]),
            "threshold": float(t[i]),
            "at_centre": None if centre is None else bool(centre[i]),
        }
        for i in torch.nonzero(thr).reshape(-1).tolist()
    ]
    return {
        "available": True,
        "layer": type(layer).__name__,
        "count": int(thr.sum()),
        "filters": int(w.shape[0]),
        "single_weight": int(dominant.sum()),
        "criterion": f"dominant positive weight >= {dominance} of the l1 mass and "
        f"threshold -b/w in (0, {max_threshold}]",
        "thresholding": details,
    }


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) grey or (H, W, 3) RGB array as PNG (zlib only, no dependency)."""
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim == 2:
        color = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        color = 2
    else:
        raise UnionRobustError(f"PNG needs an (H, W) or (H, W, 3) array, got {img.shape}")
    h, w = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def filter_grid_png(model_or_layer: nn.Module, scale: int = 8, columns: int = 8) -> bytes | None:
    """The first conv layer's filters as a PNG grid (MSD App. E): each filter scaled to its own
    max |w| (grey 128 = 0, white = positive, black = negative; RGB for 3 input channels, the
    channel mean otherwise), ``scale`` pixels per weight. None when there is no conv layer."""
    layer = (
        model_or_layer
        if isinstance(model_or_layer, (nn.Conv2d,))
        else next((m for m in model_or_layer.modules() if isinstance(m, nn.Conv2d)), None)
    )
    if layer is None:
        return None
    w = layer.weight.detach().float().cpu().numpy()  # (F, C, kh, kw)
    if w.shape[1] != 3:
        w = w.mean(axis=1, keepdims=True)
    peak = np.abs(w).reshape(w.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
    v = w / np.where(peak > 0, peak, 1.0)
    pix = np.clip(np.rint(127.5 + 127.5 * v), 0, 255).astype(np.uint8)
    f, c, kh, kw = pix.shape
    cols = max(1, min(columns, f))
    rows = (f + cols - 1) // cols
    gap = max(1, scale // 4)
    th, tw = kh * scale, kw * scale
    canvas = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, c), 255, np.uint8)
    for i in range(f):
        r, q = divmod(i, cols)
        tile = np.repeat(np.repeat(pix[i].transpose(1, 2, 0), scale, 0), scale, 1)
        y0, x0 = gap + r * (th + gap), gap + q * (tw + gap)
        canvas[y0 : y0 + th, x0 : x0 + tw] = tile
    return png_bytes(canvas[:, :, 0] if c == 1 else canvas)


# --------------------------------------------------------------------------- masking flag
def _is_gradient_free(name: str, gradient_free: frozenset[str]) -> bool:
    return name in gradient_free


def gradient_masking(
    report: Any,
    threshold: float = 0.01,
    gradient_free: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Per threat of an :class:`EvaluationReport`: points broken only by gradient-free attacks.

    For threat t, let G be the clean-correct points on which every first-order entry of t ran
    and failed (``report.ran(e)``: with the cascade, an entry ran on a point iff it was still
    robust for t — for the union in union-only mode — before that entry). ``extra`` = points
    of G that a gradient-free entry of t broke. The flag fires when the Wilson 95% lower bound
    of ``extra / clean-correct`` exceeds ``threshold`` (a fraction). Threats without both
    kinds of attack are reported as not checked.
    """
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
            "gradient_attacks": [report.entries[e]["attack"] for e in grad],
            "gradient_free_attacks": [report.entries[e]["attack"] for e in free],
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
        survived = cc.clone()
        for e in grad:
            ran = report.ran(e) & cc
            survived &= ran & ~report.broken[:, e]
        by_free = torch.zeros_like(cc)
        for e in free:
            by_free |= report.broken[:, e]
        by_grad = torch.zeros_like(cc)
        for e in grad:
            by_grad |= report.broken[:, e]
        extra = int((survived & by_free).sum())
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
            message=(
                f"gradient-free attacks broke {extra}/{n_cc} points that first-order attacks "
                "could not: likely gradient masking; trust the full suite, not PGD/APGD alone"
                if flag
                else f"{extra}/{n_cc} points broken only by gradient-free attacks"
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
        out["gradient_masking"] = gradient_masking(report)
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
