"""PNG plots of robustness curves (matplotlib, optional).

Without matplotlib the functions return ``None`` and reports show :data:`MATPLOTLIB_NOTE`
instead of the picture; the tables hold the same numbers. Rendering uses the object-oriented
Agg API (no pyplot global state).
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from typing import Any

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
