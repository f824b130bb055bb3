"""Compare training strategies side by side: the README's main job.

For each strategy and seed: train with the built-in config ``mnist-small-<strategy>`` (or
``mnist-small`` with that strategy), pick the checkpoint with the best held-out union accuracy
(the papers early-stop), evaluate it on the first ``n_test`` test points against the union with
the chosen suite, and tabulate clean, per-threat, union and average accuracy and time per epoch
(mean ± sample std over seeds, as Croce & Hein report). Writes ``results.md``, ``results.json``
and ``compare.png`` (if matplotlib is installed) to the output folder.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from unionrobust.errors import UnionRobustError
from unionrobust.training.checkpoint import atomic_write_text
from unionrobust.training.config import builtin_configs, load_config

DEFAULT_STRATEGIES = ("pinf", "max", "avg", "msd", "eat")
BASE = "mnist-small"


def config_for(strategy: str, overrides: Sequence[str] = (), base: str = BASE):
    """The config of one strategy: ``<base>-<strategy>`` if shipped, else ``<base>`` + name."""
    name = f"{base}-{strategy}"
    if name in builtin_configs():
        return load_config(name, list(overrides))
    return load_config(base, [f"strategy={{name: {strategy}}}", *overrides])


def _fmt(values: list[float], pct: bool = True) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    scale = 100.0 if pct else 1.0
    mean = statistics.fmean(vals) * scale
    if len(vals) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(vals) * scale:.1f}"


def table(rows: list[dict[str, Any]], threats: list[str]) -> str:
    """Markdown table of the aggregated rows (one per strategy)."""
    head = ["strategy", "clean", *threats, "union", "average", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["strategy"], _fmt(r["clean"])]
        cells += [_fmt(r["per_threat"][t]) for t in threats]
        cells += [_fmt(r["union"]), _fmt(r["average"]), _fmt(r["time_per_epoch"], pct=False)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], threats: list[str], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'unionrobust[plot]'): no plot written"
    cols = ["clean", *threats, "union", "average"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 3.6))
    width = 0.8 / len(cols)
    for j, col in enumerate(cols):
        means, errs = [], []
        for r in rows:
            vals = r["per_threat"][col] if col in threats else r[col]
            means.append(100 * statistics.fmean(vals))
            errs.append(100 * statistics.stdev(vals) if len(vals) > 1 else 0.0)
        xs = [i + (j - (len(cols) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, means, width, yerr=errs if any(errs) else None, label=col)
    ax.set_xticks(range(len(rows)), [r["strategy"] for r in rows])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=len(cols), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return None


def compare(
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    out: str | os.PathLike = "runs/compare",
    *,
    seeds: int = 1,
    n_test: int = 500,
    suite: str = "quick",
    overrides: Sequence[str] = (),
    base: str = BASE,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every strategy for ``seeds`` seeds; write and return the results."""
    from unionrobust.evaluation import evaluate
    from unionrobust.models import load_weights
    from unionrobust.training.trainer import Trainer, build_model_from, load_split

    if seeds < 1:
        raise UnionRobustError(f"seeds must be >= 1, got {seeds}")
    if not strategies:
        raise UnionRobustError("give at least one strategy")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    threats: list[str] = []
    test_cache: dict[str, Any] = {}
    for strategy in strategies:
        for seed in range(seeds):
            sets = [*overrides, f"training.seed={seed}"]
            if not progress:
                sets.append("training.progress=false")
            cfg = config_for(strategy, sets, base)
            run_dir = out / "runs" / f"{strategy}-seed{seed}"
            echo(f"[{time.perf_counter() - start:6.0f}s] training {strategy} (seed {seed}) ...")
            trainer = Trainer(cfg, run_dir, resume=(run_dir / "checkpoints" / "last.json").is_file())
            result = trainer.fit()
            model = build_model_from(cfg)
            weights = run_dir / ("best.safetensors" if result.best else "last.safetensors")
            load_weights(model, weights)
            key = cfg.data.dataset
            if key not in test_cache:
                from unionrobust.training.data import Source

                test_cache[key] = Source(load_split(cfg.data, "test"))
            src = test_cache[key]
            x, y = src.batch(torch.arange(min(n_test, len(src))))
            report = evaluate(
                model.to(trainer.device), x, y, threats=cfg.threats, suite=suite,
                batch_size=250, seed=0, device=trainer.device, progress=False,
            )  # fmt: skip
            d = report.to_dict()
            threats = list(d["threats"])
            run = {
                "strategy": strategy,
                "seed": seed,
                "clean": d["clean_accuracy"],
                "union": d["union_accuracy"],
                "average": d["average_accuracy"],
                "per_threat": {t: d["per_threat"][t]["accuracy"] for t in threats},
                "time_per_epoch": result.time_per_epoch,
                "epochs": result.epochs,
                "best_epoch": None if result.best is None else result.best["epoch"],
                "weights": str(weights),
                "n_test": int(x.shape[0]),
            }
            runs.append(run)
            echo(
                f"[{time.perf_counter() - start:6.0f}s] {strategy} seed {seed}: clean "
                f"{run['clean']:.1%}, union {run['union']:.1%}, average {run['average']:.1%}"
            )
    rows = []
    for strategy in strategies:
        mine = [r for r in runs if r["strategy"] == strategy]
        rows.append(
            {
                "strategy": strategy,
                "clean": [r["clean"] for r in mine],
                "union": [r["union"] for r in mine],
                "average": [r["average"] for r in mine],
                "per_threat": {t: [r["per_threat"][t] for r in mine] for t in threats},
                "time_per_epoch": [r["time_per_epoch"] for r in mine],
            }
        )
    md = table(rows, threats)
    wall = time.perf_counter() - start
    n = runs[0]["n_test"] if runs else 0
    note = (
        f"Accuracy (%) on the first {n} test points against the union {', '.join(threats)} "
        f"(suite '{suite}'), best held-out checkpoint; "
        + (f"mean ± std over {seeds} seeds; " if seeds > 1 else "1 seed; ")
        + f"wall time {wall:.0f} s."
    )
    plot_note = _plot(rows, threats, out / "compare.png")
    text = f"# Strategy comparison\n\n{note}\n\n{md}\n"
    if plot_note:
        text += f"\n{plot_note}\n"
    atomic_write_text(out / "results.md", text)
    payload = {
        "threats": threats,
        "suite": suite,
        "n_test": n,
        "seeds": seeds,
        "wall_time": wall,
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "table": rows,
    }
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1))
    echo("")
    echo(note)
    echo(md)
    echo(plot_note or f"plot: {out / 'compare.png'}")
    echo(f"wrote {out}/results.md, results.json")
    return payload
