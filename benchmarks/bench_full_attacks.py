"""The `full` suite's extra attacks: strength and cost on a naturally trained MNIST model.

The small MNIST CNN (``build_model("small-cnn")``) is trained for ``--epochs`` on the embedded
MNIST training split (nothing cached); on the first ``--n`` test digits each attack runs once
at the radii below. Reported per attack: robust accuracy inside the ball (the threat-bound
result, re-checked), the median smallest breaking norm found (minimum-norm attacks; ``inf``
counts as unbroken) and the cost as a RATIO: attack time / t_fb, one forward + backward of the
CE loss on the same batch (measured in the same run). The ℓ1 rows compare our FAB-ℓ1 with
torchattacks' EAD (optional extra) and APGD-ℓ1 — ours should be at least as strong.

    python benchmarks/bench_full_attacks.py [--n 100] [--epochs 1] [--threads 1] [--no-peers]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys

import torch
from _common import (
    clock,
    fit_embedded,
    forward_backward,
    frozen,
    machine_note,
    markdown_table,
    set_threads,
)

from unionrobust.attacks.registry import make_attack
from unionrobust.data import load_embedded_mnist
from unionrobust.evaluation.checks import recheck
from unionrobust.threats import parse

EPS = {"linf": 0.1, "l2": 1.0, "l1": 5.0}
RUNS = [
    ("apgd-ce", "linf", {"steps": 100}),
    ("deepfool", "linf", {}),
    ("fab", "linf", {"steps": 50}),
    ("square", "linf", {"steps": 1000}),
    ("apgd-ce", "l2", {"steps": 100}),
    ("deepfool", "l2", {}),
    ("ddn", "l2", {"steps": 100}),
    ("fab", "l2", {"steps": 50}),
    ("square", "l2", {"steps": 1000}),
    ("ta-square", "l2", {"steps": 1000}),
    ("gaussian-noise", "l2", {}),
    ("pointwise", "l2", {}),
    ("fb-boundary", "l2", {"steps": 1000}),
    ("apgd-ce", "l1", {"steps": 100}),
    ("fab", "l1", {"steps": 50}),
    ("ta-ead", "l1", {}),
    ("salt-pepper", "l1", {}),
    ("pointwise", "l1", {}),
]
PEERS = {"fb-boundary": "foolbox", "ta-ead": "torchattacks", "ta-square": "torchattacks"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    set_threads(args.threads)
    model = frozen(fit_embedded("small-cnn", args.epochs))
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    now = clock()
    fb = forward_backward(model, x, y)
    fb()
    t0 = now()
    for _ in range(5):
        fb()
    t_fb = (now() - t0) / 5
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).double().mean())
    rows = []
    for name, norm, params in RUNS:
        pkg = PEERS.get(name)
        if pkg and (args.no_peers or importlib.util.find_spec(pkg) is None):
            continue
        threat = parse(f"{norm}:{EPS[norm]}")[0]
        attack = make_attack(name, threat, **params)
        t0 = now()
        res = attack(model, x, y)
        seconds = now() - t0
        broken, _ = recheck(model, threat, x, y, res.x_adv)
        norms = getattr(res, "norms", None)
        med = "—"
        if norms is not None:
            med_v = float(norms.double().median())
            med = "inf" if math.isinf(med_v) else f"{med_v:.3g}"
        acc = float((~broken).double().mean())
        rows.append([f"{name}@{threat.spec}", f"{acc:.2f}", med, f"{seconds / t_fb:.0f}"])
        print(f"{name}@{threat.spec}: {seconds:.1f}s", file=sys.stderr)
    print(machine_note())
    print(
        f"\nsmall-cnn, {args.epochs} epoch(s) on embedded MNIST, {args.n} test digits, "
        f"clean accuracy {clean:.2f}\n"
    )
    print(
        markdown_table(["attack@threat", "robust acc.", "median min-norm", "cost (× t_fb)"], rows)
    )


if __name__ == "__main__":
    main()
