"""What the commands that run a model on data share: their arguments and how they resolve
(through :func:`unionrobust.models.load_model` and :func:`unionrobust.data.load_data`)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import torch

from unionrobust.data import load_data
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.checks import check_model_classes
from unionrobust.evaluation.inputs import resolve_device
from unionrobust.evaluation.verdicts import write_json
from unionrobust.models import load_model
from unionrobust.models.robustbench import is_robustbench_name
from unionrobust.outdir import clear_run, writing

DEFAULT_THREATS = "linf:0.3, l2:2, l1:10"


def add_model_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--model-module/--weights/--untrained, --data/--root/--split/--n, --batch-size,
    --seed, --device: the arguments every command that runs a model on data shares."""
    m = parser.add_argument_group("model")
    m.add_argument(
        "--model",
        metavar="NAME",
        help="architecture from the model zoo (e.g. mnist-cnn, lenet, small-cnn, "
        "preact-resnet18; see 'unionrobust eval --model list'), or robustbench:NAME for a "
        "RobustBench model read from --model-dir (needs unionrobust[robustbench])",
    )
    m.add_argument(
        "--model-dir",
        default="models",
        metavar="DIR",
        help="RobustBench models: folder in RobustBench's layout "
        "DIR/<dataset>/<threat-model>/<NAME>.pt (default: %(default)s)",
    )
    m.add_argument(
        "--dataset",
        default="cifar10",
        help="RobustBench models: the leaderboard dataset, cifar10, cifar100 or imagenet "
        "(default: %(default)s)",
    )
    m.add_argument(
        "--threat-model",
        default="Linf",
        help="RobustBench models: the leaderboard, Linf, L2 or corruptions (default: %(default)s)",
    )
    m.add_argument(
        "--download",
        action="store_true",
        help="RobustBench models: download the weights if they are not in --model-dir",
    )
    m.add_argument(
        "--model-module",
        metavar="FILE.py:FACTORY",
        help="your own model: a Python file and a function in it that returns a torch "
        "nn.Module mapping [0,1] images to logits (the file is executed)",
    )
    m.add_argument(
        "--weights",
        metavar="FILE",
        help="weights to load (.safetensors, or a torch state dict read with weights_only=True)",
    )
    m.add_argument(
        "--untrained",
        action="store_true",
        help="use a zoo model's random initialisation on purpose (else --weights is required)",
    )
    d = parser.add_argument_group("data")
    d.add_argument(
        "--data",
        default="mnist-embedded",
        metavar="SPEC",
        help="dataset: mnist-embedded (built in, no download), mnist, cifar10, "
        "cifar10c:CORRUPTION:SEVERITY, imagefolder (default: %(default)s)",
    )
    d.add_argument("--root", metavar="DIR", help="folder holding the dataset files")
    d.add_argument("--split", default="test", help="train or test (default: %(default)s)")
    d.add_argument(
        "--n", metavar="N", help="use the first N examples of the split (default: all; more "
        "than the split holds is an error)"
    )  # fmt: skip
    r = parser.add_argument_group("run")
    r.add_argument(
        "--batch-size", default="250", metavar="B", help="examples per batch (default: 250)"
    )
    r.add_argument("--seed", default="0", help="seed of the attacks' randomness (default: 0)")
    r.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
    )


def add_force_argument(group: Any) -> None:
    """``--force``: run attack budgets above :data:`unionrobust.errors.BUDGET_CEILINGS`."""
    group.add_argument(
        "--force",
        action="store_true",
        help="run budgets above the ceilings (--steps 10000, --restarts 1000, --k 100000)",
    )


def int_arg(value: Any, flag: str, low: int | None = None) -> int:
    """Parse an integer option; one-line error otherwise."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UnionRobustError(f"{flag} must be a whole number, got {value!r}") from None
    if low is not None and number < low:
        what = "positive" if low == 1 else f">= {low}"
        raise UnionRobustError(f"{flag} must be {what}, got {number}")
    return number


def load_model_and_data(args: argparse.Namespace, require_weights: bool = False):
    """(model on its device, x, y, device, meta) from the shared arguments.

    A zoo model without --weights is refused when ``require_weights`` (eval, attack), else
    used with a warning on stderr."""
    n = None if args.n is None else int_arg(args.n, "--n", 1)
    if is_robustbench_name(args.model):
        return _robustbench_model_and_data(args, n)
    untrained = bool(args.untrained)
    if args.model and args.weights is None and not untrained and not require_weights:
        print(
            f"WARNING: no --weights: {args.model} is untrained (pass --untrained to confirm)",
            file=sys.stderr,
        )
        untrained = True
    x, y, num_classes = load_data(args.data, args.split, args.root, n)
    model = load_model(
        args.model,
        args.weights,
        module=args.model_module,
        untrained=untrained,
        **(
            {}
            if args.model_module
            else {
                "num_classes": num_classes,
                "in_channels": int(x.shape[1]),
                "input_size": tuple(int(s) for s in x.shape[2:]),
            }
        ),
    )
    check_model_classes(model, x[:1], num_classes, f"--data {args.data}")
    return _on_device(args, model, x, y)


def _robustbench_model_and_data(args: argparse.Namespace, n: int | None):
    """A RobustBench zoo model read from --model-dir (weights come with it), and the data."""
    if args.model_module:
        raise UnionRobustError("give exactly one of --model NAME or --model-module FILE.py:FACTORY")
    x, y, _ = load_data(args.data, args.split, args.root, n)
    model = load_model(
        args.model,
        args.weights,
        dataset=args.dataset,
        threat_model=args.threat_model,
        model_dir=args.model_dir,
        download=args.download,
    )
    return _on_device(args, model, x, y)


def _on_device(args: argparse.Namespace, model: torch.nn.Module, x, y):
    device = resolve_device(args.device, model)
    model = model.to(device).eval()
    meta = {
        "model": args.model or args.model_module,
        # the file's content hash, not its name: the same weights moved or renamed resume
        "weights": weights_digest(args.weights) if args.weights else None,
        "data": args.data,
        "split": args.split,
    }
    return model, x, y, device, meta


def weights_digest(path: str | os.PathLike) -> str:
    """``"sha256:<first 16 hex digits>"`` of a weights file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


#: the files of a command whose run is one report.json (affine, spatial)
REPORT_FILES = ("report.json",)


def add_out_arguments(group: argparse._ArgumentGroup, what: str) -> None:
    """--out DIR (``what`` it writes), --overwrite and --no-progress."""
    group.add_argument("--out", metavar="DIR", help=what)
    group.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


def write_command_report(
    out_dir: str | Path,
    report: dict[str, Any],
    overwrite: bool,
    names: tuple[str, ...] = REPORT_FILES,
) -> Path:
    """Write ``report`` atomically as ``OUT_DIR/report.json``; with ``overwrite`` the earlier
    run's files ``names`` are removed first. Return the path."""
    with writing(out_dir):
        if overwrite:
            clear_run(out_dir, names)
        return write_json(Path(out_dir) / "report.json", report)
