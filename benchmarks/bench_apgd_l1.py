"""ℓ1 strength of the `standard` suite against AutoAttack's ℓ1 standard run (issue 8, item 1).

One side per process, so that the code under test can come from any tree (PYTHONPATH): the
`standard` suite's ℓ1 entries (APGD-CE 5 restarts, then APGD-T 5 targets on the points left)
through :func:`unionrobust.evaluation.evaluate`, or AutoAttack
(``AutoAttack(model, norm='L1', eps=ε, version='standard').run_standard_evaluation``, imported
from ``--aa``, never copied). Each run writes the per-point verdicts and its process CPU time
(``os.times``, one thread) to a JSON file; ``--compare`` prints the table: robust accuracy, the
points AutoAttack breaks that a side misses, CPU time.

    python benchmarks/bench_apgd_l1.py --weights W.safetensors --side ours --out ours.json
    python benchmarks/bench_apgd_l1.py --weights W.safetensors --side aa \\
        --aa /path/to/auto-attack --out aa.json
    python benchmarks/bench_apgd_l1.py --compare aa.json ours.json [before.json ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from _common import markdown_table, set_threads

from unionrobust.data import as_tensors, get_dataset
from unionrobust.models import build_model
from unionrobust.models.io import load_weights


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run_ours(model, x, y, eps: float, seed: int) -> torch.Tensor:
    from unionrobust.evaluation import evaluate

    report = evaluate(
        model,
        x,
        y,
        threats=f"l1:{eps:g}",
        suite="standard",
        batch_size=x.shape[0],
        seed=seed,
        progress=False,
        diagnostics=False,
    )
    return report.threat_robust()[:, 0]


def run_aa(model, x, y, eps: float, seed: int, path: str, apgd_only: bool) -> torch.Tensor:
    sys.path.insert(0, path)
    from autoattack import AutoAttack  # the local checkout, for comparison only

    if apgd_only:  # the standard ℓ1 APGD settings without FAB-T and Square
        aa = AutoAttack(
            model, norm="L1", eps=eps, version="custom", seed=seed, device="cpu",
            attacks_to_run=["apgd-ce", "apgd-t"],
        )  # fmt: skip
        aa.apgd.n_restarts, aa.apgd.use_largereps = 5, True
        aa.apgd_targeted.n_restarts, aa.apgd_targeted.n_target_classes = 1, 5
        aa.apgd_targeted.use_largereps = True
    else:
        aa = AutoAttack(model, norm="L1", eps=eps, version="standard", seed=seed, device="cpu")
    x_adv = aa.run_standard_evaluation(x, y, bs=x.shape[0])
    norms = (x_adv - x).flatten(1).abs().sum(1)
    assert bool((norms <= eps * (1 + 1e-4)).all()) and 0 <= float(x_adv.min()) <= 1
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def compare(files: list[str]) -> None:
    runs = [json.loads(Path(f).read_text()) for f in files]
    ref = torch.tensor(runs[0]["robust"])
    rows = []
    for r in runs:
        robust = torch.tensor(r["robust"])
        missed = int((~ref & robust).sum())  # the reference breaks them, this side does not
        rows.append(
            [
                r["label"],
                f"{100 * robust.double().mean():.1f} %",
                f"{missed} ({100 * missed / robust.numel():.1f} %)",
                f"{r['cpu_s']:.1f} s",
                f"{r['cpu_s'] / runs[0]['cpu_s']:.2f}",
            ]
        )
    n = len(runs[0]["robust"])
    print(f"{n} points; reference: {runs[0]['label']}")
    header = ["side", "ℓ1 robust acc.", "ref. breaks, side misses", "CPU time", "× ref."]
    print(markdown_table(header, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights")
    p.add_argument("--model", default="lenet")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--eps", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--side", choices=["ours", "aa"], default="ours")
    p.add_argument("--aa", default="/work/aa", help="folder holding the autoattack package")
    p.add_argument("--aa-apgd-only", action="store_true", help="AutoAttack's APGD-CE + APGD-T only")
    p.add_argument("--label", default=None)
    p.add_argument("--out")
    p.add_argument("--compare", nargs="+", metavar="JSON")
    args = p.parse_args()
    if args.compare:
        compare(args.compare)
        return
    set_threads(1)
    model = build_model(args.model)
    load_weights(model, args.weights)
    model.eval()
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), n=args.n)
    t0 = cpu_seconds()
    if args.side == "aa":
        robust = run_aa(model, x, y, args.eps, args.seed, args.aa, args.aa_apgd_only)
    else:
        robust = run_ours(model, x, y, args.eps, args.seed)
    cpu = cpu_seconds() - t0
    label = args.label or args.side
    print(f"{label}: robust {100 * robust.double().mean():.1f} %, CPU {cpu:.1f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"label": label, "cpu_s": cpu, "robust": robust.tolist()}, fh)


if __name__ == "__main__":
    main()
