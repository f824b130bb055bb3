"""Which ℓ1 survivor-round pass breaks which point, each run alone, with several seeds (issue 16).

``standard``'s ℓ1 passes after AutoAttack's budget (APGD-CE 5 restarts, APGD-T 5 targets) and
the targeted second pass are the longer runs (CE and margin loss, 300 steps × 2), AutoAttack's
CE budget from new starts, and the 1,000-step CE run that opens the ℓ1 masked tier
(``L1_LONG_RUN``). This runs round 1 and the second pass as the suite does, then each of those
passes *alone* on all the ℓ1 survivors left, with the suite's seeds and shifted ones, and marks
the points a reference broke (AutoAttack or Pointwise, from ``bench_vs_autoattack.py``'s
reference cache). A pass that breaks a reference-broken point no other pass with the same seeds
breaks is what the suite cannot do without on that kind of model.

    python benchmarks/bench_l1_survivor_passes.py --cache /work/models/bench-aa \\
        --ref-cache /work/models/bench-final/refs --models lenet-max,lenet-msd [--shifts 0,10,20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import machine_note, markdown_table, set_threads
from bench_vs_autoattack import MODELS, THREATS, trained_model

from unionrobust.data import load_embedded_mnist
from unionrobust.evaluation.suites import get_suite

#: the ℓ1 entries of ``standard`` that make the survivors, and the passes compared on them
ROUND_ONE = ("apgd-ce@l1:10", "apgd-t@l1:10", "apgd-t@l1:10#2")
PASSES = ("apgd-ce@l1:10#3", "apgd-cw@l1:10#4", "apgd-ce@l1:10#5", "apgd-ce@l1:10#6")


def reference_broken(folder: Path, name: str, threat: str) -> set[int]:
    """The points AutoAttack or Pointwise broke for ``threat`` (the newest cached runs)."""
    out: set[int] = set()
    for kind in ("autoattack", "pointwise"):
        files = sorted(folder.glob(f"{name}-*-{kind}.json"), key=lambda f: f.stat().st_mtime)
        if not files:
            raise SystemExit(f"no cached {kind} run of {name} in {folder}")
        out |= set(json.loads(files[-1].read_text())["result"]["broken"].get(threat, []))
    return out


def run(entry, threat, seed: int, model, x, y, pts: torch.Tensor) -> tuple[set[int], float]:
    """The points of ``pts`` that ``entry`` (built with the run seed ``seed``) breaks, CPU s."""
    attack = entry.build(threat, seed).with_row_budget(250)
    c0 = time.process_time()
    res = attack(model, x[pts], y[pts], example_ids=pts)
    return set(pts[res.success].tolist()), time.process_time() - c0


def bench_model(name: str, args: argparse.Namespace) -> list[list[str]]:
    spec = MODELS[name]
    model, _ = trained_model(spec.kind, spec.arch, spec.seed, Path(args.cache))
    x, y = load_embedded_mnist("test")
    x, y = x[: args.n], y[: args.n]
    suite = get_suite("standard", THREATS)
    by_key = dict(zip(suite.keys(), suite.entries, strict=True))
    threat = suite.threats[by_key[ROUND_ONE[0]].threat_index]
    refs = reference_broken(Path(args.ref_cache), name, threat.spec)
    with torch.no_grad():
        pts = torch.nonzero(model(x).argmax(1) == y).squeeze(1)
    for key in ROUND_ONE:
        broken, _ = run(by_key[key], threat, args.seed, model, x, y, pts)
        pts = torch.tensor([i for i in pts.tolist() if i not in broken], dtype=torch.long)
    head = f"{pts.numel()} ({', '.join(map(str, sorted(refs & set(pts.tolist())))) or 'none'})"
    rows = []
    for shift in args.shifts:
        cells = []
        for key in PASSES:
            broken, cpu = run(by_key[key], threat, args.seed + shift, model, x, y, pts)
            cells.append(
                ", ".join(f"**{i}**" if i in refs else str(i) for i in sorted(broken)) or "–"
            )
            print(f"{name} seed+{shift} {key}: {sorted(broken)} ({cpu:.1f} s)", file=sys.stderr)
        rows.append([name if not rows else "", head if not rows else "", f"+{shift}", *cells])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default="runs/bench-aa/models", help="trained-weights folder")
    p.add_argument("--ref-cache", required=True, help="bench_vs_autoattack.py's reference cache")
    p.add_argument("--models", default="lenet-max,lenet-msd")
    p.add_argument("--shifts", default="0,10,20", help="seed shifts, comma-separated")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.shifts = [int(s) for s in args.shifts.split(",")]
    names = args.models.split(",")
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; valid: {', '.join(MODELS)}")
    set_threads(1)
    rows = [row for name in names for row in bench_model(name, args)]
    header = ["model", "ℓ1 survivors (reference-broken among them)", "seeds", *PASSES]
    print(f"{args.n} embedded test digits, {THREATS}; bold: a reference broke it.")
    print(machine_note())
    print()
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
