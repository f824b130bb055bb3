"""``unionrobust spatial``: rotation-translation attacks (grid or worst-of-k)."""

from __future__ import annotations

import argparse

from unionrobust.attacks.spatial import GridAttack, WorstOfK
from unionrobust.cli.common import (
    REPORT_FILES,
    add_model_data_arguments,
    add_out_arguments,
    int_arg,
    load_model_and_data,
    write_command_report,
)
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.spatial_report import SpatialReport, spatial_report
from unionrobust.outdir import owned_folder
from unionrobust.reporting.tables import check_notes, format_table
from unionrobust.threats import RotationTranslation, parse

HELP = "rotation-translation attack: exhaustive grid or worst-of-k random"
DESCRIPTION = """\
Attack a classifier with rotations and translations (Engstrom et al. 2019; the spatial threat
of Tramer & Boneh 2019): 'grid' tries every point of the threat's lattice (31 angles x 5 x 5
shifts by default, exact within the lattice), 'worst-of-k' k random lattice points per input.
Both stop trying transforms on inputs already misclassified. Every result is re-checked (the
output must be the recorded transform of the input, and the prediction is recomputed there);
a model with non-finite logits on a whole batch is an error. For a union with lp balls use
'unionrobust eval --threats "linf:0.3, rt:30:3"': its suites use the grid attack for rt."""
EPILOG = """\
examples:
  unionrobust spatial --model lenet --weights lenet.safetensors --threat rt:30:3 --n 500
  unionrobust spatial --model lenet --weights lenet.safetensors --attack worst-of-k --k 10"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_data_arguments(parser)
    a = parser.add_argument_group("attack")
    a.add_argument("--threat", default="rt:30:3", metavar="SPEC", help="rt:DEGREES:PIXELS")
    a.add_argument("--attack", default="grid", choices=("grid", "worst-of-k"))
    a.add_argument("--k", default="10", help="worst-of-k: random transforms per input")
    a.add_argument("--n-rot", default="31", help="lattice angles (default: 31)")
    a.add_argument("--n-trans", default="5", help="lattice shifts per axis (default: 5)")
    a.add_argument("--no-shrink", action="store_true", help="try every transform on every input")
    add_out_arguments(a, "write report.json (per-input parameters)")


def run(args: argparse.Namespace) -> int:
    threat = _threat(args)
    threat.check_memory()  # before loading anything: refuse a lattice that cannot fit
    kw = dict(shrink=not args.no_shrink, seed=int_arg(args.seed, "--seed", 0))
    if args.attack == "grid":
        atk = GridAttack(threat, **kw)
    else:
        atk = WorstOfK(threat, k=int_arg(args.k, "--k", 1), **kw)
    batch = int_arg(args.batch_size, "--batch-size", 1)
    with owned_folder(args.out, REPORT_FILES, args.overwrite):
        model, x, y, device, meta = load_model_and_data(args)
        report = spatial_report(
            model, x, y, attack=atk, batch_size=batch, device=device,
            progress=not args.no_progress, meta=meta,
        )  # fmt: skip
        print(format_spatial(report))
        if args.out:
            print(f"wrote {write_command_report(args.out, report.to_dict(), args.overwrite)}")
    return 0


def _threat(args: argparse.Namespace) -> RotationTranslation:
    union = parse(args.threat)
    if len(union) != 1 or not isinstance(union[0], RotationTranslation):
        raise UnionRobustError(
            f"--threat must be one rotation-translation 'rt:30:3', got {args.threat!r}"
        )
    base = union[0]
    return RotationTranslation(
        base.max_rot,
        base.max_trans,
        int_arg(args.n_rot, "--n-rot", 1),
        int_arg(args.n_trans, "--n-trans", 1),
    )


def format_spatial(report: SpatialReport) -> str:
    """The screen summary of a spatial report."""
    d = report.to_dict()
    rows = [
        ["clean", f"{100 * d['clean_accuracy']:.2f}", "-"],
        [
            f"{report.attack} {report.threat}",
            f"{100 * d['robust_accuracy']:.2f}",
            f"{report.seconds:.1f}",
        ],
    ]
    lines = [
        f"spatial attack, lattice {report.lattice_points} points, {d['n_examples']} inputs",
        format_table(["", "accuracy %", "seconds"], rows),
    ]
    return "\n".join([*lines, *check_notes(report.rejected, report.nonfinite)])
