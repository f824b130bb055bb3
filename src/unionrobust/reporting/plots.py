"""PNG plots of robustness curves and MultiRobustBench grids with 95% bands (matplotlib,
optional).

Without matplotlib the functions return ``None`` and reports show :data:`MATPLOTLIB_NOTE`
instead of the picture; the tables hold the same numbers. Rendering uses the object-oriented
Agg API (no pyplot global state).
"""

from __future__ import annotations

import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unionrobust.atomic import atomic_write_bytes
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.multirobust import CLEAN, eps_key

MATPLOTLIB_NOTE = (
    "plot not drawn: matplotlib is not installed (pip install matplotlib); "
    "the table holds the same numbers"
)


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _as_dict(curve: Any) -> dict[str, Any]:
    return curve if isinstance(curve, dict) else curve.to_dict()


def curve_band(curve: Any) -> tuple[list[float], list[float], list[float]] | None:
    """(accuracy, lower, upper) in percent of a curve: its 95% Wilson band (``ci95`` of
    ``to_dict()``); ``None`` for a dict without intervals."""
    c = _as_dict(curve)
    if "ci95" not in c:
        return None
    acc = [100 * a for a in c["accuracy"]]
    return acc, [100 * lo for lo, _ in c["ci95"]], [100 * hi for _, hi in c["ci95"]]


#: (marker, line style) per curve of a joint panel, so coinciding curves stay visible
JOINT_STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 2, 1, 2))))


