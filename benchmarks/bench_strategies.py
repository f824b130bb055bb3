"""Time per training batch of each strategy relative to single-threat AT (issue 3 benchmark).

Same model, same data, same number of attack steps for every strategy, all measured in ONE run
with the strategies interleaved round by round (so machine load drifts hit all of them alike);
the figure per strategy is the fastest of its rounds (the least disturbed by other processes).
A batch = strategy call (attacks + loss forward) + backward + optimiser step. Targets from
issue 3: E-AT ≤ 1.05×, MSD ≤ 1.8×, MAX and AVG ≤ 3.1× single-threat AT.

    python benchmarks/bench_strategies.py [--model small-cnn] [--batch 64] [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from unionrobust.models import build_model
from unionrobust.training.strategies import make_strategy

UNION = "linf:0.3, l2:2, l1:10"
STRATEGIES = [
    "natural",
    "pinf",
    "p2",
    "p1",
    "eat",
    "eat-uniform",
    "sat",
    "msd",
    "max",
    "avg",
    "minmax",
]
TARGETS = {"eat": "≤ 1.05", "eat-uniform": "≤ 1.05", "msd": "≤ 1.8", "max": "≤ 3.1", "avg": "≤ 3.1"}


def one_batch(strategy, model, opt, x, y) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    out = strategy(model, x, y)
    out.loss.backward()
    opt.step()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    torch.manual_seed(0)
    model = build_model(args.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    strategies = {
        n: make_strategy(n, UNION, **({} if n == "natural" else {"steps": args.steps}))
        for n in names
    }
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        one_batch(strategies[n], model, opt, x, y)
    for _ in range(args.rounds):
        for n in names:
            times[n].append(one_batch(strategies[n], model, opt, x, y))
    med = {n: min(t) for n, t in times.items()}
    base = med.get("pinf") or next(iter(med.values()))
    singles = [med[n] for n in ("pinf", "p2", "p1") if n in med]
    mean_single = sum(singles) / len(singles)
    print(
        f"model {args.model}, batch {args.batch}, {args.steps} attack steps, union {UNION}, "
        f"{torch.get_num_threads()} threads, best of {args.rounds} rounds\n"
    )
    print("| strategy | ms / batch | × P∞ AT | × mean(P∞, P2, P1) AT | target |")
    print("|---|---:|---:|---:|---|")
    for n in names:
        print(
            f"| {n} | {1000 * med[n]:.1f} | {med[n] / base:.2f} | {med[n] / mean_single:.2f} "
            f"| {TARGETS.get(n, '')} |"
        )


if __name__ == "__main__":
    main()
