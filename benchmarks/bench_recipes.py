"""Training recipes at CPU scale (issue 17): train one config, evaluate it exactly per threat.

Trains ``--config`` (a built-in name or a YAML file, plus ``--set`` overrides) on the embedded
MNIST with one thread, then evaluates the chosen checkpoint (``best`` by held-out union accuracy,
else ``last``) with the ``standard`` suite in per-threat mode (every figure exact) on ``--n``
test digits (every ``--stride``-th, default every 5th), and appends one JSON line with the recipe,
the CPU seconds of training and evaluation and clean / per-threat / union accuracy to
``--log``. ``--table`` prints the collected lines as the markdown table of benchmarks/RESULTS.md.

    python benchmarks/bench_recipes.py run --name pinf-fast --config mnist-small-pinf \
        --set training.epochs=15 --out /work/models/train17
    python benchmarks/bench_recipes.py table --log /work/models/train17/recipes.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from unionrobust import evaluate, load_weights
from unionrobust.training.build import build_model_from, load_split
from unionrobust.training.config import load_config
from unionrobust.training.data import Source
from unionrobust.training.trainer import Trainer, can_resume


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    cfg = load_config(args.config, [*args.set, "training.progress=false"])
    out = Path(args.out) / args.name
    c0 = cpu()
    result = Trainer(cfg, out, resume=can_resume(out)).fit()
    train_cpu = cpu() - c0
    model = build_model_from(cfg)
    tag = "best" if result.best is not None and args.checkpoint == "best" else "last"
    load_weights(model, out / f"{tag}.safetensors")
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
        "checkpoint": tag,
        "best_epoch": None if result.best is None else result.best["epoch"],
        "epochs": result.epochs,
        "train_cpu": round(train_cpu, 1),
        "eval_cpu": round(cpu() - c1, 1),
        "n": int(x.shape[0]),
        "suite": args.suite,
        "clean": d["clean_accuracy"],
        "per_threat": {t: v["accuracy"] for t, v in d["per_threat"].items()},
        "union": d["union_accuracy"],
        "union_ci95": d["union_accuracy_ci95"],
    }
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
        print(
            f"| {r['name']} | {r['config']} {' '.join(r['set'])} | {r['checkpoint']} "
            f"(epoch {r['best_epoch']}) | {r['train_cpu']:.0f} | {r['eval_cpu']:.0f} | {r['n']} "
            f"| {100 * r['clean']:.1f} | "
            + " | ".join(f"{100 * v:.1f}" for v in pt)
            + f" | {100 * r['union']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True)
    r.add_argument("--config", required=True)
    r.add_argument("--set", action="append", default=[])
    r.add_argument("--out", default="/work/models/train17")
    r.add_argument("--log", default=None)
    r.add_argument("--n", type=int, default=200)
    r.add_argument("--stride", type=int, default=5)
    r.add_argument("--suite", default="standard")
    r.add_argument("--checkpoint", choices=("best", "last"), default="best")
    t = sub.add_parser("table")
    t.add_argument("--log", default="/work/models/train17/recipes.jsonl")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else table(args)


if __name__ == "__main__":
    main()
