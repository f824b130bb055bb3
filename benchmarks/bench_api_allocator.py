"""Kernel time and page faults of ``unionrobust.evaluate`` through the Python API, with glibc's
default allocator settings and with the settings ``import unionrobust`` now applies (issue 16).

Each mode runs in a fresh Python process (the allocator is chosen before the first allocation):

- ``system``: ``UNIONROBUST_MALLOC=system``, glibc's defaults (the API before issue 16);
- ``tuned``: the defaults of ``import unionrobust`` (``mallopt`` as the CLI does,
  :mod:`unionrobust.allocator`).

The child evaluates the first N embedded test digits with ``suite="standard"`` on a LeNet trained
with the ``mnist-small-max`` config (cached by ``bench_vs_autoattack.py``'s trainer) and reports,
around the ``evaluate`` call only, user and system CPU seconds (``os.times``) and minor/major
page faults (``resource.getrusage``). Target: system time ≤ 5 % of the CPU time (user + system).

    python benchmarks/bench_api_allocator.py [--n 1000] [--modes system,tuned] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import markdown_table

from unionrobust.atomic import atomic_write_text

#: mode -> environment of the child
MODES = {"system": {"UNIONROBUST_MALLOC": "system"}, "tuned": {}}
#: issue 16's target: kernel time ÷ (user + kernel time)
MAX_SYSTEM_SHARE = 0.05

CHILD = """
import json, os, resource, sys, torch
torch.set_num_threads(1)
import unionrobust as ur
from unionrobust import allocator
weights, arch, suite = sys.argv[1], sys.argv[2], sys.argv[4]
n, batch_size = int(sys.argv[3]), int(sys.argv[5])
model = ur.build_model(arch)
ur.load_weights(model, weights)
x, y = ur.load_embedded_mnist("test")
x, y = x[:n], y[:n]
t0, r0 = os.times(), resource.getrusage(resource.RUSAGE_SELF)
rep = ur.evaluate(model, x, y, threats="linf:0.3, l2:2, l1:10", suite=suite,
                  batch_size=batch_size, seed=0, progress=False)
t1, r1 = os.times(), resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "applied": allocator.APPLIED_ON_IMPORT,
    "user_s": t1.user - t0.user, "system_s": t1.system - t0.system,
    "minor_faults": r1.ru_minflt - r0.ru_minflt, "major_faults": r1.ru_majflt - r0.ru_majflt,
    "max_rss_mb": r1.ru_maxrss / 1024, "union_accuracy": rep.union_accuracy,
    "threat_accuracy": [float(v) for v in rep.threat_robust().double().mean(dim=0)],
}))
"""


def system_share(user: float, system: float) -> float:
    """Kernel share of the CPU time."""
    total = user + system
    return system / total if total > 0 else 0.0


def summarize(runs: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the modes' measurements."""
    rows = []
    for mode, r in runs.items():
        share = system_share(r["user_s"], r["system_s"])
        rows.append(
            (
                mode,
                f"{r['user_s']:.1f}",
                f"{r['system_s']:.1f}",
                f"{100 * share:.1f} %",
                f"{r['minor_faults']:,}",
                f"{r['max_rss_mb']:.0f}",
                f"{100 * r['union_accuracy']:.1f}",
                "yes" if share <= MAX_SYSTEM_SHARE else "NO",
            )
        )
    return markdown_table(
        (
            "allocator",
            "user s",
            "system s",
            "system ÷ CPU",
            "minor page faults",
            "max RSS MB",
            "union accuracy %",
            "≤ 5 %",
        ),
        rows,
    )


def run_child(mode: str, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("UNIONROBUST_MALLOC", None)
    env.update(MODES[mode], OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        str(weights),
        args.arch,
        str(args.n),
        args.suite,
        str(args.batch_size),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--suite", default="standard")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--arch", default="lenet")
    p.add_argument("--kind", default="max", help="training config kind of bench_vs_autoattack")
    p.add_argument("--cache", default="runs/bench-aa/models", help="trained-weights folder")
    p.add_argument("--out", default="runs/bench-api-allocator.json")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    from bench_vs_autoattack import trained_model

    trained_model(args.kind, args.arch, 0, Path(args.cache))
    weights = Path(args.cache) / f"{args.arch}-{args.kind}-seed0.safetensors"
    runs = {}
    for mode in args.modes:
        runs[mode] = run_child(mode, weights, args)
        print(f"{mode}: {json.dumps(runs[mode])}", flush=True)
    table = summarize(runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args), "runs": runs, "table": table}
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"\n{args.n} digits, {args.arch}-{args.kind}, suite {args.suite}, 1 thread\n\n{table}")


if __name__ == "__main__":
    main()