def _panel(
    ax: Any, x: Sequence[float], y: Sequence[float], band: Any, label: str = "", **style: Any
) -> None:
    """A line with markers and, when ``band`` = (lower, upper) is given, its shaded band;
    ``style`` overrides the line's look (marker, linestyle, linewidth, zorder, ...)."""
    (line,) = ax.plot(x, y, **({"marker": "o", "markersize": 3} | style), label=label or None)
    if band is not None:
        ax.fill_between(x, band[0], band[1], alpha=0.2, color=line.get_color(), linewidth=0)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_figure(curves: Sequence[Any], dpi: int = 100) -> Any:
    """The matplotlib Figure of :func:`curves_png` (needs matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = [_as_dict(c) for c in curves]
    union = items[-1] if items and items[-1]["label"] == "union" else None
    joint = union is not None and all(len(c["eps"]) == len(union["eps"]) for c in items)
    panels = len(items) + int(joint)
    cols = min(panels, 4)
    rows = (panels + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    if joint:  # union and every member against the common scale factor, 95% bands
        ax = fig.add_subplot(rows, cols, 1)
        drawn: list[tuple[str, list[float]]] = []
        for k, c in enumerate(items):
            acc, lo, hi = curve_band(c) or ([100 * a for a in c["accuracy"]], None, None)
            label = c["label"]
            twin = next((name for name, seen in drawn if seen == acc), None)
            if twin is not None:  # e.g. the union equal to its l-inf member: say so
                label += f" (identical to {twin})"
            drawn.append((c["label"], acc))
            marker, dashes = JOINT_STYLES[k % len(JOINT_STYLES)]
            style = {"marker": marker, "linestyle": dashes, "markerfacecolor": "none"}
            if c is union:  # wide and underneath: the members stay visible on top of it
                style |= {"linewidth": 4, "alpha": 0.45, "zorder": 1, "markersize": 7}
            _panel(ax, union["eps"], acc, None if lo is None else (lo, hi), label, **style)
        ax.set_title("union and per threat (95% bands)", fontsize=9)
        ax.set_xlabel(union.get("x_label", "scale"), fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.legend(fontsize=7)
    for i, c in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1 + int(joint))
        acc, lo, hi = curve_band(c) or ([100 * a for a in c["accuracy"]], None, None)
        _panel(ax, c["eps"], acc, None if lo is None else (lo, hi))
        ax.set_title(f"{c['label']} ({c['attack']}, {c['method']})", fontsize=9)
        ax.set_xlabel(c.get("x_label", "epsilon"), fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    return fig


def curves_png(curves: Sequence[Any], dpi: int = 100) -> bytes | None:
    """Accuracy vs radius with 95% Wilson bands: a joint panel of the union and every member
    against the scale factor (for :func:`~unionrobust.evaluation.curves.union_curve` output),
    then one panel per curve; PNG bytes, ``None`` without matplotlib or without curves.
    ``curves``: RobustnessCurve objects or their ``to_dict()``."""
    if not curves or not matplotlib_available():
        return None
    return _png(curves_figure(curves, dpi))


def multirobust_figure(result: dict[str, Any], dpi: int = 100) -> Any:
    """The matplotlib Figure of :func:`multirobust_png` (needs matplotlib)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid, accs, cis = result["grid"], result["accuracies"], result["ci95"]
    panels = len(grid) + 1
    fig = Figure(figsize=(3.2 * panels, 2.8), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, (family, values) in enumerate(grid.items()):
        ax = fig.add_subplot(1, panels, i + 1)
        keys = [eps_key(e) for e in values]
        x = [0.0, *values]
        y = [accs[CLEAN], *(accs[family][k] for k in keys)]
        band = [cis[CLEAN], *(cis[family][k] for k in keys)]
        _panel(ax, x, y, ([b[0] for b in band], [b[1] for b in band]))
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("epsilon", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    ax = fig.add_subplot(1, panels, panels)
    steps = list(range(len(result["union"]) + 1))
    y = [accs[CLEAN], *(u["accuracy"] for u in result["union"])]
    band = [cis[CLEAN], *(u["ci95"] for u in result["union"])]
    _panel(ax, steps, y, ([b[0] for b in band], [b[1] for b in band]))
    ax.set_title("union of the i-th balls", fontsize=9)
    ax.set_xlabel("grid step i (0 = clean)", fontsize=8)
    ax.set_ylabel("accuracy (%)", fontsize=8)
    return fig


def multirobust_png(result: dict[str, Any], dpi: int = 100) -> bytes | None:
    """MultiRobustBench grid: accuracy vs ε per family and the union per grid step, with 95%
    Wilson bands (:func:`~unionrobust.evaluation.multirobust.evaluate_grid` result); PNG
    bytes, ``None`` without matplotlib."""
    if not matplotlib_available():
        return None
    return _png(multirobust_figure(result, dpi))


def weights_png(result: Any, title: str = "", dpi: int = 100) -> bytes | None:
    """Two panels for a min-max result (:class:`~unionrobust.attacks.minmax.MinMaxResult`):
    per-domain weights over iterations (median and 25-75 % band over rows, as Wang Fig. 1c /
    3a) and the per-iteration fraction of rows fooled per domain (Fig. 1a-b). PNG bytes;
    ``None`` without matplotlib."""
    if not matplotlib_available():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    traj = result.trajectory.detach().double().cpu()  # (T+1, R, K)
    hist = result.fooled_history.detach().double().cpu()
    its = list(range(traj.shape[0]))
    fig = Figure(figsize=(10, 3.8), dpi=dpi)
    FigureCanvasAgg(fig)
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    q = torch.quantile(traj, torch.tensor([0.25, 0.5, 0.75], dtype=traj.dtype), dim=1)
    for i, lab in enumerate(result.labels):
        (line,) = a.plot(its, q[1, :, i], label=lab)
        a.fill_between(its, q[0, :, i], q[2, :, i], alpha=0.2, color=line.get_color())
        b.plot(range(hist.shape[0]), 100 * hist[:, i], label=lab, color=line.get_color())
    a.set_xlabel("iteration")
    a.set_ylabel("domain weight w (median, 25-75%)")
    b.set_xlabel("iteration")
    b.set_ylabel("fooled (%)")
    a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_weights(result: Any, path: str | os.PathLike, title: str = "") -> Path:
    """:func:`weights_png` written atomically to ``path`` (temp file + rename)."""
    png = weights_png(result, title)
    if png is None:
        raise UnionRobustError("plotting needs matplotlib: pip install matplotlib")
    return atomic_write_bytes(path, png)
