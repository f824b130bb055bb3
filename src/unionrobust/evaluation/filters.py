"""First-layer filters (Maini et al. 2020 App. E, Fig. 6–9; Tramèr & Boneh §4 "threshold
filters" ``z = ReLU(α (x − ε))``): :func:`thresholding_filters` counts filters of the first layer
that act as a pixel threshold (a diagnostic of :mod:`unionrobust.evaluation.diagnostics`),
:func:`filter_grid_png` draws the filters as a PNG grid for the reports.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.models.normalize import Normalize

#: first modules whose weights are "first-layer filters"
_FIRST_LAYERS = (nn.Conv2d, nn.Conv1d, nn.Linear)


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
