"""PNG plots of robustness curves (matplotlib, optional).

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

MATPLOTLIB_NOTE = (
    "plot not drawn: matplotlib is not installed (pip install matplotlib); "
    "the table holds the same numbers"
)


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _as_dict(curve: Any) -> dict[str, Any]:
    return curve if isinstance(curve, dict) else curve.to_dict()


def curves_png(curves: Sequence[Any], dpi: int = 100) -> bytes | None:
    """One panel per curve (accuracy vs radius; the union panel vs the scale factor), as PNG
    bytes; ``None`` without matplotlib or without curves. ``curves``: RobustnessCurve objects
    or their ``to_dict()``."""
    items = [_as_dict(c) for c in curves]
    if not items or not matplotlib_available():
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(len(items), 4)
    rows = (len(items) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.8 * rows), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, c in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(c["eps"], [100 * a for a in c["accuracy"]], marker="o", drawstyle="default")
        ax.set_title(f"{c['label']} ({c['attack']}, {c['method']})", fontsize=9)
        ax.set_xlabel(c.get("x_label", "epsilon"), fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
