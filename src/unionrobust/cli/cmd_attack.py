"""``unionrobust attack``: run one attack against a union and save the adversarial examples."""

from __future__ import annotations

import argparse

from unionrobust.attacks.registry import attack_names
from unionrobust.cli.common import (
    DEFAULT_THREATS,
    add_model_data_arguments,
    int_arg,
    load_model_and_data,
)
from unionrobust.errors import unknown_name
from unionrobust.evaluation.attack_report import (
    ATTACK_FILES,
    AttackReport,
    attack_report,
    union_attack,
    write_attack_outputs,
)
from unionrobust.outdir import owned_folder
from unionrobust.reporting.tables import check_notes
from unionrobust.threats import parse

HELP = "run one attack against a union of threat models and save the adversarial examples"
DESCRIPTION = """\
Run a single attack against a union of perturbation models and report how often it succeeds.

With a union of several threat models, --attack msd runs Multi Steepest Descent (Maini et al.
2020), which searches all balls inside one loop; any other attack (pgd, apgd-ce, apgd-t, fgsm,
...) is run once per threat model and, per example, the strongest result is kept (worst case
over the union). Every adversarial example is re-checked (inside a ball of the union and the
[0,1] box, and misclassified) before it counts.

Prints the attack's success rate on correctly classified points and the robust accuracy. With
--out DIR it writes report.json and adversarial.safetensors (x_adv, y, success, threat_index:
the member of the union whose ball holds each x_adv, -1 where x_adv = x). The output folder is
checked (and locked) before the attack starts; one that already holds a run needs --overwrite.

For an honest robustness number use 'unionrobust eval' (several attacks per threat model)."""
EPILOG = """\
examples:
  unionrobust attack --model mnist-cnn --weights w.safetensors --attack msd --steps 100 \\
      --threats "linf:0.3, l2:2, l1:10" --n 500 --out runs/msd
  unionrobust attack --model lenet --weights w.safetensors --attack apgd-ce --threats l2:2"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    add_model_data_arguments(parser)
    a = parser.add_argument_group("attack")
    a.add_argument(
        "--attack",
        default="pgd",
        help="attack name: msd, or one run per threat model such as pgd, fgsm, mim, apgd-ce, "
        "apgd-t (default: %(default)s; 'list' shows all)",
    )
    a.add_argument(
        "--threats",
        default=DEFAULT_THREATS,
        metavar="SPEC",
        help="the union, as comma-separated norm:radius (default: '%(default)s')",
    )
    a.add_argument("--steps", metavar="T", help="iterations per restart (attack default if unset)")
    a.add_argument("--restarts", metavar="R", help="restarts (attack default if unset)")
    a.add_argument("--out", metavar="DIR", help="write report.json and adversarial.safetensors")
    a.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.attack == "list":
        print("\n".join(attack_names()))
        return 0
    threats = parse(args.threats)
    if args.attack not in attack_names():
        raise unknown_name("attack", args.attack, attack_names())
    steps = None if args.steps is None else int_arg(args.steps, "--steps", 1)
    restarts = None if args.restarts is None else int_arg(args.restarts, "--restarts", 1)
    batch_size = int_arg(args.batch_size, "--batch-size", 1)
    seed = int_arg(args.seed, "--seed", 0)
    union_attack(args.attack, threats, steps, restarts, seed)  # bad options fail before loading
    with owned_folder(args.out, ATTACK_FILES, args.overwrite):  # checked before the attack
        model, x, y, device, meta = load_model_and_data(args, require_weights=True)
        report = attack_report(
            model,
            x,
            y,
            args.attack,
            threats,
            steps=steps,
            restarts=restarts,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=not args.no_progress,
            meta=meta,
        )
        print(format_attack(report))
        if args.out:
            json_path, adv_path = write_attack_outputs(report, args.out, args.overwrite)
            print(f"wrote {json_path} and {adv_path}")
    return 0


def format_attack(report: AttackReport) -> str:
    """The screen summary of an attack report."""
    d = report.to_dict()
    ok = report.clean_correct
    lo, hi = d["robust_accuracy_ci95"]
    lines = [
        f"attack {report.attack} on {', '.join(report.threats)} | {d['n_examples']} examples "
        f"| seed {report.seed}",
        f"clean accuracy   {100 * d['clean_accuracy']:.1f}%",
        f"success rate     {100 * d['success_rate']:.1f}% of correctly classified points "
        f"({int((report.success & ok).sum())}/{int(ok.sum())})",
        f"robust accuracy  ≤ {100 * d['robust_accuracy']:.1f}%  95% CI [{100 * lo:.1f}, "
        f"{100 * hi:.1f}] (an upper bound: one attack; 'unionrobust eval --suite standard' "
        "for the strong number)",
    ]
    if len(report.threats) > 1:
        by = d["successes_by_threat"]
        lines.append("successes by threat: " + ", ".join(f"{k} {v}" for k, v in by.items()))
    return "\n".join([*lines, *check_notes(report.rejected, report.nonfinite)])
