"""The strategy contract: ``strategy(model, x, y) -> StrategyOutput``.

A strategy is the inner maximisation of adversarial training for one batch: it runs its attacks
(model frozen, eval mode: no BatchNorm update, no parameter ``.grad``; see
:mod:`unionrobust.attacks.base`) and returns the training loss computed with the model in train
mode in ONE forward pass over everything that enters the loss (clean and adversarial inputs
concatenated), so BatchNorm sees exactly one training forward per batch. The trainer does the
rest (backward, optimiser, schedules, logging).

Randomness: every batch gets a fresh attack seed derived from ``(seed, batch counter)``; the counter
lives in :meth:`Strategy.state_dict`, so a resumed run draws exactly what an uninterrupted one
would. Attack draws are further keyed by ``example_ids`` (see :mod:`unionrobust.rng`).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from unionrobust.errors import (
    UnionRobustError,
    check_example_ids,
    check_fraction,
    check_images,
    check_int,
    check_labels,
)
from unionrobust.rng import keyed_bits
from unionrobust.threats import L0, ThreatModel, Union, parse
from unionrobust.training.strategies.objective import Objective

#: counter (purpose) of the strategy-level random draws
SEED_COUNTER = 0x5EED


@dataclass
class StrategyOutput:
    """What a strategy returns for a batch.

    ``loss``: scalar, differentiable w.r.t. the model parameters.
    ``logits``: (B, C) logits on the training inputs that entered the loss (for several inputs per
    example, those of the input with the highest adversarial loss), for the train accuracy.
    ``stats``: per-batch statistics, JSON-able python floats or lists of floats.
    """

    loss: torch.Tensor
    logits: torch.Tensor | None
    stats: dict[str, float | list[float]] = field(default_factory=dict)


@functools.lru_cache(maxsize=256)
def _batch_bits(seed: int, counter: int) -> tuple[int, int]:
    """Two 32-bit hash values keyed by ``(seed, batch counter)`` (see :mod:`unionrobust.rng`)."""
    ids = torch.tensor([int(counter)], dtype=torch.int64)
    bits = keyed_bits(int(seed), ids, SEED_COUNTER, 2)[0].tolist()
    return int(bits[0]), int(bits[1])


def batch_seed(seed: int, counter: int) -> int:
    """A 31-bit attack seed for batch number ``counter`` (a pure function of both)."""
    return _batch_bits(seed, counter)[0] & 0x7FFFFFFF


def batch_uniform(seed: int, counter: int) -> float:
    """One uniform [0, 1) number for batch ``counter`` (per-batch choices of SAT and E-AT)."""
    return (_batch_bits(seed, counter)[1] >> 8) / float(1 << 24)


def scaled_threat(threat: ThreatModel, scale: float) -> ThreatModel:
    """``threat`` with its radius multiplied by ``scale`` (ℓ0: rounded, at least 1 pixel)."""
    if scale == 1.0:
        return threat
    if isinstance(threat, L0):
        return threat.with_size(max(1, round(threat.size * scale)))
    return threat.with_size(threat.size * scale)


def member_labels(union: Union) -> list[str]:
    """Short unique labels of the members for stats keys: the norm name, ``name#i`` if repeated."""
    names = [m.name for m in union.members]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def train_forward(model: nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """ONE train-mode forward over the concatenated inputs; float32 logits split back per input."""
    batch = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
    logits = model(batch).float()
    return list(logits.split([t.shape[0] for t in inputs]))


class Strategy(ABC):
    """Base class: input checks, batch counter, ε scale and the training objective.

    Common options: ``loss`` ∈ {"ce", "trades", "trades-xent"} (see :class:`Objective`), ``beta``
    (TRADES weight), ``mix`` (weight of the adversarial term against the clean CE for ``loss="ce"``,
    Wang et al. App. C.2 use 0.5), ``seed``, ``amp`` (autocast inside the attacks on CUDA).
    """

    #: registry name
    name: str = "strategy"

    def __init__(
        self,
        threats: Union | ThreatModel | str,
        loss: str = "ce",
        beta: float = 6.0,
        mix: float = 1.0,
        seed: int = 0,
        amp: bool = False,
    ) -> None:
        self.threats: Union = parse(threats)
        self.objective = Objective(loss, beta, mix)
        self.seed = check_int("seed", seed)
        self.amp = bool(amp)
        self.scale = 1.0
        self.batches = 0
        self.epoch = 0

    # -- contract ----------------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None = None,
    ) -> StrategyOutput:
        """Loss for one batch; ``model`` arrives and is left in its own (train) mode."""
        if not isinstance(model, nn.Module):
            raise UnionRobustError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_images(x)
        check_labels(y, x.shape[0])
        y = y.to(device=x.device, dtype=torch.int64)
        check_example_ids(example_ids, x.shape[0])
        if example_ids is not None:
            example_ids = example_ids.to(device=x.device, dtype=torch.int64)
        out = self._step(model, x.detach(), y, example_ids, batch_seed(self.seed, self.batches))
        self.batches += 1
        return out

    @abstractmethod
    def _step(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        example_ids: torch.Tensor | None,
        seed: int,
    ) -> StrategyOutput:
        """One validated batch with this batch's attack seed."""

    def set_scale(self, scale: float) -> None:
        """Multiply every ε and step size by ``scale`` ∈ (0, 1] (ε warm-up)."""
        s = check_fraction("scale", scale)
        if s != self.scale:
            self.scale = s
            self._rescaled()

    def _rescaled(self) -> None:  # noqa: B027 (optional hook)
        """Hook: rebuild whatever depends on the scale."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """Python numbers and tensors only: enough to reproduce the next batch exactly."""
        return {"batches": self.batches, "scale": self.scale, "epoch": self.epoch}

    def load_state_dict(self, d: dict) -> None:
        for key in ("batches", "scale", "epoch"):
            if key not in d:
                raise UnionRobustError(f"strategy state for {self.name!r} lacks {key!r}")
        self.batches = int(d["batches"])
        self.epoch = int(d["epoch"])
        self.set_scale(float(d["scale"]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threats.spec!r}, loss={self.objective.loss!r})"
