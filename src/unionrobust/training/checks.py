"""Small separate checks of a training :class:`~unionrobust.training.config.Config`.

Run by ``Config.validate()`` when a config is loaded, so every value the trainer passes on to
torch (optimiser, schedule), to the data pipeline or to the evaluation is known to be usable
before any data is read or any output folder is touched. Each failure is a one-line
:class:`UnionRobustError` naming the config key, the bad value and what is accepted.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from unionrobust.errors import (
    UnionRobustError,
    check_finite,
    check_int,
    check_number,
    unknown_name,
)
from unionrobust.evaluation.suites import get_suite
from unionrobust.threats import parse
from unionrobust.training.schedules import make_schedule

if TYPE_CHECKING:
    from unionrobust.training.config import Config

OPTIMIZERS = ("adam", "sgd")
SELECT = ("average", "clean", "union")
SOURCES = ("holdout", "test")
AUGMENT = ("auto", "crop", "crop-flip", "flip", "none")
NONFINITE = ("error", "skip")


def _number(key: str, value: Any, lo: float, hi: float = math.inf, hi_open: bool = False) -> None:
    """``value`` is a finite number in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``)."""
    name = f"config key {key!r}"
    if hi == math.inf:
        check_finite(name, value, lo)
    else:
        check_number(name, value, lo, hi, high_open=hi_open)


def _at_least(key: str, value: Any, lo: int) -> None:
    """``value`` is None or a whole number >= ``lo``."""
    if value is not None:
        check_int(f"config key {key!r}", value, lo)


def check_optimizer(cfg: Config) -> None:
    """Values torch's optimisers would accept (or silently misuse: NaN, negative rates)."""
    o = cfg.optimizer
    if o.name not in OPTIMIZERS:
        raise unknown_name("optimizer", o.name, OPTIMIZERS)
    _number("optimizer.lr", o.lr, 0.0)
    _number("optimizer.weight_decay", o.weight_decay, 0.0)
    _number("optimizer.momentum", o.momentum, 0.0, 1.0, hi_open=True)
    if len(o.betas) != 2:
        raise UnionRobustError(f"config key 'optimizer.betas' must be two numbers, got {o.betas}")
    for i, b in enumerate(o.betas):
        _number(f"optimizer.betas[{i}]", b, 0.0, 1.0, hi_open=True)
    if o.name == "sgd" and o.nesterov and o.momentum <= 0:
        raise UnionRobustError("optimizer.nesterov needs optimizer.momentum > 0")


def check_training(cfg: Config) -> None:
    t = cfg.training
    _at_least("training.epochs", t.epochs, 1)
    _number("training.adv_fraction", t.adv_fraction, 0.0, 1.0)
    _number("training.warmup_epochs", t.warmup_epochs, 0.0)
    _at_least("training.checkpoint_every", t.checkpoint_every, 0)
    _at_least("training.max_steps_per_epoch", t.max_steps_per_epoch, 1)
    _at_least("training.max_skipped", t.max_skipped, 0)
    if t.nonfinite not in NONFINITE:
        raise unknown_name("training.nonfinite", t.nonfinite, NONFINITE)
    s = cfg.schedule
    make_schedule(
        s.name, lr=cfg.optimizer.lr, epochs=t.epochs, points=s.points,
        milestones=s.milestones, gamma=s.gamma, peak=s.peak, factor=s.factor,
    )  # fmt: skip


def check_data(cfg: Config) -> None:
    d = cfg.data
    _at_least("data.batch_size", d.batch_size, 1)
    _at_least("data.train_n", d.train_n, 1)
    _at_least("data.crop_padding", d.crop_padding, 0)
    _number("data.extra_fraction", d.extra_fraction, 0.0, 1.0, hi_open=True)
    if d.augment not in AUGMENT:
        raise unknown_name("data.augment", d.augment, AUGMENT)


def check_eval(cfg: Config) -> None:
    e = cfg.eval
    if e.select not in SELECT:
        raise unknown_name("eval.select", e.select, SELECT)
    if e.source not in SOURCES:
        raise unknown_name("eval.source", e.source, SOURCES)
    _at_least("eval.n", e.n, 0)
    _at_least("eval.batch_size", e.batch_size, 1)
    _at_least("eval.every", e.every, 1)
    get_suite(e.suite, parse(cfg.threats))  # an unknown suite fails now, not after training


def validate_config(cfg: Config) -> None:
    """Every check above (see the module docstring)."""
    check_optimizer(cfg)
    check_training(cfg)
    check_data(cfg)
    check_eval(cfg)
