"""Our MultiRobustBench metrics vs MultiRobustBench's own ``metrics.py`` (issue 12).

Reads MultiRobustBench's ``metrics.py`` from a local checkout (it holds the leaderboard's
reference accuracies ``ATA`` and ``CR_ind_avg`` / ``CR_ind_worst``), draws a random defence's
accuracies on its ℓp grid, and prints both implementations' CR side by side; also checks that
our ``mrb_grid("cifar10")`` strengths are the keys of its ``ATA`` table.

    python benchmarks/bench_multirobust.py PATH/TO/multirobustbench/metrics.py [--seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import random

from unionrobust.evaluation import multirobust as mrb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", help="MultiRobustBench's metrics.py")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location("mrb_metrics", args.metrics)
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)  # their file: a table and two functions

    families = list(mrb.GRIDS["cifar10"])
    grid = mrb.mrb_grid("cifar10")
    for f in families:
        same = {mrb.eps_key(e) for e in grid[f]} == set(theirs.ATA[f])
        print(f"{f}: our 20 strengths are the keys of their ATA table: {same}")
    rng = random.Random(args.seed)
    defence = {"NoAttack": 85.0}
    for f in families:
        defence[f] = {k: v * rng.uniform(0.3, 1.2) for k, v in theirs.ATA[f].items()}
    their_avg, their_avg_f = theirs.CR_ind_avg(families, defence)
    their_worst, their_worst_f = theirs.CR_ind_worst(families, defence)
    ours = mrb.competitiveness_ratio(defence, theirs.ATA, families)
    print("\n| quantity | MultiRobustBench | unionrobust |\n|---|---|---|")
    print(f"| CR_ind_avg | {their_avg:.10f} | {ours['CR_ind_avg']:.10f} |")
    print(f"| CR_ind_worst | {their_worst:.10f} | {ours['CR_ind_worst']:.10f} |")
    for f in families:
        fam = ours["per_family"][f]
        print(f"| {f} avg | {their_avg_f[f]:.4f} | {fam['avg']:.4f} |")
        print(f"| {f} worst | {their_worst_f[f]:.4f} | {fam['worst']:.4f} |")


if __name__ == "__main__":
    main()
