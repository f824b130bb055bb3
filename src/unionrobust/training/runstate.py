"""The progress of a training run, which saves itself into a checkpoint and restores itself.

:class:`RunState` holds where the run is (epoch, step within it, global step), the best epoch,
the epoch records, the running sums of the current epoch and the count of skipped non-finite
batches. :meth:`RunState.save` writes it, with the model, optimiser, gradient scaler, strategy
state, RNG states and the config, as one atomic checkpoint (``checkpoint.py``);
:meth:`RunState.restore` reads it back, refusing a changed config, so that a resumed run
continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.training import checkpoint as ckpt
from unionrobust.training.config import Config, config_from_dict

#: config keys that may change between a run and its resumption
RESUME_FREE = {
    "training.progress", "training.device", "training.tensorboard", "eval.batch_size",
    "training.tensorboard_every", "description",
}  # fmt: skip


def _flat_stats(stats: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in stats.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().tolist()
        if isinstance(v, bool | int | float) or (
            isinstance(v, list) and all(isinstance(e, int | float) for e in v)
        ):
            out[k] = v
    return out


class StatsMean:
    """Running mean over the steps of an epoch of numbers and same-length number lists."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, Any]) -> None:
        for k, v in _flat_stats(stats).items():
            if isinstance(v, list):
                prev = self.sums.get(k)
                if isinstance(prev, list) and len(prev) == len(v):
                    self.sums[k] = [a + float(b) for a, b in zip(prev, v, strict=True)]
                elif prev is None:
                    self.sums[k] = [float(b) for b in v]
                else:
                    continue
            else:
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, s in self.sums.items():
            c = self.counts[k]
            out[k] = [e / c for e in s] if isinstance(s, list) else s / c
        return out


def diff_key(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first config key (dotted) whose value differs, ignoring :data:`RESUME_FREE`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            d = diff_key(old.get(k), new.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    key = prefix.rstrip(".")
    return None if old == new or key in RESUME_FREE else key


def read_train_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``; a torn LAST line (a kill mid-write) is dropped,
    a bad line anywhere else is an error."""
    lines = path.read_text("utf-8", errors="replace").splitlines() if path.is_file() else []
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
                raise ValueError("not an epoch record")
        except ValueError:
            if all(not rest.strip() for rest in lines[i + 1 :]):
                break
            raise ckpt.CheckpointError(
                f"{str(path)!r}: line {i + 1} is corrupt; cannot resume"
            ) from None
        records.append(rec)
    return records


def _fresh_sums() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0}


@dataclass
class RunState:
    """Where a run is; see the module docstring."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    #: this epoch's summed loss, correct predictions, examples and step time
    sums: dict[str, float] = field(default_factory=_fresh_sums)
    stats: StatsMean = field(default_factory=StatsMean)
    #: batches dropped for a non-finite loss (``training.nonfinite: skip``)
    skipped: int = 0

    def start_epoch(self) -> None:
        self.sums = _fresh_sums()
        self.stats = StatsMean()

    def to_dict(self, optimizer: Any, scaler: Any, strategy: Any, cfg: Config) -> dict[str, Any]:
        """Tensors and plain Python only (read back with ``weights_only=True``)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "strategy": strategy.state_dict(),
            "best": json.dumps(self.best),
            "skipped": self.skipped,
            "epoch_acc": dict(self.sums),
            "stats": json.dumps({"sums": self.stats.sums, "counts": self.stats.counts}),
            "config": json.dumps(cfg.to_dict()),
        }

    def save(
        self, directory: str | os.PathLike, tag: str, model: nn.Module, optimizer: Any,
        scaler: Any, strategy: Any, cfg: Config,
    ) -> None:  # fmt: skip
        """Write checkpoint ``tag`` in ``directory`` atomically."""
        state = self.to_dict(optimizer, scaler, strategy, cfg)
        ckpt.save_checkpoint(
            directory, tag, model.state_dict(), state, epoch=self.epoch, step=self.global_step
        )

    @classmethod
    def restore(
        cls, out_dir: Path, model: nn.Module, optimizer: Any, scaler: Any, strategy: Any,
        cfg: Config,
    ) -> RunState:  # fmt: skip
        """Load the ``last`` checkpoint of the run in ``out_dir`` into the objects given (and
        the global RNGs); the history is the log's records of the epochs it has seen."""
        directory = out_dir / "checkpoints"
        weights, state, _ = ckpt.load_checkpoint(directory, "last")
        saved = json.loads(state["config"])
        with contextlib.suppress(UnionRobustError):  # keys added since then take their defaults
            saved = config_from_dict(saved).to_dict()
        diff = diff_key(saved, cfg.to_dict())
        if diff:
            raise ckpt.CheckpointError(
                f"cannot resume {str(out_dir)!r}: config key {diff!r} differs from the "
                "saved run (see its config.yaml)"
            )
        try:
            model.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(
                f"checkpoint in {str(directory)!r} does not fit the model: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        scaler.load_state_dict(state["scaler"])
        if state["strategy"]:
            strategy.load_state_dict(state["strategy"])
        run = cls(
            epoch=int(state["epoch"]),
            step_in_epoch=int(state["step_in_epoch"]),
            global_step=int(state["global_step"]),
            best=json.loads(state["best"]),
            sums={k: float(v) for k, v in state["epoch_acc"].items()},
            skipped=int(state.get("skipped", 0)),
        )
        st = json.loads(state["stats"])
        run.stats.sums, run.stats.counts = st["sums"], st["counts"]
        ckpt.set_rng_state(state["rng"])
        run.history = [r for r in read_train_log(out_dir / "log.jsonl") if r["epoch"] < run.epoch]
        return run


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history``: one dict per epoch (the JSONL log lines)."""

    model: nn.Module
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    out_dir: Path | None
    epochs: int
    steps: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def time_per_epoch(self) -> float:
        times = [h["time"] for h in self.history if "time" in h]
        return sum(times) / len(times) if times else float("nan")
