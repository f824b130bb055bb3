"""``unionrobust train``: adversarial training from a YAML config (single process or torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.training.config import builtin_configs, load_config, read_config_dict
from unionrobust.training.distributed import shutdown
from unionrobust.training.holdout import holdout_mode
from unionrobust.training.trainer import Trainer

HELP = "train a model (MSD, MAX, AVG, SAT, E-AT, min-max, ...) from a YAML config"
DESCRIPTION = """\
Adversarial training against a union of perturbation models, configured by a YAML file or a
built-in config name (--config list shows them: each paper's setup and small ones on the embedded
MNIST that run on 2 CPU cores in minutes). --set overrides any key (value parsed as YAML).

Writes to --out: config.yaml (resolved), log.jsonl (one line per epoch: lr, train loss/acc,
clean/per-threat/union/average accuracy on held-out points, time, strategy statistics),
checkpoints/ (atomic 'last' and 'best'), best.safetensors (best union accuracy), last.safetensors.
A killed run continues with --resume (on the CPU it ends with the same weights as an
uninterrupted one). Multi-process: torchrun --nproc-per-node N -m unionrobust.cli.main train ..."""
EPILOG = """\
examples:
  unionrobust train --config mnist-small-msd --out runs/msd
  unionrobust train --config msd-mnist --set training.epochs=5 --set data.batch_size=64 --out r
  unionrobust train --out runs/msd --resume
  torchrun --nproc-per-node 2 -m unionrobust.cli.main train --config mnist-small-max --out r"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "--config", metavar="NAME_OR_PATH", help="YAML file or built-in name ('list' shows them)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key, e.g. --set training.epochs=3 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", metavar="DIR", help="output folder")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def list_configs() -> int:
    for name in builtin_configs():
        desc = str(read_config_dict(name).get("description", "")).strip().splitlines()
        print(f"{name:24s} {desc[0] if desc else ''}")
    return 0


def resolve_config(args: argparse.Namespace):
    config = args.config
    if config is None and args.resume and args.out:
        saved = Path(args.out) / "config.yaml"
        if not saved.is_file():
            raise UnionRobustError(f"nothing to resume: {str(saved)!r} does not exist")
        config = str(saved)
    if config is None:
        raise UnionRobustError("give --config NAME_OR_PATH (see --config list)")
    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("training.progress=false")
    return load_config(config, overrides)


def strength_note(suite: str, mode: EvaluationMode = EvaluationMode.PER_THREAT) -> str:
    """How to read held-out robust accuracies measured with ``suite`` in ``mode``, as
    :meth:`EvaluationMode.upper_bounds` says: a suite weaker than ``standard`` (the configs'
    default ``quick``: PGD-20) gives upper bounds only; union-only mode bounds the average."""
    bounds = mode.upper_bounds(suite)
    if "union" in bounds:
        return f"suite {suite}: upper bounds; evaluate best.safetensors with --suite standard"
    if bounds:
        return f"suite {suite}, {mode.value} mode: ≤ marks upper bounds"
    return f"suite {suite}"


def report(result, suite: str = "quick", mode: EvaluationMode = EvaluationMode.PER_THREAT) -> None:
    last = result.history[-1] if result.history else {}
    figures = {"clean_acc": None, "union_acc": "union", "average_acc": "average"}
    shown = ", ".join(
        f"{k[:-4]} {mode.mark(f, suite) if f else ''}{last[k]:.1%}"
        for k, f in figures.items()
        if k in last
    )
    print(
        f"trained {result.epochs} epochs ({result.steps} steps, "
        f"{result.time_per_epoch:.1f} s/epoch)"
        + (f"; held-out: {shown} ({strength_note(suite, mode)})" if shown else "")
    )
    if result.best:
        print(
            f"best epoch {result.best['epoch']}: {result.best['metric']} {result.best['score']:.1%}"
        )
    if result.out_dir is not None:
        print(
            f"wrote {result.out_dir}/ ("
            + ", ".join(Path(p).name for p in result.files.values())
            + ")"
        )


def fit_and_report(cfg, out: str, resume: bool) -> int:
    """Train ``cfg`` into ``out`` (all processes under torchrun); the main process reports."""
    trainer = Trainer(cfg, out, resume=resume)
    try:
        result = trainer.fit()
    finally:
        shutdown(trainer.ctx)
    if trainer.ctx.is_main:
        report(result, str(cfg.eval.suite).strip(), holdout_mode(cfg.eval))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.config == "list":
        return list_configs()
    if not args.out:
        raise UnionRobustError("give --out DIR")
    return fit_and_report(resolve_config(args), args.out, args.resume)
