"""``unionrobust eval``: union robustness of a model, from one command."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from unionrobust.errors import UnionRobustError

HELP = "evaluate a model's robustness against a union of threat models"
DESCRIPTION = """\
Evaluate a classifier against a union of perturbation models (e.g. l-inf, l2 and l1 balls).

For every test point and every threat model, a suite of attacks looks for an adversarial
example; each attack only runs on points that earlier attacks could not break (a cascade), and
every adversarial example is re-checked (inside its ball and the [0,1] pixel box, and really
misclassified) before it counts. A point is robust for the union if no attack of any threat
model broke it. With --union-only a point broken for any threat model is not attacked again
(exact union accuracy in less time; the per-threat figures become upper bounds). The table
shows clean accuracy, accuracy per threat model, union accuracy (1 - R_max) and average
accuracy (1 - R_avg), with 95% confidence intervals, and what each attack contributed.

Suites: 'quick' (PGD per threat, for smoke tests), 'standard' (APGD-CE then targeted APGD-DLR
per threat, as AutoAttack/E-AT), 'msd-paper' / 'msd-paper-cifar' (PGD with the iterations,
step sizes and 10 restarts of Maini et al. 2020), or your own comma-separated attack names.

Every evaluation runs diagnostics (randomised or probability outputs, zero/NaN gradients, training
mode, thresholding first-layer filters, and gradient masking when gradient-free attacks break
points first-order ones could not) and shows any warning under the table.

