"""Our Square against AutoAttack's SquareAttack on the same points (issue 16).

Both attacks run directly on the same points: every ``--every``-th embedded MNIST test digit, or
with ``--survivors`` only those AutoAttack's standard run leaves to its Square (robust after its
APGD-CE, APGD-T and FAB-T, computed here). AutoAttack is imported from ``--aa`` (never copied) and
run as its standard version does (p_init 0.8, ``resc_schedule=False``). One thread; per seed the
points each side breaks and its CPU time (``os.times``).

    OMP_NUM_THREADS=1 python benchmarks/bench_square.py --weights W.pt --model small-cnn \\
        --norm l2 --eps 2 --aa /work/aa --survivors --seeds 2
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from unionrobust.attacks.square import Square
from unionrobust.data import load_embedded_mnist
from unionrobust.models import load_model


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--norm", choices=["linf", "l2"], default="l2")
    ap.add_argument("--eps", type=float, default=2.0)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--aa", required=True, help="AutoAttack checkout")
    ap.add_argument("--survivors", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, a.aa)
    from autoattack import AutoAttack
    from autoattack.square import SquareAttack

    model = load_model(a.model, weights=a.weights).eval()
    x, y = load_embedded_mnist("test")
    x, y = x[:: a.every], y[:: a.every]
    idx = torch.arange(len(x))
    aa_norm = {"linf": "Linf", "l2": "L2"}[a.norm]
    if a.survivors:
        aa = AutoAttack(model, norm=aa_norm, eps=a.eps, version="standard", device="cpu")
        aa.attacks_to_run = ["apgd-ce", "apgd-t", "fab-t"]
        xa = aa.run_standard_evaluation(x, y, bs=250)
        with torch.no_grad():
            idx = (model(xa).argmax(1) == y).nonzero().squeeze(1)
        x, y = x[idx], y[idx]
    print(f"points {len(idx)} ({a.norm} {a.eps}, {a.steps} queries)")
    print("| seed | side | broken | points | CPU s |\n|---|---|---|---|---|")
    for s in range(a.seeds):
        c0 = cpu()
        sq = SquareAttack(model, p_init=0.8, n_queries=a.steps, eps=a.eps, norm=aa_norm,
                          n_restarts=1, seed=s, device="cpu", resc_schedule=False)
        with torch.no_grad():
            broke_aa = model(sq.perturb(x, y)).argmax(1) != y
        c1 = cpu()
        broke_ours = Square(f"{a.norm}:{a.eps}", steps=a.steps, p_init=0.8, seed=s)(
            model, x, y
        ).success
        c2 = cpu()
        for side, b, t in (("AutoAttack", broke_aa, c1 - c0), ("ours", broke_ours, c2 - c1)):
            print(f"| {s} | {side} | {int(b.sum())} | {idx[b].tolist()} | {t:.0f} |")


if __name__ == "__main__":
    main()
