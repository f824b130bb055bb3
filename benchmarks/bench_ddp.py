"""DDP on the CPU: time per epoch with 2 gloo processes vs 1 process, same global batch.

Each process uses one intra-op thread, so 2 processes use the 2 cores that the single process
leaves idle or fills with a second thread (run both variants: --threads-single 1 and 2). Prints
a markdown table of ratios measured in one run. Short by default (a few steps of P-inf with
10-step PGD on the embedded MNIST, small-cnn).

    python benchmarks/bench_ddp.py [--steps 12] [--batch 100] [--strategy pinf]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from unionrobust.training.config import load_config
from unionrobust.training.distributed import DistContext, free_port, init_local_cpu, shutdown
from unionrobust.training.trainer import Trainer


def _config(args: argparse.Namespace):
    return load_config(
        "mnist-small",
        [
            f"strategy={{name: {args.strategy}, steps: 10}}",
            f"data.batch_size={args.batch}",
            "training.epochs=1",
            f"training.max_steps_per_epoch={args.steps}",
            "training.progress=false",
            "eval.n=0",
        ],
    )


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    ctx = init_local_cpu(rank, world, port)
    try:
        result = Trainer(_config(args), None, ctx=ctx).fit()
        if ctx.is_main:
            Path(out).write_text(json.dumps({"time": result.time_per_epoch}))
    finally:
        shutdown(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--strategy", default="pinf")
    args = parser.parse_args()
    times = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        result = Trainer(_config(args), None, ctx=DistContext()).fit()
        times[f"1 process, {threads} thread(s)"] = result.time_per_epoch
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t.json")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(2, free_port(), args, out), nprocs=2, join=True)
        wall = time.perf_counter() - t0
        times["2 processes (gloo), 1 thread each"] = json.loads(Path(out).read_text())["time"]
    ref = times["1 process, 1 thread(s)"]
    print(
        f"DDP on CPU: {args.strategy}, {args.steps} steps of global batch {args.batch}, "
        f"small-cnn, embedded MNIST (2-process wall incl. start-up: {wall:.1f} s)\n"
    )
    print("| setup | time per epoch (s) | ratio to 1 process, 1 thread |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / ref:.2f} |")


if __name__ == "__main__":
    main()