With --out DIR the per-example verdicts are logged as they come (DIR/verdicts.jsonl); a killed
run continues with --resume. At the end DIR holds report.json, verdicts.csv, report.md and a
self-contained report.html (with the first-layer filters and, with --curves, the robustness
curves: accuracy vs radius per threat and for the union, every radius scaled by the same
factor)."""
EPILOG = """\
examples:
  unionrobust eval --model mnist-cnn --weights mnist_cnn.safetensors --n 1000 \\
      --threats "linf:0.3, l2:2, l1:10" --suite standard --out runs/eval1
  unionrobust eval --model-module my_net.py:build --weights net.pt --suite quick --n 200
  unionrobust eval --model mnist-cnn --weights w.safetensors --out runs/eval1 --resume
  unionrobust eval --model mnist-cnn --weights w.safetensors --n 200 --curves 0.5,1,1.5 \\
      --out runs/eval2"""

DEFAULT_THREATS = "linf:0.3, l2:2, l1:10"
DEFAULT_CURVE_SCALES = "0.25,0.5,0.75,1,1.25"


def parse_scales(text: str) -> list[float]:
    """'0.5, 1, 1.5' -> [0.5, 1.0, 1.5] (strictly increasing, > 0)."""
    try:
        scales = [float(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise UnionRobustError(f"--curves must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not s > 0 for s in scales) or sorted(set(scales)) != scales:
        raise UnionRobustError(f"--curves needs increasing positive factors, got {text!r}")
    return scales


# --------------------------------------------------------------------------- shared arguments
def add_model_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--model/--model-module/--weights, --data/--root/--split/--n, --batch-size, --seed,
    --device: the arguments every command that runs a model on data shares."""
    m = parser.add_argument_group("model")
    m.add_argument(
        "--model",
        metavar="NAME",
        help="architecture from the model zoo (e.g. mnist-cnn, lenet, small-cnn, "
        "preact-resnet18); see 'unionrobust eval --model list'",
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
    d.add_argument("--n", metavar="N", help="use the first N examples of the split (default: all)")
    r = parser.add_argument_group("run")
    r.add_argument(
        "--batch-size", default="250", metavar="B", help="examples per batch (default: 250)"
    )
    r.add_argument("--seed", default="0", help="seed of the attacks' randomness (default: 0)")
    r.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
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


def load_user_module(spec: str):
    """Build a model from ``FILE.py:FACTORY``: import the file, call the factory."""
    path_text, sep, factory_name = spec.rpartition(":")
    if not sep or not path_text or not factory_name:
        raise UnionRobustError(f"--model-module must look like FILE.py:FACTORY, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise UnionRobustError(f"--model-module: file {path_text!r} not found")
    mod_spec = importlib.util.spec_from_file_location(f"_unionrobust_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise UnionRobustError(f"--model-module: cannot import {path_text!r}")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: report its error in one line
        raise UnionRobustError(f"--model-module: importing {path_text} failed: {err!r}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UnionRobustError(f"--model-module: {path_text} has no function {factory_name!r}")
    model = factory()
    from torch import nn

    if not isinstance(model, nn.Module):
        raise UnionRobustError(
            f"--model-module: {factory_name}() returned {type(model).__name__}, not an nn.Module"
        )
    return model


def load_model_and_data(args: argparse.Namespace):
    """(model on its device, x, y, device, meta) from the shared arguments."""

    from unionrobust.data import as_tensors, get_dataset
    from unionrobust.evaluation.engine import resolve_device
    from unionrobust.models import build_model, load_weights, model_names

    n = None if args.n is None else int_arg(args.n, "--n", 1)
    if bool(args.model) == bool(args.model_module):
        raise UnionRobustError("give exactly one of --model NAME or --model-module FILE.py:FACTORY")
    if args.model is not None and args.model not in model_names():
        from unionrobust.errors import unknown_name

        raise unknown_name("model", args.model, model_names())
    if args.weights is not None and not Path(args.weights).is_file():
        raise UnionRobustError(f"weights file {args.weights!r} not found")
    dataset = get_dataset(args.data, split=args.split, root=args.root)
    x, y = as_tensors(dataset, n)
    if x.shape[0] == 0:
        raise UnionRobustError(f"dataset {args.data!r} ({args.split}) is empty")
    if args.model_module:
        model = load_user_module(args.model_module)
        if args.weights:
            load_weights(model, args.weights)
    else:
        classes = getattr(dataset, "classes", None)
        num_classes = len(classes) if classes else int(y.max()) + 1
        model = build_model(
            args.model,
            num_classes=max(num_classes, 2),
            in_channels=int(x.shape[1]),
            input_size=tuple(int(s) for s in x.shape[2:]),
        )
        if args.weights:
            load_weights(model, args.weights)
    device = resolve_device(args.device, model)
    model = model.to(device).eval()
    meta = {
        "model": args.model or args.model_module,
        # the file's name only: the weights themselves are fingerprinted by the engine, and a
        # moved file must not block --resume
        "weights": Path(args.weights).name if args.weights else None,
        "data": args.data,
        "split": args.split,
    }
    return model, x, y, device, meta


def write_report(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report`` atomically as ``OUT_DIR/report.json`` (folder created); return the path."""
    from unionrobust.evaluation.verdicts import write_json

    return write_json(Path(out_dir) / "report.json", report)


def batches(x, y, batch_size: int, device):
    """Yield ``(start, xb, yb, ids)`` over consecutive batches moved to ``device``; ``ids`` are the
    examples' positions in ``x`` (attack example ids: results do not depend on batching)."""
    import torch

    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        yield start, xb, yb, torch.arange(start, start + xb.shape[0], device=device)


# --------------------------------------------------------------------------- the command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_data_arguments(parser)
    e = parser.add_argument_group("evaluation")
    e.add_argument(
        "--threats",
        default=DEFAULT_THREATS,
        metavar="SPEC",
        help="the union, as comma-separated norm:radius (fractions allowed, e.g. "
        "'linf:8/255, l2:0.5, l1:12'; default: '%(default)s')",
    )
    e.add_argument(
        "--suite",
        default="standard",
        help="quick, standard, msd-paper, msd-paper-cifar, or comma-separated attack names "
        "run for every threat, e.g. 'apgd-ce, apgd-t' (default: %(default)s)",
    )
    e.add_argument(
        "--out",
        metavar="DIR",
        help="write the verdict log, report.json, verdicts.csv, report.md and report.html here",
    )
    e.add_argument(
        "--resume",
        action="store_true",
        help="continue the killed evaluation logged in --out (same settings required)",
    )
    e.add_argument(
        "--format",
        choices=("markdown", "plain"),
        default="markdown",
        help="table style on screen (default: %(default)s)",
    )
    e.add_argument(
        "--union-only",
        action="store_true",
        help="stop attacking a point once any threat broke it, running every threat's first "
        "attack before any second one: the same union accuracy, faster; the per-threat "
        "figures are then upper bounds (labelled so)",
    )
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument(
        "--curves",
        nargs="?",
        const=DEFAULT_CURVE_SCALES,
        metavar="SCALES",
        help="also compute robustness curves: accuracy at every radius scaled by each factor "
        f"of SCALES (default {DEFAULT_CURVE_SCALES}), per threat and for the union",
    )
    e.add_argument(
        "--cifar10c",
        metavar="DIR",
        help="also report clean accuracy on every CIFAR-10-C corruption and severity found in "
        "DIR (<corruption>.npy + labels.npy; the first --n images of each)",
    )
    e.add_argument(
        "--curve-attack",
        default="pgd",
        metavar="NAME",
        help="attack for --curves; a minimum-norm attack gives the curve from one run "
        "(default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from unionrobust.evaluation import evaluate, get_suite
    from unionrobust.reporting import format_report
    from unionrobust.threats import parse

    if args.model == "list":
        from unionrobust.models import model_names

        print("\n".join(model_names()))
        return 0
    if args.resume and not args.out:
        raise UnionRobustError("--resume needs --out DIR (the folder of the run to continue)")
    threats = parse(args.threats)
    get_suite(args.suite, threats)  # bad suite names fail before any loading
    scales = None if args.curves is None else parse_scales(args.curves)
    if scales is not None:
        from unionrobust.attacks.registry import attack_names
        from unionrobust.errors import unknown_name

        if args.curve_attack not in attack_names():
            raise unknown_name("attack", args.curve_attack, attack_names())
    batch_size = int_arg(args.batch_size, "--batch-size", 1)
    seed = int_arg(args.seed, "--seed", 0)
    model, x, y, device, meta = load_model_and_data(args)
    report = evaluate(
        model,
        x,
        y,
        threats=threats,
        suite=args.suite,
        batch_size=batch_size,
        out_dir=args.out,
        resume=args.resume,
        seed=seed,
        device=device,
        progress=not args.no_progress,
        meta=meta,
        union_only=args.union_only,
    )
    print(format_report(report, args.format))
    flags = report.diagnostics.get("flags", [])
    if flags:
        print("\nWARNING (diagnostics): " + ", ".join(flags), file=sys.stderr)
    curves = None
    if scales is not None:
        from unionrobust.evaluation.curves import union_curve
        from unionrobust.reporting.markdown import format_curve

        curves = union_curve(
            model, x, y, threats, scales, args.curve_attack, seed=seed, batch_size=batch_size
        )
        for c in curves:
            print("\n" + format_curve(c))
    corruptions = None
    if args.cifar10c:
        from unionrobust.evaluation.corruptions import corruption_accuracy
        from unionrobust.reporting.markdown import format_corruptions

        n = None if args.n is None else int_arg(args.n, "--n", 1)
        corruptions = corruption_accuracy(model, args.cifar10c, n=n, batch_size=batch_size)
        print("\nCIFAR-10-C accuracy\n\n" + format_corruptions(corruptions))
    if args.out:
        from unionrobust.reporting.html import write_reports

        written = write_reports(
            args.out, report, model=model, curves=curves, corruptions=corruptions
        )
        names = ["report.json", "verdicts.csv", *written]
        print(f"\nwrote {', '.join(str(Path(args.out) / n) for n in names)}")
    return 0
