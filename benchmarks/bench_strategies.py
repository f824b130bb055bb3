"""Time per training batch of each strategy relative to single-threat AT (issues 3 and 9).

Same model, same data, same number of attack steps for every strategy, all measured in ONE run
with the strategies interleaved round by round (so machine load drifts hit all of them alike);
the figure per strategy is the median of its rounds, in process CPU time with one torch thread
(other jobs on the machine do not count). A batch = strategy call (attacks + loss forward) +
backward + optimiser step. Targets (issue 9): E-AT ≤ 1.05×, MSD ≤ 1.8×, MAX and AVG ≤ 3.0×
single-threat ℓ∞ AT (P∞). ``msd-1g`` is MSD with ``select="gradient"`` (one-gradient MSD).
The glibc allocator is tuned as ``import unionrobust`` tunes it (``unionrobust.allocator``);
for glibc's defaults run with ``UNIONROBUST_MALLOC=system`` (``--no-malloc-tuning`` checks it).
``--profile NAME`` prints the torch.profiler table of one batch of
strategy NAME instead.

    python benchmarks/bench_strategies.py [--models small-cnn,mnist-cnn] [--batch 64] [--steps 10]
"""

from __future__ import annotations

import argparse

import torch
from _common import interleaved, machine_note, markdown_table, set_threads, use_allocator

from unionrobust.data import load_embedded_mnist
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
    "msd-1g",
    "max",
    "avg",
    "minmax",
]
TARGETS = {
    "eat": "≤ 1.05",
    "eat-uniform": "≤ 1.05",
    "msd": "≤ 1.8",
    "msd-1g": "≤ 1.8",
    "max": "≤ 3.0",
    "avg": "≤ 3.0",
}
#: bench names that are a registered strategy with fixed options
VARIANTS = {"msd-1g": ("msd", {"select": "gradient"})}


def build(name: str, steps: int):
    base, fixed = VARIANTS.get(name, (name, {}))
    opts = {} if base == "natural" else {"steps": steps}
    return make_strategy(base, UNION, **opts, **fixed)


def one_batch(strategy, model, opt, x, y):
    def run() -> None:
        opt.zero_grad(set_to_none=True)
        out = strategy(model, x, y)
        out.loss.backward()
        opt.step()

    return run


def profile(name: str, model_name: str, args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    model, opt, x, y = setup(model_name, args.batch)
    run = one_batch(build(name, args.steps), model, opt, x, y)
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(f"### {name} on {model_name}, batch {args.batch}, {args.steps} steps\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def setup(model_name: str, batch: int):
    x, y = load_embedded_mnist("train")
    x, y = x[:batch], y[:batch]
    torch.manual_seed(0)
    model = build_model(model_name).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    return model, opt, x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="small-cnn,mnist-cnn")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--profile", metavar="NAME", help="profile one batch of this strategy")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="glibc defaults")
    args = ap.parse_args()
    set_threads(args.threads)
    use_allocator(args.no_malloc_tuning)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.profile:
        for m in models:
            profile(args.profile, m, args)
        return
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    print(
        f"batch {args.batch}, {args.steps} attack steps, union {UNION}, {args.rounds} rounds, "
        f"{machine_note()}\n"
    )
    for model_name in models:
        model, opt, x, y = setup(model_name, args.batch)
        fns = {n: one_batch(build(n, args.steps), model, opt, x, y) for n in names}
        med = interleaved(fns, warmup=1, rounds=args.rounds)
        base = med.get("pinf") or next(iter(med.values()))
        singles = [med[n] for n in ("pinf", "p2", "p1") if n in med]
        mean_single = sum(singles) / len(singles)
        rows = [
            [n, 1000 * med[n], med[n] / base, med[n] / mean_single, TARGETS.get(n, "")]
            for n in names
        ]
        print(f"### {model_name}\n")
        head = ["strategy", "ms / batch", "× P∞ AT", "× mean(P∞, P2, P1) AT", "target"]
        print(markdown_table(head, rows) + "\n", flush=True)


if __name__ == "__main__":
    main()
