"""Training recipes at CPU scale (issue 17): train one config, evaluate it exactly per threat.

Trains ``--config`` (a built-in name or a YAML file, plus ``--set`` overrides) on the embedded
MNIST with one thread, then evaluates the chosen checkpoint (``best`` by held-out union accuracy,
else ``last``) with the ``standard`` suite in per-threat mode (every figure exact) on ``--n``
test digits (every ``--stride``-th, default 1: the first n, which are class-balanced — the
loader interleaves the digits, so a stride of 5 keeps two digit classes only), and appends one
JSON line with the recipe, the CPU seconds of training and evaluation and clean / per-threat /
union accuracy to ``--log``. ``--table`` prints the collected lines as the markdown table of
benchmarks/RESULTS.md.

    python benchmarks/bench_recipes.py run --name pinf-fast --config mnist-small-pinf \
        --set training.epochs=15 --out /work/models/train17
    python benchmarks/bench_recipes.py table --log /work/models/train17/recipes.jsonl

``finetune`` does the same for ``unionrobust finetune`` (Croce & Hein §3.4: SGD, lr ÷ 10 each
epoch) from ``--weights`` with E-AT for ``--epochs``, evaluated on the same points (the main job's
first ``--n`` test digits), and ``eval`` evaluates ``--weights`` alone:

    python benchmarks/bench_recipes.py finetune --name ft1 --config mnist-small-eat \
        --weights runs/compare/runs/pinf-seed0/best.safetensors --epochs 1 --n 200
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from unionrobust import evaluate, load_weights
from unionrobust.cli.cmd_finetune import finetune_overrides
from unionrobust.training.build import build_model_from, load_split
from unionrobust.training.config import load_config
from unionrobust.training.data import Source
from unionrobust.training.trainer import Trainer, can_resume


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def finetune_sets(args: argparse.Namespace) -> list[str]:
    """The overrides of ``unionrobust finetune --strategy eat`` (cli/cmd_finetune.py)."""
    ns = argparse.Namespace(
        weights=args.weights, strategy=args.strategy, epochs=args.epochs, lr=args.lr, model=None,
        threats=None, dataset=None, no_progress=True,
    )  # fmt: skip
    return finetune_overrides(ns)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    pre = finetune_sets(args) if args.cmd == "finetune" else []
    cfg = load_config(args.config, [*pre, *args.set, "training.progress=false"])
    out = Path(args.out) / args.name
    c0 = cpu()
    model = build_model_from(cfg)
    if args.cmd == "eval":
        tag, best_epoch, epochs = args.weights, None, 0
        load_weights(model, args.weights)
    else:
        result = Trainer(cfg, out, resume=can_resume(out)).fit()
        tag = "best" if result.best is not None and args.checkpoint == "best" else "last"
        best_epoch = None if result.best is None else result.best["epoch"]
        epochs = result.epochs
        load_weights(model, out / f"{tag}.safetensors")
    train_cpu = cpu() - c0
    test = Source(load_split(cfg.data, "test"))
    ids = torch.arange(0, len(test), args.stride)[: args.n]
    x, y = test.batch(ids)
    c1 = cpu()
    report = evaluate(model, x, y, threats=cfg.threats, suite=args.suite, batch_size=250,
                      seed=0, progress=False, union_only=False)  # fmt: skip
    d = report.to_dict()
    line = {
        "name": args.name,
        "config": args.config,
        "set": args.set,
        "weights": getattr(args, "weights", None),
        "finetune": finetune_sets(args) if args.cmd == "finetune" else None,
        "cmd": args.cmd,
        "checkpoint": tag,
        "best_epoch": best_epoch,
        "epochs": epochs,
        "train_cpu": round(train_cpu, 1),
        "eval_cpu": round(cpu() - c1, 1),
        "n": int(x.shape[0]),
        "suite": args.suite,
        "clean": d["clean_accuracy"],
        "per_threat": {t: v["accuracy"] for t, v in d["per_threat"].items()},
        "union": d["union_accuracy"],
        "union_ci95": d["union_accuracy_ci95"],
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(args.log or Path(args.out) / "recipes.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    print(json.dumps(line))


def table(args: argparse.Namespace) -> None:
    rows = [json.loads(s) for s in Path(args.log).read_text().splitlines() if s.strip()]
    print("| run | recipe (overrides of the config) | ckpt | train CPU s | eval CPU s | n "
          "| clean | ℓ∞ | ℓ2 | ℓ1 | union [95 %] |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pt = list(r["per_threat"].values())
        lo, hi = r["union_ci95"]
        what = r["config"] + (f" (from {r['weights']})" if r.get("weights") else "")
        print(
            f"| {r['name']} | {r.get('cmd', 'run')} {what} {' '.join(r['set'])} "
            f"| {r['checkpoint']} "
            f"(epoch {r['best_epoch']}) | {r['train_cpu']:.0f} | {r['eval_cpu']:.0f} | {r['n']} "
            f"| {100 * r['clean']:.1f} | "
            + " | ".join(f"{100 * v:.1f}" for v in pt)
            + f" | {100 * r['union']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd in ("run", "finetune", "eval"):
        r = sub.add_parser(cmd)
        r.add_argument("--name", required=True)
        r.add_argument("--config", required=True)
        r.add_argument("--set", action="append", default=[])
        r.add_argument("--out", default="/work/models/train17")
        r.add_argument("--log", default=None)
        r.add_argument("--n", type=int, default=200)
        r.add_argument("--stride", type=int, default=1)
        r.add_argument("--suite", default="standard")
        r.add_argument("--checkpoint", choices=("best", "last"), default="best")
        if cmd != "run":
            r.add_argument("--weights", required=True)
        if cmd == "finetune":
            r.add_argument("--strategy", default="eat")
            r.add_argument("--epochs", type=int, default=1)
            r.add_argument("--lr", type=float, default=0.05)
    t = sub.add_parser("table")
    t.add_argument("--log", default="/work/models/train17/recipes.jsonl")
    args = ap.parse_args()
    table(args) if args.cmd == "table" else run(args)


if __name__ == "__main__":
    main()
