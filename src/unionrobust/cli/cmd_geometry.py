"""``unionrobust geometry``: which ℓp radii a union of ℓ1 and ℓ∞ balls (or its hull) covers."""

from __future__ import annotations

import argparse
import json
import math

from unionrobust.errors import UnionRobustError, check_finite
from unionrobust.geometry.unions import (
    ball_contains,
    check_dim,
    check_p,
    eat_covers_l2,
    largest_lp_ball_in_hull,
    largest_lp_ball_in_union,
    overlap_range,
    regime,
)
from unionrobust.resources import check_memory

HELP = "geometry of B_1 ∪ B_inf: largest lp balls inside, containment, E-AT's l2 rule"
DESCRIPTION = """\
Largest lp ball inside the union B_1(eps1) ∪ B_inf(epsinf) and inside its convex hull
(Croce & Hein 2022, Prop. 3.1 and Thm. 3.1), containment between the balls, the radii where an
l-inf (l1) ball and the l2 ball overlap without either containing the other (Wang et al.,
App. E.3), and E-AT's rule: training on l1 and l-inf alone covers the l2 radius if the hull's
largest l2 ball is at least that large (exact for affine classifiers). Balls are centred at 0 in
R^d; the pixel box [0,1]^d is ignored.

example:  unionrobust geometry --dim 784 --l1 10 --linf 0.3 --l2 2
"""


def _fmt_p(p: float) -> str:
    return "inf" if math.isinf(p) else f"{p:g}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, required=True, help="input dimension d (e.g. 784)")
    parser.add_argument("--l1", type=float, required=True, help="l1 radius eps1")
    parser.add_argument("--linf", type=float, required=True, help="l-inf radius epsinf")
    parser.add_argument("--l2", type=float, default=None, help="l2 radius to check (optional)")
    parser.add_argument(
        "--p",
        default="1,2,inf",
        help="comma-separated p values for the largest-ball table (default: 1,2,inf)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


#: peak bytes per dimension of :func:`compute` (measured: ~31, a few float64 vectors of length d)
BYTES_PER_DIM = 40


def compute(d: int, eps1: float, epsinf: float, eps2: float | None, ps: list[float]) -> dict:
    """Every number the command prints, as a JSON-ready dict."""
    d = check_dim(d)
    check_memory(BYTES_PER_DIM * d, f"geometry --dim {d}", "lower --dim")
    eps1, epsinf = check_finite("--l1", eps1, 0.0), check_finite("--linf", epsinf, 0.0)
    out: dict = {
        "dim": d,
        "eps1": eps1,
        "epsinf": epsinf,
        "box_ignored": True,
        "regime": regime(d, eps1, epsinf),
        "nontrivial_eps1_range": [epsinf, d * epsinf],
        "largest_ball": {
            _fmt_p(p): {
                "union": largest_lp_ball_in_union(d, eps1, epsinf, p),
                "hull": largest_lp_ball_in_hull(d, eps1, epsinf, p),
            }
            for p in ps
        },
    }
    if eps2 is not None:
        eps2 = check_finite("--l2", eps2, 0.0)
        cov = eat_covers_l2(d, eps1, epsinf, eps2)
        inf_lo, inf_hi = overlap_range(d, eps2, 2, math.inf)
        one_lo, one_hi = overlap_range(d, eps2, 2, 1)
        out["eps2"] = eps2
        out["containment"] = {
            "l2_in_linf": ball_contains(2, eps2, math.inf, epsinf, d),
            "linf_in_l2": ball_contains(math.inf, epsinf, 2, eps2, d),
            "l2_in_l1": ball_contains(2, eps2, 1, eps1, d),
            "l1_in_l2": ball_contains(1, eps1, 2, eps2, d),
            "l2_in_union": cov.covered_by_union,
            "l2_in_hull": cov.covered_by_hull,
        }
        out["overlap_ranges"] = {
            "linf": [inf_lo, inf_hi],
            "l1": [one_lo, one_hi],
        }
        out["eat_rule"] = {
            "covers_l2": cov.covered_by_hull,
            "union_covers_l2": cov.covered_by_union,
            "hull_l2_radius": cov.hull_radius,
            "union_l2_radius": cov.union_radius,
        }
    return out


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def render(res: dict) -> str:
    d, e1, ei = res["dim"], res["eps1"], res["epsinf"]
    lines = [
        f"B_1({e1:g}) ∪ B_inf({ei:g}) in R^{d} (centred balls; box [0,1]^d ignored)",
        f"regime: {res['regime']} (non-trivial iff {ei:g} < eps1 < {d * ei:g})",
        "",
        "| p | largest lp ball in union (Prop. 3.1) | in convex hull (Thm. 3.1) |",
        "|---|---|---|",
    ]
    for p, row in res["largest_ball"].items():
        lines.append(f"| {p} | {row['union']:.6g} | {row['hull']:.6g} |")
    if "eps2" in res:
        e2, c, o, r = res["eps2"], res["containment"], res["overlap_ranges"], res["eat_rule"]
        lines += [
            "",
            f"containment with B_2({e2:g}):",
            f"  B_2 ⊆ B_inf: {_yes(c['l2_in_linf'])}    B_inf ⊆ B_2: {_yes(c['linf_in_l2'])}",
            f"  B_2 ⊆ B_1:   {_yes(c['l2_in_l1'])}    B_1 ⊆ B_2:   {_yes(c['l1_in_l2'])}",
            f"  B_2 ⊆ union: {_yes(c['l2_in_union'])}    B_2 ⊆ hull:  {_yes(c['l2_in_hull'])}",
            f"  l-inf radii overlapping B_2({e2:g}) without nesting: "
            f"({o['linf'][0]:.6g}, {o['linf'][1]:.6g})",
            f"  l1 radii overlapping B_2({e2:g}) without nesting:    "
            f"({o['l1'][0]:.6g}, {o['l1'][1]:.6g})",
            "",
            f"E-AT rule for l2 radius {e2:g}: "
            + (
                f"COVERED (hull's l2 radius {r['hull_l2_radius']:.6g} >= {e2:g}; "
                "exact for affine classifiers)"
                if r["covers_l2"]
                else f"NOT covered (hull's l2 radius {r['hull_l2_radius']:.6g} < {e2:g}): "
                "train on l2 too"
            ),
            f"  the union itself {'covers' if r['union_covers_l2'] else 'does not cover'} it "
            f"(union's l2 radius {r['union_l2_radius']:.6g}; a guarantee for any classifier)",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    ps = [check_p(s, "--p") for s in str(args.p).split(",") if s.strip()]
    if not ps:
        raise UnionRobustError("--p needs at least one value, e.g. --p 1,2,inf")
    res = compute(args.dim, args.l1, args.linf, args.l2, ps)
    print(json.dumps(res, indent=2) if args.json else render(res))
    return 0
