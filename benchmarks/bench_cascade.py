"""Cascade vs everything-on-everything union evaluation: time and verdicts, in one run.

A small-cnn is fitted briefly on the embedded MNIST training split, then evaluated on the first
N test points twice with the same suite: as a cascade (each attack only on points still robust
for its threat) and with every attack on every point. Both must give identical per-threat and
union verdicts; the table reports the attacked (example, attack) pairs and the CPU time of the
process (wall time too; on a shared machine wall time mostly measures the neighbours).

    python benchmarks/bench_cascade.py [--n 300] [--suite standard] [--threats "..."]
"""

from __future__ import annotations

import argparse
import time

import torch

from unionrobust.data import as_tensors, get_dataset
from unionrobust.evaluation import evaluate
from unionrobust.models import build_model


def fit(steps: int, seed: int = 0) -> torch.nn.Module:
    """small-cnn after ``steps`` Adam steps of batch 64 on embedded MNIST (train split)."""
    torch.manual_seed(seed)
    model = build_model("small-cnn")
    x, y = as_tensors(get_dataset("mnist-embedded", "train"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def evaluation_arguments(doc: str, n: int) -> argparse.ArgumentParser:
    """The options shared by the evaluation benchmarks (this one and bench_suites.py)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--threats", default="linf:0.1, l2:1, l1:6")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    return p


def main() -> None:
    p = evaluation_arguments(__doc__, n=300)
    p.add_argument("--suite", default="standard")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = fit(args.train_steps)
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), args.n)
    runs = {}
    for mode, cascade in (("cascade", True), ("everything-on-everything", False)):
        t0, c0 = time.perf_counter(), time.process_time()
        rep = evaluate(
            model,
            x,
            y,
            threats=args.threats,
            suite=args.suite,
            batch_size=args.batch_size,
            progress=False,
            cascade=cascade,
        )
        runs[mode] = (rep, time.process_time() - c0, time.perf_counter() - t0)
    casc, t_c, _ = runs["cascade"]
    full, t_f, _ = runs["everything-on-everything"]
    same = torch.equal(casc.threat_robust(), full.threat_robust())
    print(
        f"suite {args.suite} | threats {args.threats} | n {args.n} | small-cnn "
        f"({args.train_steps} training steps) | {args.threads} thread(s)\n"
    )
    # CPU time of this process: on a shared machine, wall time mostly measures the neighbours
    print(
        "| mode | attacked (example, attack) pairs | CPU seconds | wall seconds | "
        "CPU time / cascade CPU time |"
    )
    print("|---|---|---|---|---|")
    for mode, (rep, cpu, wall) in runs.items():
        print(f"| {mode} | {sum(rep.attacked)} | {cpu:.1f} | {wall:.1f} | {cpu / t_c:.2f} |")
    acc = ", ".join(f"{k} {100 * v:.1f}%" for k, v in casc.per_threat_accuracy.items())
    print(
        f"\nclean {100 * casc.clean_accuracy:.1f}% | {acc} | union "
        f"{100 * casc.union_accuracy:.1f}% | average {100 * casc.average_accuracy:.1f}%"
    )
    print(f"identical per-threat and union verdicts: {'yes' if same else 'NO'}")
    print(f"speed-up of the cascade: {t_f / t_c:.2f}x")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
