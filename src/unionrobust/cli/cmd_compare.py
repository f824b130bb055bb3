"""``unionrobust compare``: train several strategies on the embedded MNIST and compare them."""

from __future__ import annotations

import argparse

from unionrobust.training.compare import (
    ALL_STRATEGIES,
    DEFAULT_N_TEST,
    DEFAULT_STRATEGIES,
    compare,
)

HELP = "train P-inf, MSD, MAX (--strategies all: + AVG, E-AT) side by side and compare them"
DESCRIPTION = """\
The main job: train small models with several strategies on the embedded MNIST subset
(4,000 training digits shipped with the package, no download), evaluate each on the first
--n test points against the union l-inf 0.3, l2 2, l1 10 with the standard suite (APGD-CE
and targeted APGD per threat model, then a survivor round and the gradient-free escalation)
in per-threat mode (every figure exact; --union-only stops attacking a point once one threat
model broke it: cheaper, exact union accuracy, per-threat and average figures upper bounds
marked with <=), print the table (clean, per-threat, union, average accuracy with 95%
intervals, time per epoch, training and evaluation CPU seconds; mean +- std with --seeds > 1)
and write results.md, results.json and compare.png to --out. The default strategies are the
ones that show the MSD paper's pattern within the job's CPU budget; --strategies all adds the
others. --suite quick (20-step PGD) is faster; its figures are all upper bounds. Each
strategy's setup is the built-in config mnist-small-<strategy> ('unionrobust train --config
list'; the recipes of benchmarks/RESULTS.md), adjustable with --set."""
EPILOG = """\
examples:
  unionrobust compare --out runs/compare
  unionrobust compare --strategies all --out runs/compare-all
  unionrobust compare --strategies pinf,msd,eat --seeds 3 --out runs/compare3
  unionrobust compare --set training.epochs=2 --n 200 --out runs/quick"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "--strategies", default=",".join(DEFAULT_STRATEGIES),
        help="comma-separated strategy names, or 'all' for "
        f"{','.join(ALL_STRATEGIES)} (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default: 1)")
    parser.add_argument(
        "--n", type=int, default=DEFAULT_N_TEST,
        help="test points evaluated (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--suite", default="standard", help="evaluation suite: standard or quick (%(default)s)"
    )
    parser.add_argument(
        "--union-only", action=argparse.BooleanOptionalAction, default=False,
        help="union-only evaluation: exact union accuracy, per-threat upper bounds, cheaper "
        "(default: off, every figure exact)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override a config key for every strategy (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=None,
        help="trainings run at once, each in its own process (default: one per CPU core)",
    )  # fmt: skip
    parser.add_argument("--out", default="runs/compare", help="output folder (%(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    compare(
        names, args.out, seeds=args.seeds, n_test=args.n, suite=args.suite,
        union_only=args.union_only, overrides=args.overrides,
        progress=not args.no_progress, jobs=args.jobs,
    )  # fmt: skip
    return 0
