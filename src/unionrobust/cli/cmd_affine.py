"""``unionrobust affine``: affine attacks mixing two perturbation types (Tramèr & Boneh §2.5)."""

from __future__ import annotations

import argparse
import time

import torch

from unionrobust.attacks.affine import affine_attack, affine_contains, check_betas
from unionrobust.cli.common import (
    add_force_argument,
    add_model_data_arguments,
    batches,
    int_arg,
    load_model_and_data,
    write_report,
)
from unionrobust.errors import UnionRobustError, check_budget, check_seed
from unionrobust.evaluation.inputs import progress_bar
from unionrobust.reporting.tables import format_table
from unionrobust.threats import parse

HELP = "affine attacks: beta*S1 compounded with (1-beta)*S2 (lp + lp, or linf + rotations)"
DESCRIPTION = """\
Affine attacks (Tramer & Boneh 2019, section 2.5): a perturbation from beta*S1 compounded with
one from (1-beta)*S2. For two lp balls (e.g. "linf:0.3, l1:10") both parts are updated in
alternation; for linf with rotation-translation ("linf:0.3, rt:30:3") k random transforms from
beta*S_RT are drawn and each is attacked with linf PGD of budget (1-beta)*eps, keeping the worst.

The table gives the accuracy at each beta. beta = 1 is the attack on S1 alone and beta = 0 on
S2 alone, so 'union' (robust at both ends) is the accuracy against the union of S1 and S2 with
these attacks, and 'affine' (robust at every beta) against the affine adversary. On linear
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
    add_force_argument(a)
    a.add_argument("--loss", default="ce", choices=("ce", "cw"), help="attack loss")
    a.add_argument("--out", metavar="DIR", help="write report.json to DIR")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    union = parse(args.threats)
    if len(union) != 2:
        raise UnionRobustError(f"--threats needs exactly two threat models, got {union.spec!r}")
    try:
        betas = check_betas([float(b) for b in args.betas.split(",")])
    except ValueError:
        raise UnionRobustError(f"--betas must be numbers in [0, 1], got {args.betas!r}") from None
    model, x, y, device, meta = load_model_and_data(args)
    steps = check_budget("--steps", args.steps, args.force)
    seed = check_seed(args.seed, "--seed")
    batch = int_arg(args.batch_size, "--batch-size", 1)
    k = check_budget("--k", args.k, args.force)
    s1, s2 = union.members
    robust = {}
    seconds = {}
    with progress_bar(len(betas) * int(x.shape[0]), "affine", not args.no_progress) as bar:
        for beta in betas:
            atk = affine_attack(s1, s2, k=k, betas=[beta], steps=steps, loss=args.loss, seed=seed)
            flags = []
            t0 = time.perf_counter()
            for _, xb, yb, ids in batches(x, y, batch, device):
                res = atk(model, xb, yb, ids)
                ok = affine_contains(res, xb, atk)
                flags.append((~(res.success & ok)).cpu())
                if bar is not None:
                    bar.set_postfix_str(f"beta={beta:g}")
                    bar.update(int(xb.shape[0]))
            seconds[beta] = time.perf_counter() - t0
            robust[beta] = torch.cat(flags)
    rows = [
        [f"beta={b:g}", f"{100 * robust[b].double().mean():.2f}", f"{seconds[b]:.1f}"]
        for b in betas
    ]
    ends = [b for b in betas if b in (0.0, 1.0)]
    union_acc = affine_acc = None
    if len(ends) == 2:
        union_acc = float((robust[0.0] & robust[1.0]).double().mean())
        rows.append(["union (beta in {0,1})", f"{100 * union_acc:.2f}", "-"])
    all_r = torch.stack([robust[b] for b in betas]).all(0)
    affine_acc = float(all_r.double().mean())
    rows.append(["affine (every beta)", f"{100 * affine_acc:.2f}", "-"])
    print(
        f"affine attack on {union.spec}: beta*{s1.spec} + (1-beta)*{s2.spec}, {x.shape[0]} inputs"
    )
    print(format_table(["attack", "accuracy %", "seconds"], rows))
    if args.out:
        path = write_report(
            args.out,
            {
                "threats": union.spec,
                "betas": list(betas),
                "accuracy": {str(b): float(robust[b].double().mean()) for b in betas},
                "union_accuracy": union_acc,
                "affine_accuracy": affine_acc,
                "steps": steps,
                "model": meta,
            },
        )
        print(f"wrote {path}")
    return 0
