"""Union-only vs per-threat evaluation: same union verdicts, CPU time, in one run.

Each model (small-cnn weights, e.g. the checkpoints of ``unionrobust compare``:
``runs/compare/runs/<strategy>-seed0/best.safetensors``; with ``--natural`` also a naturally
trained one fitted here) is evaluated on the first N embedded MNIST test points with the same
suite twice: per-threat (each attack on the points still robust for its threat) and union-only
(each attack on the points still robust for the union, every threat's first attack before any
second one). The union verdicts must agree point by point; the table gives the union accuracy,
the exact per-threat accuracies next to union-only's upper bounds, the attacked (point, attack)
pairs and the process CPU time of each mode (the two modes alternate per model, so a slow
period of the shared machine hits both).

    python benchmarks/bench_union_only.py --n 200 \\
        pinf=runs/compare/runs/pinf-seed0/best.safetensors msd=...
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import fit_embedded, machine_note, markdown_table, set_threads

from unionrobust.data import load_embedded_mnist
from unionrobust.evaluation import evaluate
from unionrobust.models import build_model, load_weights


def evaluate_both(model, x, y, args) -> dict:
    out = {}
    for mode in ("per-threat", "union-only"):
        c0 = time.process_time()
        rep = evaluate(
            model, x, y, threats=args.threats, suite=args.suite, batch_size=args.batch_size,
            progress=False, union_only=mode == "union-only", diagnostics=False,
        )  # fmt: skip
        out[mode] = (rep, time.process_time() - c0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", metavar="NAME=WEIGHTS", help="small-cnn weights")
    p.add_argument("--natural", action="store_true", help="also a naturally trained model")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--suite", default="standard")
    p.add_argument("--threats", default="linf:0.3, l2:2, l1:10")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    set_threads(args.threads)
    models = []
    if args.natural:
        models.append(("natural", fit_embedded("small-cnn", 2)))
    for spec in args.models:
        name, _, path = spec.partition("=")
        model = build_model("small-cnn")
        load_weights(model, path)
        models.append((name, model.eval()))
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    rows, total = [], {"per-threat": 0.0, "union-only": 0.0}
    for name, model in models:
        res = evaluate_both(model, x, y, args)
        (pt, t_pt), (uo, t_uo) = res["per-threat"], res["union-only"]
        same = torch.equal(pt.union_robust, uo.union_robust)
        exact = "/".join(f"{100 * a:.1f}" for a in pt.per_threat_accuracy.values())
        bound = "/".join(f"{100 * a:.1f}" for a in uo.per_threat_accuracy.values())
        rows.append([
            name, f"{100 * pt.clean_accuracy:.1f}", f"{100 * pt.union_accuracy:.1f}",
            f"{100 * uo.union_accuracy:.1f}", "yes" if same else "**NO**", exact, bound,
            sum(pt.attacked), sum(uo.attacked), t_pt, t_uo, t_uo / t_pt,
        ])  # fmt: skip
        total["per-threat"] += t_pt
        total["union-only"] += t_uo
        print(f"{name}: done ({t_pt:.0f} s / {t_uo:.0f} s CPU)", flush=True)
    print(f"\nsuite {args.suite} | {args.threats} | n {args.n} | {machine_note()}\n")
    print(markdown_table(
        ["model", "clean", "union (per-threat)", "union (union-only)", "same union verdicts",
         "per-threat exact", "per-threat union-only (≤)", "pairs per-threat", "pairs union-only",
         "CPU s per-threat", "CPU s union-only", "ratio"],
        rows,
    ))  # fmt: skip
    ratio = total["union-only"] / total["per-threat"]
    print(f"\ntotal CPU: per-threat {total['per-threat']:.0f} s, "
          f"union-only {total['union-only']:.0f} s, ratio {ratio:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
