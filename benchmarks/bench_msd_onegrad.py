"""One-gradient MSD vs MSD (Maini et al. 2020, Alg. 1), as an attack and as a training strategy.

One-gradient MSD (``MSD(..., select="gradient")``, issue 9) picks each step's candidate by the
first-order gain g·(x_p − x) instead of a forward over the 3B candidates: one forward+backward per
step. It is worth keeping only if it is as strong:

* ``train``: the ``mnist-small-msd`` config (small-cnn, embedded MNIST, 5 epochs, 5-step MSD,
  ε warm-up) trained with each selection and each seed; weights under ``--cache`` (not in git),
  process CPU time per training; then the union accuracy of each ``last.safetensors`` under the
  ``standard`` suite on the first ``--n`` test digits.
* ``attack``: on those models, robust accuracy of MSD-100 vs one-gradient MSD-100 per threat (a
  point counts as broken for threat p when the returned point lies in p's ball and is
  misclassified) and over the union, on the same ``--n`` test digits, with CPU time.

    python benchmarks/bench_msd_onegrad.py train [--seeds 0,1] [--n 200]
    python benchmarks/bench_msd_onegrad.py attack [--n 200] [--steps 100]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from _common import markdown_table, set_threads

from unionrobust import MSD, evaluate, load_embedded_mnist, load_model, parse
from unionrobust.training.config import load_config
from unionrobust.training.trainer import train

CONFIG = "mnist-small-msd"
SELECTS = ("forward", "gradient")
LABEL = {"forward": "MSD", "gradient": "one-gradient MSD"}


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_dir(cache: Path, select: str, seed: int) -> Path:
    return cache / f"msd-{select}-s{seed}"


def train_all(args: argparse.Namespace) -> None:
    cfg0 = load_config(CONFIG)
    threats = cfg0.threats
    x, y = load_embedded_mnist("test")
    rows = []
    for seed in args.seeds:
        for select in SELECTS:
            out = run_dir(args.cache, select, seed)
            summary = out / "onegrad-summary.json"
            if summary.is_file():
                rows.append(json.loads(summary.read_text()))
                continue
            sets = [f"strategy.select={select}", f"training.seed={seed}", "eval.n=0", *args.set]
            cfg = load_config(CONFIG, sets)
            t0 = cpu()
            train(cfg, out_dir=out)
            t_train = cpu() - t0
            model = load_model(cfg.model.name, out / "last.safetensors")
            t0 = cpu()
            rep = evaluate(
                model, x, y, threats, suite="standard", n=args.n, progress=False, diagnostics=False
            )
            row = {
                "select": select,
                "seed": seed,
                "train_cpu_s": t_train,
                "eval_cpu_s": cpu() - t0,
                "clean": 100 * rep.clean_accuracy,
                **{k: 100 * v for k, v in rep.per_threat_accuracy.items()},
                "union": 100 * rep.union_accuracy,
            }
            summary.write_text(json.dumps(row))
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("select", "seed")]
    print(
        markdown_table(
            ["variant", "seed", *keys],
            [[LABEL[r["select"]], r["seed"], *[round(r[k], 3) for k in keys]] for r in rows],
        )
    )


def in_ball(threat, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    p = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[threat.name]
    return d.norm(p=p, dim=1) <= threat.size * (1 + 1e-4) + 1e-6


def attack_all(args: argparse.Namespace) -> None:
    union = parse(load_config(CONFIG).threats)
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    rows = []
    for seed in args.seeds:
        for trained in SELECTS:
            path = run_dir(args.cache, trained, seed) / "last.safetensors"
            if not path.is_file():
                continue
            model = load_model("small-cnn", path)
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            for select in SELECTS:
                attack = MSD(union, steps=args.steps, select=select)
                t0 = cpu()
                res = attack(model, x, y)
                t = cpu() - t0
                with torch.no_grad():
                    wrong = model(res.x_adv).argmax(1) != y
                per = [
                    100 * float((clean & ~(wrong & in_ball(m, x, res.x_adv))).float().mean())
                    for m in union
                ]
                union_acc = 100 * float((clean & ~wrong).float().mean())
                rows.append(
                    [
                        f"{LABEL[trained]} s{seed}",
                        f"{LABEL[select]}-{args.steps}",
                        100 * float(clean.float().mean()),
                        *per,
                        union_acc,
                        round(t, 1),
                    ]
                )
                print(rows[-1], flush=True)
    head = ["model (trained with)", "attack", "clean", *[m.spec for m in union], "union", "CPU s"]
    print(markdown_table(head, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("train", "attack"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=Path("/work/cache/train-speed"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="config override (smoke runs)")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    set_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    (train_all if args.part == "train" else attack_all)(args)


if __name__ == "__main__":
    main()
