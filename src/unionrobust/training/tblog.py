"""Training metrics to TensorBoard besides the JSONL log: ``DIR/tensorboard``, one scalar per
number of each epoch record (losses, accuracies, lr, time, strategy statistics) at its global
step, when ``torch.utils.tensorboard`` is importable (``pip install tensorboard``) and
``training.tensorboard`` is true; otherwise nothing is written. With
``training.tensorboard_every: N`` also every N steps: ``step/train_loss`` and ``step/train_acc``
(the epoch's running means so far, as the progress bar shows them) and ``step/lr``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIP = ("epoch", "step", "best")


def open_writer(folder: Path) -> Any | None:
    """A ``SummaryWriter`` on ``folder``, or None when TensorBoard is not installed."""
    try:  # optional dependency: deferred so the package works without it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags and values of one epoch record (``threat:SPEC`` -> ``threat/SPEC``)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key not in SKIP and isinstance(value, int | float) and not isinstance(value, bool):
            out[key.replace(":", "/", 1)] = float(value)
    for key, value in (record.get("strategy_stats") or {}).items():
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            out[f"strategy/{key}" + (f"/{i}" if isinstance(value, list) else "")] = float(v)
    return out


def write_record(writer: Any, record: dict[str, Any]) -> None:
    for tag, value in scalars(record).items():
        writer.add_scalar(tag, value, global_step=int(record["step"]))
    writer.flush()


def write_step(writer: Any, step: int, sums: dict[str, float], lr: float) -> None:
    """The per-step scalars (see the module doc) at global step ``step``."""
    n = max(float(sums.get("n", 0.0)), 1.0)
    writer.add_scalar("step/train_loss", float(sums.get("loss", 0.0)) / n, global_step=step)
    writer.add_scalar("step/train_acc", float(sums.get("correct", 0.0)) / n, global_step=step)
    writer.add_scalar("step/lr", float(lr), global_step=step)
