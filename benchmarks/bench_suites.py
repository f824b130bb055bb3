"""Robust accuracy per threat and per attack under the `quick`, `standard` and `full` suites,
and their cost, on one model and the same points in one run (issue 5).

A small-cnn is fitted briefly on the embedded MNIST training split (as in bench_cascade.py),
then the first N test points are evaluated against the same union with each suite. The table
reports clean, per-threat, union and average accuracy and the process CPU time of each suite
relative to `quick`; a second table lists, per suite, how many points each attack broke in the
cascade (like MSD Tables 3-4).

    python benchmarks/bench_suites.py [--n 100] [--threats "linf:0.1, l2:1, l1:6"]
"""

from __future__ import annotations

import time

import torch
from bench_cascade import evaluation_arguments, fit

from unionrobust.data import as_tensors, get_dataset
from unionrobust.evaluation import evaluate


def main() -> None:
    p = evaluation_arguments(__doc__, n=100)
    p.add_argument("--suites", default="quick,standard,full")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = fit(args.train_steps)
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), n=args.n)
    rows, breakdowns, base = [], {}, None
    for suite in args.suites.split(","):
        cpu = time.process_time()
        report = evaluate(
            model,
            x,
            y,
            threats=args.threats,
            suite=suite.strip(),
            batch_size=args.batch_size,
            progress=False,
        )
        cpu = time.process_time() - cpu
        base = cpu if base is None else base
        d = report.to_dict()
        per = d["per_threat"]
        rows.append(
            (
                suite,
                d["clean_accuracy"],
                [per[k]["accuracy"] for k in per],
                d["union_accuracy"],
                d["average_accuracy"],
                cpu,
                cpu / base,
            )
        )
        breakdowns[suite] = d.get("per_attack", [])
        threat_names = list(per)

    print(
        f"\nsmall-cnn, {args.train_steps} training steps, {args.n} test points, threats "
        f"{args.threats}; accuracy %, CPU seconds and CPU time relative to the first suite\n"
    )
    print("| suite | clean | " + " | ".join(threat_names) + " | union | average | CPU s | × |")
    print("|---" * (len(threat_names) + 6) + "|")
    for suite, clean, per, union, avg, cpu, rel in rows:
        cells = " | ".join(f"{100 * a:.1f}" for a in per)
        print(
            f"| {suite} | {100 * clean:.1f} | {cells} | {100 * union:.1f} | {100 * avg:.1f} "
            f"| {cpu:.1f} | {rel:.2f} |"
        )
    for suite, items in breakdowns.items():
        print(f"\n{suite}: points broken by each attack in the cascade\n")
        print("| threat | attack | attacked | broken | threat acc. after | union acc. after | s |")
        print("|---|---|---|---|---|---|---|")
        for it in items:
            print(
                f"| {it['threat']} | {it['attack']} | {it['attacked']} | {it['broken']} "
                f"| {100 * it['threat_accuracy_after']:.1f} "
                f"| {100 * it['union_accuracy_after']:.1f} | {it['seconds']:.1f} |"
            )


if __name__ == "__main__":
    main()
