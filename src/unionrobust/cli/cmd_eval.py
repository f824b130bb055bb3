"""``unionrobust eval``: union robustness of a model, from one command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from unionrobust.cli.common import (
    DEFAULT_THREATS,
    add_model_data_arguments,
    int_arg,
    load_model_and_data,
)
from unionrobust.errors import UnionRobustError, check_seed
from unionrobust.evaluation import evaluate, get_suite
from unionrobust.evaluation.extras import Extras, run_extras
from unionrobust.evaluation.mode import EvaluationMode
from unionrobust.evaluation.report import EvaluationReport
from unionrobust.evaluation.verdicts import check_out_dir
from unionrobust.models import model_names
from unionrobust.outdir import check_folder_name, locked_folder
from unionrobust.reporting import format_report, write_reports
from unionrobust.reporting.markdown import (
    curves_note,
    format_corruptions,
    format_curve,
    format_multirobust,
)
from unionrobust.threats import Union, parse

HELP = "evaluate a model's robustness against a union of threat models"
DESCRIPTION = """\
Evaluate a classifier against a union of perturbation models (e.g. l-inf, l2 and l1 balls).

For every test point and every threat model, a suite of attacks looks for an adversarial
example; each attack only runs on points that earlier attacks could not break (a cascade), and
every adversarial example is re-checked (inside its ball and the [0,1] pixel box, and really
misclassified) before it counts. A point is robust for the union if no attack of any threat
model broke it. With --mode union-only (or --union-only) a point broken for any threat model is
not attacked again (exact union accuracy in less time; the per-threat and average figures become
upper bounds, marked); --mode everything runs every attack on every point. The table
shows clean accuracy, accuracy per threat model, union accuracy (1 - R_max) and average
accuracy (1 - R_avg), with 95% confidence intervals, and what each attack contributed.

Suites: 'quick' (PGD per threat, for smoke tests), 'standard' (APGD-CE then targeted APGD-DLR
per threat, as AutoAttack/E-AT), 'msd-paper' / 'msd-paper-cifar' (PGD with the iterations,
step sizes and 10 restarts of Maini et al. 2020), or your own comma-separated attack names.

Every evaluation runs diagnostics (randomised or probability outputs, zero/NaN gradients, training
mode, thresholding first-layer filters, and gradient masking when gradient-free attacks break
points first-order ones could not) and shows any warning under the table.

