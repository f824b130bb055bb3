"""``unionrobust spatial``: rotation-translation attacks (grid or worst-of-k)."""

from __future__ import annotations

import argparse
import time

import torch

from unionrobust.attacks.spatial import GridAttack, WorstOfK
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
from unionrobust.threats import RotationTranslation, parse

HELP = "rotation-translation attack: exhaustive grid or worst-of-k random"
DESCRIPTION = """\
Attack a classifier with rotations and translations (Engstrom et al. 2019; the spatial threat
of Tramer & Boneh 2019): 'grid' tries every point of the threat's lattice (31 angles x 5 x 5
shifts by default, exact within the lattice), 'worst-of-k' k random lattice points per input.
Both stop trying transforms on inputs already misclassified. Every result is re-checked (the
output must be the recorded transform of the input). For a union with lp balls use
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
    add_force_argument(a)
    a.add_argument("--n-rot", default="31", help="lattice angles (default: 31)")
    a.add_argument("--n-trans", default="5", help="lattice shifts per axis (default: 5)")
    a.add_argument("--no-shrink", action="store_true", help="try every transform on every input")
    a.add_argument("--out", metavar="DIR", help="write report.json (per-input parameters)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    union = parse(args.threat)
    if len(union) != 1 or not isinstance(union[0], RotationTranslation):
        raise UnionRobustError(
            f"--threat must be one rotation-translation 'rt:30:3', got {args.threat!r}"
        )
    base = union[0]
    threat = RotationTranslation(
        base.max_rot,
        base.max_trans,
        int_arg(args.n_rot, "--n-rot", 1),
        int_arg(args.n_trans, "--n-trans", 1),
    )
    threat.check_memory()  # before loading anything: refuse a lattice that cannot fit
    model, x, y, device, meta = load_model_and_data(args)
    seed = check_seed(args.seed, "--seed")
    kw = dict(shrink=not args.no_shrink, seed=seed)
    if args.attack == "grid":
        atk = GridAttack(threat, **kw)
    else:
        atk = WorstOfK(threat, k=check_budget("--k", args.k, args.force), **kw)
    batch = int_arg(args.batch_size, "--batch-size", 1)
    broken, params, clean = [], [], []
    t0 = time.perf_counter()
    with progress_bar(int(x.shape[0]), atk.name, not args.no_progress) as bar:
        for _, xb, yb, ids in batches(x, y, batch, device):
            res = atk(model, xb, yb, ids)
            ok = threat.contains(res.x_adv - xb, xb, params=res.params)
            with torch.no_grad():
                clean.append((model(xb).argmax(1) == yb).cpu())
            broken.append((res.success & ok).cpu())
            params.append(res.params.cpu())
            if bar is not None:
                bar.update(int(xb.shape[0]))
    seconds = time.perf_counter() - t0
    b, p, c = torch.cat(broken), torch.cat(params), torch.cat(clean)
    rows = [
        ["clean", f"{100 * c.double().mean():.2f}", "-"],
        [f"{atk.name} {threat.spec}", f"{100 * (~b).double().mean():.2f}", f"{seconds:.1f}"],
    ]
    points = int(threat.grid().shape[0])
    print(f"spatial attack, lattice {points} points, {x.shape[0]} inputs")
    print(format_table(["", "accuracy %", "seconds"], rows))
    if args.out:
        path = write_report(
            args.out,
            {
                "threat": threat.spec,
                "attack": atk.name,
                "lattice_points": points,
                "clean_accuracy": float(c.double().mean()),
                "robust_accuracy": float((~b).double().mean()),
                "params": p.tolist(),
                "broken": b.tolist(),
                "seconds": seconds,
                "model": meta,
            },
        )
        print(f"wrote {path}")
    return 0
