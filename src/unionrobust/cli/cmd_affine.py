"""``unionrobust affine``: affine attacks mixing two perturbation types (Tramèr & Boneh §2.5)."""

from __future__ import annotations

import argparse

from unionrobust.attacks.affine import affine_attack, check_betas
from unionrobust.cli.common import (
    REPORT_FILES,
    add_model_data_arguments,
    add_out_arguments,
    int_arg,
    load_model_and_data,
    write_command_report,
)
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation.affine_report import AffineReport, affine_pair, affine_report
from unionrobust.outdir import owned_folder
from unionrobust.reporting.tables import check_notes, format_table
from unionrobust.threats import ThreatModel

HELP = "affine attacks: beta*S1 compounded with (1-beta)*S2 (lp + lp, or linf + rotations)"
DESCRIPTION = """\
Affine attacks (Tramer & Boneh 2019, section 2.5): a perturbation from beta*S1 compounded with
one from (1-beta)*S2. For two lp balls (e.g. "linf:0.3, l1:10") both parts are updated in
alternation; for linf with rotation-translation ("linf:0.3, rt:30:3") k random transforms from
beta*S_RT are drawn and each is attacked with linf PGD of budget (1-beta)*eps, keeping the worst.

The table gives the accuracy at each beta. beta = 1 is the attack on S1 alone and beta = 0 on
S2 alone, so 'union' (robust at both ends) is the accuracy against the union of S1 and S2 with
these attacks, and 'affine' (robust at every beta) against the affine adversary. Every output
is re-checked (its recorded parts inside beta*S1 and (1-beta)*S2, the prediction recomputed);
a model with non-finite logits on a whole batch is an error. On linear
models the two agree (Claim 3); for linf + rotations the affine adversary can be stronger
(Theorem 4)."""
EPILOG = """\
examples:
  unionrobust affine --model lenet --weights lenet.safetensors --threats "linf:0.3, l1:10"
  unionrobust affine --model lenet --weights lenet.safetensors --threats "linf:0.3, rt:30:3" \\
      --betas 0,0.25,0.5,0.75,1 --k 10 --out runs/affine"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_data_arguments(parser)
    a = parser.add_argument_group("attack")
    a.add_argument("--threats", default="linf:0.3, l1:10", metavar="SPEC", help="S1, S2")
    a.add_argument(
        "--betas", default="0,0.25,0.5,0.75,1", help="beta values (default: %(default)s)"
    )
    a.add_argument("--steps", default="50", metavar="T", help="PGD iterations (default: 50)")
    a.add_argument("--k", default="10", help="linf + rt: transforms drawn per beta (default: 10)")
    a.add_argument("--loss", default="ce", choices=("ce", "cw"), help="attack loss")
    add_out_arguments(a, "write report.json to DIR")


def run(args: argparse.Namespace) -> int:
    s1, s2 = affine_pair(args.threats)
    try:
        betas = check_betas([float(b) for b in args.betas.split(",")])
    except ValueError:
        raise UnionRobustError(f"--betas must be numbers in [0, 1], got {args.betas!r}") from None
    options = dict(
        k=int_arg(args.k, "--k", 1),
        steps=int_arg(args.steps, "--steps", 1),
        loss=args.loss,
        seed=int_arg(args.seed, "--seed", 0),
    )
    affine_attack(s1, s2, betas=betas, **options)  # bad options fail before loading
    batch = int_arg(args.batch_size, "--batch-size", 1)
    with owned_folder(args.out, REPORT_FILES, args.overwrite):
        model, x, y, device, meta = load_model_and_data(args)
        report = affine_report(
            model, x, y, s1 | s2, betas, **options, batch_size=batch, device=device,
            progress=not args.no_progress, meta=meta,
        )  # fmt: skip
        print(format_affine(report, s1, s2))
        if args.out:
            print(f"wrote {write_command_report(args.out, report.to_dict(), args.overwrite)}")
    return 0


def format_affine(report: AffineReport, s1: ThreatModel, s2: ThreatModel) -> str:
    """The screen summary of an affine report: accuracy per β, then union and affine."""
    rows = [
        [f"beta={b:g}", f"{100 * report.accuracy(b):.2f}", f"{report.seconds[b]:.1f}"]
        for b in report.betas
    ]
    if report.union_accuracy is not None:
        rows.append(["union (beta in {0,1})", f"{100 * report.union_accuracy:.2f}", "-"])
    rows.append(["affine (every beta)", f"{100 * report.affine_accuracy:.2f}", "-"])
    n = report.clean_correct.numel()
    lines = [
        f"affine attack on {report.threats}: beta*{s1.spec} + (1-beta)*{s2.spec}, {n} inputs",
        format_table(["attack", "accuracy %", "seconds"], rows),
    ]
    return "\n".join([*lines, *check_notes(report.rejected, report.nonfinite)])
