"""``unionrobust theory``: Tramèr & Boneh's Theorem 1 on the synthetic task, and OPT bounds."""

from __future__ import annotations

import argparse
import json

from unionrobust.errors import UnionRobustError, check_seed
from unionrobust.resources import check_memory
from unionrobust.theory.synthetic import SyntheticTask
from unionrobust.theory.theorem1 import theorem1_bytes, theorem1_experiment

HELP = "Theorem 1 of Tramer & Boneh on the synthetic task: R_avg over l-inf and l1 >= 1/2"
DESCRIPTION = """\
Tsipras et al.'s distribution (Tramer & Boneh 2019, eq. 2): y uniform in {-1,+1}, x0 = y w.p. p0
else -y, x1..xd ~ N(y*eta, 1) with eta = alpha/sqrt(d). For a family of classifiers (the robust
and natural classifiers of §2.3 and sweeps of linear classifiers mixing them: exact risks from
closed-form worst-case perturbations; a few non-linear ones: Monte-Carlo lower bounds from the
proof's perturbations) prints the clean risk, the risks under l-inf (eps = 2*eta) and l1 (eps = 2),
R_avg and R_max. Theorem 1: R_avg >= 1/2 for every classifier. Also prints the optimal risks
OPT(R_avg) = mean and OPT(R_max) = max of the best single-threat risks (§4).

example:  unionrobust theory --dim 200 --alpha 2 --p0 0.9
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, default=200, help="number d of weak features (200)")
    parser.add_argument("--alpha", type=float, default=2.0, help="eta = alpha/sqrt(d) (2.0)")
    parser.add_argument("--p0", type=float, default=0.9, help="P(x0 = y), in [0.5, 1) (0.9)")
    parser.add_argument("--mix", type=int, default=11, help="grid points per sweep (11)")
    parser.add_argument(
        "--samples", type=int, default=20000, help="Monte-Carlo samples, non-linear models"
    )
    parser.add_argument("--seed", default="0", help="random seed, in [0, 2**63) (0)")
    parser.add_argument(
        "--radius-scale",
        type=float,
        default=1.0,
        help="multiply Theorem 1's radii (1.0; below 1/2 the bound fails, e.g. for f=sign(x0))",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def render(res: dict) -> str:
    lines = [
        f"synthetic task: d={res['d']}, alpha={res['alpha']:g}, p0={res['p0']:g}, "
        f"eta={res['eta']:.4g};  radii: l-inf {res['eps_inf']:.4g}, l1 {res['eps_1']:.4g}",
        "",
        "| classifier | method | clean | R(l-inf) | R(l1) | R_avg | R_max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        se = f" ± {r['stderr']:.3f}" if r["stderr"] > 0 else ""
        lines.append(
            f"| {r['name']} | {r['method']} | {r['clean']:.4f} | {r['linf']:.4f} | "
            f"{r['l1']:.4f} | {r['avg']:.4f}{se} | {r['max']:.4f} |"
        )
    ob, names = res["opt_bounds"], res["best_single_names"]
    lines += [
        "",
        f"min R_avg over the family: {res['min_avg']:.4f}  -> R_avg >= 1/2 - 3 s.e. for all: "
        + ("yes" if res["holds"] else "NO")
        + (
            " (Theorem 1)"
            if res["radius_scale"] == 1.0
            else f" (radii scaled by {res['radius_scale']:g}: Theorem 1 does not apply)"
        ),
        f"best single-threat risks: l-inf {ob['risks']['linf']:.4f} ({names['linf']}), "
        f"l1 {ob['risks']['l1']:.4f} ({names['l1']})",
        f"OPT(R_avg) = {ob['opt_avg']:.4f}, OPT(R_max) = {ob['opt_max']:.4f} "
        "(what one model could reach without a trade-off; Tramer & Boneh §4)",
    ]
    return "\n".join(lines)


def _memory_need(args: argparse.Namespace) -> tuple[float, str, str]:
    """(bytes, what, fix) for :func:`check_memory`, blaming the option whose term dominates:
    --mix (the linear family) or --samples (the Monte-Carlo bounds), each with --dim."""
    linear = theorem1_bytes(args.dim, args.mix, 0, args.radius_scale)
    total = theorem1_bytes(args.dim, args.mix, args.samples, args.radius_scale)
    if linear >= total - linear:
        return total, f"theory --mix {args.mix} (with --dim {args.dim})", "lower --mix or --dim"
    return total, f"theory --dim {args.dim}", "lower --dim or --samples"


def run(args: argparse.Namespace) -> int:
    seed = check_seed(args.seed, "--seed")
    if args.samples < 1:
        raise UnionRobustError(f"--samples must be >= 1, got {args.samples}")
    check_memory(*_memory_need(args))
    task = SyntheticTask(d=args.dim, alpha=args.alpha, p0=args.p0)
    result = theorem1_experiment(task, args.mix, args.samples, seed, args.radius_scale)
    res = result.as_dict()
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0
