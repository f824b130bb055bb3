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

* ``step``: cost per step (process CPU time, interleaved, (T(long) − T(short)) / (long − short)
  as in bench_attacks.py) of MSD ÷ its floor t_fb + forward(3B), of one-gradient MSD ÷ t_fb, and
  of PGD per member ÷ t_fb: Σ_p (PGD_p − t_fb) is the part of MSD's excess that is the members'
  own steps and projections (geometry/), the rest is MSD's own work. Every part runs with the
  allocator settings ``import unionrobust`` applies (``unionrobust.allocator``; the figures in
  RESULTS.md for ``train`` and ``attack`` predate that and used glibc's defaults).

    python benchmarks/bench_msd_onegrad.py train [--seeds 0,1] [--n 200]
    python benchmarks/bench_msd_onegrad.py attack [--n 200] [--steps 100]
    python benchmarks/bench_msd_onegrad.py step [--models lenet,mnist-cnn] [--batches 100,250]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from _common import (
    forward_backward,
    forward_only,
    frozen,
    interleaved,
    machine_note,
    markdown_table,
    per_step,
    set_threads,
)

from unionrobust import MSD, PGD, build_model, evaluate, load_embedded_mnist, load_model, parse
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


def step_costs(args: argparse.Namespace) -> None:
    union = parse(load_config(CONFIG).threats)
    x_all, _ = load_embedded_mnist("test")
    short, long = 2, 10
    makers = {
        "MSD": lambda s: MSD(union, steps=s),
        "one-gradient MSD": lambda s: MSD(union, steps=s, select="gradient"),
        **{f"PGD {m.name}": (lambda s, m=m: PGD(m, steps=s)) for m in union},
    }
    print(f"{machine_note()}, steps {short} and {long}\n")
    head = ["model", "B", "t_fb ms", "floor ms", "MSD ÷ floor", "MSD 1g ÷ t_fb"]
    head += [f"PGD {m.name} ÷ t_fb" for m in union] + ["Σ(PGD_p − t_fb) ÷ floor"]
    rows = []
    for model_name in args.models.split(","):
        torch.manual_seed(0)
        model = frozen(build_model(model_name))
        for batch in (int(b) for b in args.batches.split(",")):
            x = x_all[:batch].contiguous()
            with torch.no_grad():
                y = model(x).argmax(1)
            fns = {
                "fb": forward_backward(model, x, y),
                "f3": forward_only(model, torch.cat([x] * 3)),
            }
            for label, make in makers.items():
                for steps in (short, long):
                    att = make(steps)
                    fns[f"{label}@{steps}"] = lambda a=att, m=model, x=x, y=y: a(m, x, y)
            t = interleaved(fns, warmup=1, rounds=args.rounds)
            floor = t["fb"] + t["f3"]
            step = {label: per_step(t, label, short, long) for label in makers}
            pgd = [step[f"PGD {m.name}"] / t["fb"] for m in union]
            rows.append(
                [
                    model_name,
                    batch,
                    1e3 * t["fb"],
                    1e3 * floor,
                    step["MSD"] / floor,
                    step["one-gradient MSD"] / t["fb"],
                    *pgd,
                    sum(p - 1 for p in pgd) * t["fb"] / floor,
                ]
            )
            print(rows[-1], flush=True)
    print(markdown_table(head, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("train", "attack", "step"))
    ap.add_argument("--models", default="lenet,mnist-cnn")
    ap.add_argument("--batches", default="100,250")
    ap.add_argument("--rounds", type=int, default=5)
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
    {"train": train_all, "attack": attack_all, "step": step_costs}[args.part](args)


if __name__ == "__main__":
    main()
