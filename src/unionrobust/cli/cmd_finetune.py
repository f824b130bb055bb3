"""``unionrobust finetune``: a few epochs of E-AT (or any strategy) from existing weights."""

from __future__ import annotations

import argparse

from unionrobust.cli.cmd_train import fit_and_report
from unionrobust.errors import UnionRobustError
from unionrobust.training.config import load_config

HELP = "fine-tune existing weights with E-AT (or any strategy), lr divided by 10 each epoch"
DESCRIPTION = """\
Fine-tune a model for a few epochs (Croce & Hein 2022, §3.4): the learning rate starts at --lr
and is divided by 10 at the beginning of each epoch; SGD with momentum 0.9 and weight decay
5e-4 as in their App. A. --weights accepts our checkpoints or run folders and plain or wrapped
PyTorch state dicts such as RobustBench files on disk (read with weights_only=True, never
unpickled), or safetensors. Every other setting comes from --config (default: defaults for the
dataset) and --set, as for 'unionrobust train'."""
EPILOG = """\
examples:
  unionrobust finetune --weights runs/pinf/best.safetensors --model small-cnn --strategy eat \\
      --epochs 3 --out runs/ft
  unionrobust finetune --weights Gowal2020.pt --model wide-resnet --dataset cifar10 \\
      --threats "linf:8/255, l2:0.5, l1:12" --lr 0.05 --epochs 3 --out runs/ft"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--weights", required=True, metavar="FILE", help="initial weights")
    parser.add_argument("--model", metavar="NAME", help="architecture (default: the config's)")
    parser.add_argument("--strategy", default="eat", help="training strategy (default: eat)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default: 3)")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (0.05)")
    parser.add_argument("--threats", metavar="SPEC", help="the union (default: the config's)")
    parser.add_argument("--dataset", metavar="SPEC", help="dataset (default: the config's)")
    parser.add_argument("--config", metavar="NAME_OR_PATH", help="base config (optional)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue a killed fine-tune")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def finetune_overrides(args: argparse.Namespace) -> list[str]:
    """The --set pairs that turn any config into Croce & Hein's fine-tuning setup."""
    sets = [
        f"model.weights={args.weights}",
        f"strategy={{name: {args.strategy}}}",
        f"training.epochs={args.epochs}",
        "schedule.name=finetune",
        "optimizer.name=sgd",
        f"optimizer.lr={args.lr}",
        "optimizer.momentum=0.9",
        "optimizer.weight_decay=0.0005",
        "training.warmup_epochs=0",
    ]
    if args.model:
        sets.append(f"model.name={args.model}")
    if args.threats:
        sets.append(f"threats={args.threats!r}")
    if args.dataset:
        sets.append(f"data.dataset={args.dataset}")
    if args.no_progress:
        sets.append("training.progress=false")
    return sets


def run(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise UnionRobustError(f"--epochs must be >= 1, got {args.epochs}")
    cfg = load_config(args.config, finetune_overrides(args) + list(args.overrides))
    return fit_and_report(cfg, args.out, args.resume)
