"""Union-only ``standard`` vs AutoAttack's APGD pair, interleaved in one process (issue 16).

Issue 16's last CPU target: on the unmasked LeNets, our union-only evaluation (``standard``:
APGD-CE + APGD-T per threat, the survivor round, the Square probe, and the masked tier where a
gradient-free pass broke a point) costs at most AutoAttack's APGD pair alone (APGD-CE +
APGD-T with AutoAttack's standard budgets, once per norm). ``bench_vs_autoattack.py`` reads the
pair's CPU time out of a cached AutoAttack run and ours from another moment; on this shared
machine the speed drifts by 10-20 % between such moments, more than the margins in question.
Here both run in the same process, alternating ``--rounds`` times on the same model and points
(``OMP_NUM_THREADS``-style one thread), and the ratio of the medians is reported along with
every round.

The models are ``bench_vs_autoattack.py``'s (trained there, loaded from its ``--cache``).

    python benchmarks/bench_union_only_vs_pair.py --cache /work/models/bench-aa \\
        --models lenet-max,lenet-msd [--rounds 2] [--n 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import frozen, machine_note, markdown_table, set_threads
from bench_vs_autoattack import (
    MODELS,
    THREATS,
    load_autoattack,
    run_ours,
    standard_autoattack,
    trained_model,
    warm_up,
)

from unionrobust.data import load_embedded_mnist
from unionrobust.threats import parse


def aa_pair(AutoAttack, model, x, y, seed: int, batch_size: int) -> tuple[float, int]:
    """CPU seconds of AutoAttack's APGD-CE + APGD-T (standard budgets) once per norm, and the
    points still robust for every norm (AutoAttack's own count, for orientation)."""
    c0 = time.process_time()
    robust = torch.ones_like(y, dtype=torch.bool)
    for threat in parse(THREATS).members:
        adversary = standard_autoattack(AutoAttack, model, threat, seed)
        adversary.attacks_to_run = ["apgd-ce", "apgd-t"]
        x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
        with torch.no_grad():
            robust &= model(x_adv).argmax(dim=1) == y
    return time.process_time() - c0, int(robust.sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoattack", default="/work/aa", help="folder holding autoattack/")
    p.add_argument("--cache", default="runs/bench-aa/models", help="trained-weights folder")
    p.add_argument("--models", default="lenet-max,lenet-msd")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    AutoAttack, _ = load_autoattack(args.autoattack)
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            print(f"unknown model {name!r}; valid: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        spec = MODELS[name]
        model, _ = trained_model(spec.kind, spec.arch, spec.seed, Path(args.cache))
        frozen(model)
        warm_up(model, x, y)
        pair, ours = [], []
        for _ in range(args.rounds):  # alternate: a slow spell hits both sides
            t, aa_robust = aa_pair(AutoAttack, model, x.float(), y, args.seed, args.batch_size)
            pair.append(t)
            rep, c, _w = run_ours(model, x, y, args.seed, args.batch_size, True)
            ours.append(c)
        ratio = statistics.median(ours) / statistics.median(pair)
        rows.append(
            [
                name,
                " / ".join(f"{t:.1f}" for t in pair),
                " / ".join(f"{t:.1f}" for t in ours),
                f"{ratio:.2f}",
                f"{100 * aa_robust / args.n:.1f}",
                f"{100 * float(rep.union_robust.double().mean()):.1f}",
            ]
        )
        print(f"{name}: pair {pair} ours {ours} ratio {ratio:.2f}", flush=True)
    print()
    print(
        f"{args.n} embedded test digits, {THREATS}, {args.rounds} alternating rounds; "
        + machine_note()
    )
    print()
    print(
        markdown_table(
            [
                "model",
                "AutoAttack APGD pair CPU s (rounds)",
                "ours union-only CPU s (rounds)",
                "ours ÷ pair (medians)",
                "AA pair: robust to all norms %",
                "ours union %",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