With --out DIR the per-example verdicts are logged as they come (DIR/verdicts.jsonl); a killed
run continues with --resume. One run at a time owns DIR (a lock); a DIR that already holds a run
needs --resume or --overwrite. At the end DIR holds report.json, verdicts.csv, report.md and a
self-contained report.html (with the first-layer filters and, with --curves, the robustness
curves: accuracy vs radius per threat and for the union, every radius scaled by the same
factor; one attack measures a curve, so its accuracies are upper bounds, marked <=)."""
EPILOG = """\
examples:
  unionrobust eval --model mnist-cnn --weights mnist_cnn.safetensors --n 1000 \\
      --threats "linf:0.3, l2:2, l1:10" --suite standard --out runs/eval1
  unionrobust eval --model-module my_net.py:build --weights net.pt --suite quick --n 200
  unionrobust eval --model mnist-cnn --weights w.safetensors --out runs/eval1 --resume
  unionrobust eval --model mnist-cnn --weights w.safetensors --n 200 --curves 0.5,1,1.5 \\
      --out runs/eval2
  unionrobust eval --model robustbench:Carmon2019Unlabeled --model-dir models --data cifar10 \\
      --root data/cifar-10-batches-bin --n 1000 --threats "linf:8/255" \\
      --mrb-grid cifar10 --out runs/carmon"""

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
        help="quick, standard, rand (randomised models), msd-paper, msd-paper-cifar, full; or "
        "attacks for every threat, e.g. 'apgd-ce, apgd-t'; or per threat with budgets, e.g. "
        "'linf:0.3=apgd-ce(steps=200,restarts=2)+square(queries=10000)'; 'quick(steps=50)', "
        "'rand(repeats=20)' (default: %(default)s)",
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
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it such a folder is refused)",
    )
    e.add_argument(
        "--format",
        choices=("markdown", "plain"),
        default="markdown",
        help="table style on screen (default: %(default)s)",
    )
    e.add_argument(
        "--mode",
        choices=[m.value for m in EvaluationMode],
        default=EvaluationMode.PER_THREAT.value,
        help="which points each attack runs on: 'per-threat' (default: the cascade; exact "
        "per-threat, union and average figures for the suite), 'union-only' (stop attacking a "
        "point once any threat broke it, every threat's first attack before any second one: "
        "the same union accuracy, faster; per-threat and average figures are then upper "
        "bounds, labelled so), 'everything' (every attack on every point: the same verdicts, "
        "slower; fills the 'alone' column of the per-attack table)",
    )
    for flag, mode in (("--union-only", "union-only"), ("--no-union-only", "per-threat")):
        e.add_argument(
            flag, dest="mode", action="store_const", const=EvaluationMode.of(mode).value,
            help=f"the same as --mode {mode}",
        )  # fmt: skip
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_extra_arguments(e)


def _add_extra_arguments(e: argparse._ArgumentGroup) -> None:
    """The optional measurements beyond the union table: curves, CIFAR-10-C, MultiRobustBench."""
    e.add_argument(
        "--curves",
        nargs="?",
        const=DEFAULT_CURVE_SCALES,
        metavar="SCALES",
        help="also compute robustness curves: accuracy at every radius scaled by each factor "
        f"of SCALES (default {DEFAULT_CURVE_SCALES}), per threat and for the union; one "
        "attack (--curve-attack) measures them, so they are upper bounds (marked <=)",
    )
    e.add_argument(
        "--cifar10c",
        metavar="DIR",
        help="also report clean accuracy on every CIFAR-10-C corruption and severity found in "
        "DIR (<corruption>.npy + labels.npy; the first --n images of each)",
    )
    e.add_argument(
        "--mrb-grid",
        metavar="NAME",
        help="also run MultiRobustBench's strength grid NAME (cifar10: 20 strengths each of "
        "linf up to 0.1, l2 up to 2.5, l1 up to 30) with --suite, and report its accuracies, "
        "stability and the competitiveness ratio (CR) against MultiRobustBench's published "
        "reference accuracies (shipped; --mrb-reference replaces them)",
    )
    e.add_argument(
        "--mrb-every",
        default="1",
        metavar="K",
        help="keep every K-th strength of --mrb-grid (ending at the largest; default: all)",
    )
    e.add_argument(
        "--mrb-reference",
        metavar="FILE",
        help="JSON/YAML of reference accuracies (percent) in MultiRobustBench's layout "
        "{NoAttack: a, AutoLinfAttack: {eps: a, ...}, ...} for the competitiveness ratio "
        "(default: MultiRobustBench's published ones for --mrb-grid cifar10)",
    )
    e.add_argument(
        "--curve-attack",
        default="pgd",
        metavar="NAME",
        help="attack for --curves; a minimum-norm attack gives the curve from one run "
        "(default: %(default)s)",
    )


def _options(args: argparse.Namespace) -> tuple[Union, Extras, int, int]:
    """(threats, extras, batch size, seed): every option checked before anything is loaded."""
    if args.resume and not args.out:
        raise UnionRobustError("--resume needs --out DIR (the folder of the run to continue)")
    if args.out is not None:
        check_folder_name(args.out)
    threats = parse(args.threats)
    get_suite(args.suite, threats)  # bad suite names fail before any loading
    extras = Extras(
        scales=None if args.curves is None else parse_scales(args.curves),
        curve_attack=args.curve_attack,
        cifar10c=args.cifar10c,
        mrb_grid=args.mrb_grid,
        mrb_every=int_arg(args.mrb_every, "--mrb-every", 1),
        mrb_reference=args.mrb_reference,
    )
    seed = check_seed(args.seed, "--seed")
    extras.check(threats, seed)
    return threats, extras, int_arg(args.batch_size, "--batch-size", 1), seed


def _warn(report: EvaluationReport) -> None:
    """Diagnostics flags and non-finite logits, on stderr under the table."""
    flags = report.diagnostics.get("flags", [])
    if flags:
        print("\nWARNING (diagnostics): " + ", ".join(flags), file=sys.stderr)
    if "randomized" in flags and report.repeats == 1:
        print(
            "the model is randomised (two forward passes differ): evaluate it with --suite rand "
            "(EOT APGD, each final point re-checked K of K times); these figures overstate it",
            file=sys.stderr,
        )
    masking = (report.diagnostics.get("gradient_masking") or {}).get("per_threat", {})
    for spec, row in masking.items():  # the evidence: which points, which filters
        if row.get("flag"):
            print(f"WARNING (gradient masking {spec}): {row['message']}", file=sys.stderr)
    if report.nonfinite:
        print(
            f"\nWARNING: the model returned non-finite logits for {report.nonfinite} "
            "example(s), counted as misclassified",
            file=sys.stderr,
        )


def _show(name: str, value: Any) -> None:
    """Print one optional measurement as it finishes."""
    if name == "curves":
        for c in value:
            print("\n" + format_curve(c))
        note = curves_note(value)
        if note:
            print("\n" + note)
    elif name == "corruptions":
        print("\nCIFAR-10-C accuracy\n\n" + format_corruptions(value))
    else:
        tables = "\n\n".join(format_multirobust(value))
        print("\nMultiRobustBench grid (accuracy in %)\n\n" + tables)


def run(args: argparse.Namespace) -> int:
    if args.model == "list":
        print("\n".join(model_names()))
        return 0
    threats, extras, batch_size, seed = _options(args)
    with locked_folder(args.out):  # held until the last report file is written
        check_out_dir(args.out, args.resume, args.overwrite)
        model, x, y, device, meta = load_model_and_data(args, require_weights=True)
        report = evaluate(
            model, x, y, threats=threats, suite=args.suite, batch_size=batch_size,
            out_dir=args.out, resume=args.resume, overwrite=args.overwrite, seed=seed,
            device=device, progress=not args.no_progress, meta=meta, mode=args.mode,
        )  # fmt: skip
        print(format_report(report, args.format))
        _warn(report)
        measured = run_extras(
            model, x, y, threats, extras, suite=args.suite, n=None if args.n is None else len(x),
            seed=seed, batch_size=batch_size, device=device, progress=not args.no_progress,
            show=_show,
        )  # fmt: skip
        if args.out:
            written = write_reports(args.out, report, model=model, **measured)
            names = ["report.json", "verdicts.csv", *written]
            print(f"\nwrote {', '.join(str(Path(args.out) / n) for n in dict.fromkeys(names))}")
    return 0
