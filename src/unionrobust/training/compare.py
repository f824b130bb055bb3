"""Compare training strategies side by side: the README's main job.

For each strategy and seed: train with the built-in config ``mnist-small-<strategy>`` (or
``mnist-small`` with that strategy), pick the checkpoint with the best held-out union accuracy
(the papers early-stop), evaluate it on the first ``n_test`` test points against the union with
the chosen suite (default ``standard``, per-threat mode: every figure exact), and tabulate clean,
per-threat, union and average accuracy and time per epoch: with one seed each accuracy with its
95 % interval (Wilson; the average's by normal approximation), with several the mean ± sample
std over seeds (as Croce & Hein report). Writes ``results.md``, ``results.json`` and
``compare.png`` (if matplotlib is installed; whiskers = the same intervals) to the output folder.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch

from unionrobust._version import __version__
from unionrobust.atomic import atomic_write_text
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.suites import get_suite
from unionrobust.evaluation.verdicts import model_fingerprint
from unionrobust.models import load_weights
from unionrobust.outdir import locked_folder
from unionrobust.training.build import build_model_from, build_strategy, load_split
from unionrobust.training.compare_table import (
    bounds_note,
    compare_mode,
    plot,
    table,
    upper_bound_columns,
)
from unionrobust.training.config import builtin_configs, load_config
from unionrobust.training.data import Source
from unionrobust.training.lifetime import stop_workers, worker_init
from unionrobust.training.trainer import Trainer, can_resume

#: the strategies with a main-job recipe (``mnist-small-<strategy>``): ``--strategies all``
ALL_STRATEGIES = ("pinf", "max", "avg", "msd", "eat")
#: the main job's default: the strategies that show the MSD paper's Table 3 pattern (P∞ robust
#: to ℓ∞ only, a union-trained model robust to the union) within its CPU budget (issue 17)
DEFAULT_STRATEGIES = ("pinf", "max", "msd")
BASE = "mnist-small"
#: test points the main job evaluates (``--n``): the one setting that sizes its evaluation cost
DEFAULT_N_TEST = 200


def expand_strategies(strategies: Sequence[str]) -> list[str]:
    """``strategies`` with the name ``all`` replaced by :data:`ALL_STRATEGIES` (those not
    already listed)."""
    out: list[str] = []
    for s in strategies:
        if s == "all":
            out += [a for a in ALL_STRATEGIES if a not in strategies and a not in out]
        else:
            out.append(s)
    return out


def recipe_name(strategy: str, base: str = BASE) -> str:
    """The built-in config a strategy trains with: ``<base>-<strategy>`` if shipped, else
    ``<base>`` (with the strategy's name set)."""
    name = f"{base}-{strategy}"
    return name if name in builtin_configs() else base


def config_for(strategy: str, overrides: Sequence[str] = (), base: str = BASE):
    """The config of one strategy (:func:`recipe_name`, then ``overrides``)."""
    name = recipe_name(strategy, base)
    if name != base:
        return load_config(name, list(overrides))
    return load_config(base, [f"strategy={{name: {strategy}}}", *overrides])


#: rough cost of one attack step relative to a training step (MSD also evaluates its three
#: candidates; MAX/AVG run one attack per threat), to start the longest jobs first
COST = {"max": 1.2, "avg": 1.2, "msd": 3.0, "minmax": 3.0, "natural": 0.0}


def job_cost(job: dict[str, Any]) -> float:
    """Estimated training cost of a job in training steps: epochs × (1 + attack steps × COST)."""
    cfg = config_for(job["strategy"], job["overrides"], job["base"])
    steps = cfg.strategy.get("steps", 10)
    total = sum(steps.values()) if isinstance(steps, dict) else float(steps)
    return float(cfg.training.epochs) * (1.0 + total * COST.get(job["strategy"], 1.0))


def _run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (strategy, seed) and evaluate its best checkpoint on the test points."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    cpu0 = time.process_time()
    cfg = config_for(job["strategy"], job["overrides"], job["base"])
    run_dir = Path(job["run_dir"])
    trainer = Trainer(cfg, run_dir, resume=can_resume(run_dir))
    result = trainer.fit()
    model = build_model_from(cfg)
    weights = run_dir / ("best.safetensors" if result.best else "last.safetensors")
    load_weights(model, weights)
    key = _evaluation_key(job, model, cfg.threats)
    cached = _cached_evaluation(run_dir / "evaluation.json", key)
    if cached is not None:  # a rerun of a finished comparison: the same weights and evaluation
        return cached
    src = Source(load_split(cfg.data, "test"))
    x, y = src.batch(torch.arange(min(job["n_test"], len(src))))
    t0, cpu_eval = time.perf_counter(), time.process_time()
    report = evaluate(
        model.to(trainer.device), x, y, threats=cfg.threats, suite=job["suite"],
        batch_size=250, seed=0, device=trainer.device, progress=False,
        union_only=bool(job.get("union_only", False)),
    )  # fmt: skip
    eval_cpu = time.process_time() - cpu_eval
    d = report.to_dict()
    threats = list(d["threats"])
    ci = {
        "clean": d["clean_accuracy_ci95"],
        "union": d["union_accuracy_ci95"],
        "average": d["average_accuracy_ci95"],
        **{t: d["per_threat"][t]["ci95"] for t in threats},
    }
    run = {
        "strategy": job["strategy"],
        "recipe": recipe_name(job["strategy"], job["base"]),
        "recipe_text": " ".join(cfg.description.split()),
        "overrides": list(job["overrides"]),
        "seed": job["seed"],
        "clean": d["clean_accuracy"],
        "union": d["union_accuracy"],
        "average": d["average_accuracy"],
        "per_threat": {t: d["per_threat"][t]["accuracy"] for t in threats},
        "ci95": ci,
        "mode": d["mode"],
        "threats": threats,
        "time_per_epoch": result.time_per_epoch,
        "train_seconds": result.seconds,
        "eval_seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "train_cpu_seconds": cpu_eval - cpu0,
        "eval_cpu_seconds": eval_cpu,
        "epochs": result.epochs,
        "best_epoch": None if result.best is None else result.best["epoch"],
        "weights": str(weights),
        "n_test": int(x.shape[0]),
        "evaluation_key": key,
    }
    # each run's figures on disk as soon as they exist (a stopped comparison keeps them)
    atomic_write_text(run_dir / "evaluation.json", json.dumps(run, indent=1))
    return run


def _evaluation_key(job: dict[str, Any], model: torch.nn.Module, threats: Any) -> str:
    """sha256 of what a run's evaluation depends on: the model's weights (the fingerprint a
    resumed evaluation checks), the test points, the suite's entries with their parameters,
    the mode and the package version."""
    suite = get_suite(job["suite"], threats)
    blob = json.dumps(
        {
            "weights": model_fingerprint(model),
            "n_test": job["n_test"],
            "suite": suite.describe(),
            "union_only": bool(job.get("union_only", False)),
            "version": __version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _cached_evaluation(path: Path, key: str) -> dict[str, Any] | None:
    """The run record in ``path`` if it was evaluated under ``key``, else None (no file, an
    unreadable one, or another evaluation)."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) and run.get("evaluation_key") == key else None


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def default_jobs(n_runs: int) -> int:
    """Parallel training processes: one per CPU core (small models scale poorly over threads)."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(n_runs, os.cpu_count() or 1))


def _run_all(
    todo: list[dict[str, Any]], jobs: int, done: Callable[[dict[str, Any]], None]
) -> list[dict[str, Any]]:
    """:func:`_run_one` for every job, ``jobs`` at once in worker processes (longest first).

    Workers ignore Ctrl-C and die with this process; on any stop (Ctrl-C, an error) they get
    SIGTERM at once, save a checkpoint and exit (a rerun with the same folder resumes them).
    """
    runs: list[dict[str, Any]] = []
    if jobs == 1:
        for job in todo:
            runs.append(_run_one(job))
            done(runs[-1])
        return runs
    order = sorted(todo, key=lambda j: -job_cost(j))
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_init, initargs=(os.getpid(),),
    )  # fmt: skip
    try:
        futures = [pool.submit(_run_one, job) for job in order]
        for fut in as_completed(futures):
            runs.append(fut.result())
            done(runs[-1])
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown()
    return runs


def compare(
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    out: str | os.PathLike = "runs/compare",
    *,
    seeds: int = 1,
    n_test: int = DEFAULT_N_TEST,
    suite: str = "standard",
    union_only: bool = False,
    overrides: Sequence[str] = (),
    base: str = BASE,
    progress: bool = True,
    jobs: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate every strategy for ``seeds`` seeds; write and return the results.

    ``suite``/``union_only``: the evaluation (see :func:`unionrobust.evaluation.evaluate`;
    union-only gives the exact union accuracy and upper bounds per threat, labelled "≤").
    ``jobs`` > 1 trains that many runs at once in separate processes with
    ``cpu_count // jobs`` threads each (default: one process per core on the CPU); the time per
    epoch is then measured with the runs sharing the machine.
    """
    if seeds < 1:
        raise UnionRobustError(f"seeds must be >= 1, got {seeds}")
    if n_test < 1:
        raise UnionRobustError(f"the number of test points (--n) must be >= 1, got {n_test}")
    if jobs is not None and jobs < 1:
        raise UnionRobustError(f"jobs must be >= 1 (omit it for one per CPU core), got {jobs}")
    strategies = expand_strategies(strategies)
    if not strategies:
        raise UnionRobustError("give at least one strategy")
    repeated = sorted({s for s in strategies if list(strategies).count(s) > 1})
    if repeated:  # two workers would train into the same run folder
        raise UnionRobustError(
            f"strategy {', '.join(repeated)} is listed twice; give each strategy once (use "
            "--seeds N for repeated runs)"
        )
    for strategy in strategies:  # fail on a bad name, option or suite before training anything
        cfg = config_for(strategy, overrides, base)
        build_strategy(cfg)
        get_suite(suite, cfg.threats)
    with locked_folder(out):  # one run owns the output folder
        return _train_and_compare(
            strategies, Path(out), seeds=seeds, n_test=n_test, suite=suite,
            union_only=union_only, overrides=overrides, base=base, progress=progress, jobs=jobs,
            echo=echo,
        )  # fmt: skip


def _train_and_compare(
    strategies: Sequence[str],
    out: Path,
    *,
    seeds: int,
    n_test: int,
    suite: str,
    union_only: bool,
    overrides: Sequence[str],
    base: str,
    progress: bool,
    jobs: int | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    """:func:`compare` after its checks, holding the output folder's lock."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    todo = [
        {
            "strategy": strategy,
            "seed": seed,
            "overrides": [*overrides, f"training.seed={seed}"],
            "base": base,
            "run_dir": str(out / "runs" / f"{strategy}-seed{seed}"),
            "n_test": n_test,
            "suite": suite,
            "union_only": bool(union_only),
        }
        for strategy in strategies
        for seed in range(seeds)
    ]
    jobs = default_jobs(len(todo)) if jobs is None else int(jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    for job in todo:
        job["threads"] = threads
        if jobs > 1 or not progress:
            job["overrides"].append("training.progress=false")
    echo(
        f"training {len(todo)} models ({', '.join(strategies)}; {seeds} seed(s)) "
        f"in {jobs} process(es); runs in {out / 'runs'}"
    )

    mode = compare_mode(union_only)

    def done(run: dict[str, Any]) -> None:
        echo(
            f"[{time.perf_counter() - start:6.0f} s] {run['strategy']} (seed {run['seed']}): "
            f"clean {run['clean']:.1%}, union {mode.mark('union', suite)}{run['union']:.1%}, "
            f"average {mode.mark('average', suite)}{run['average']:.1%}, "
            f"{run['time_per_epoch']:.1f} s/epoch"
        )

    runs = _run_all(todo, jobs, done)
    key = {(j["strategy"], j["seed"]): i for i, j in enumerate(todo)}
    runs.sort(key=lambda r: key[(r["strategy"], r["seed"])])
    threats = runs[0]["threats"]
    rows = _aggregate(runs, strategies, threats)
    payload = {
        "threats": threats,
        "suite": suite,
        "union_only": bool(union_only),
        "upper_bound_columns": upper_bound_columns(suite, union_only, threats),
        "n_test": runs[0]["n_test"],
        "seeds": seeds,
        "jobs": jobs,
        "wall_time": time.perf_counter() - start,
        "cpu_time": _cpu_seconds(),
        "train_cpu_time": sum(r["train_cpu_seconds"] for r in runs),
        "eval_cpu_time": sum(r["eval_cpu_seconds"] for r in runs),
        "runs": runs,
        "table": rows,
    }
    _write_results(out, payload, echo)
    return payload


def _aggregate(
    runs: list[dict[str, Any]], strategies: Sequence[str], threats: list[str]
) -> list[dict[str, Any]]:
    """One row per strategy: every figure as the list of its seeds' values."""
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
                "ci95": {c: [r["ci95"][c] for r in mine] for c in mine[0]["ci95"]},
                "time_per_epoch": [r["time_per_epoch"] for r in mine],
                "train_cpu": [r["train_cpu_seconds"] for r in mine],
                "eval_cpu": [r["eval_cpu_seconds"] for r in mine],
            }
        )
    return rows


def _recipes(runs: list[dict[str, Any]]) -> str:
    """The "Recipes" section of results.md: per strategy, its config, what the config says it
    is, the overrides given and the checkpoint evaluated."""
    lines = ["## Recipes", ""]
    seen: set[str] = set()
    for r in runs:
        if r["strategy"] in seen:
            continue
        seen.add(r["strategy"])
        extra = [
            o
            for o in r.get("overrides", [])
            if not o.startswith(("training.seed=", "training.progress="))
        ]
        chosen = (
            "last epoch"
            if r["best_epoch"] is None
            else f"epoch {r['best_epoch'] + 1} of {r['epochs']}"
        )
        lines.append(
            f"- **{r['strategy']}**: config `{r.get('recipe', '?')}`"
            + (f" with {' '.join(extra)}" if extra else "")
            + f"; checkpoint evaluated: {chosen}. {r.get('recipe_text', '')}".rstrip()
        )
    return "\n".join(lines) + "\n"


def _note(payload: dict[str, Any]) -> str:
    """The sentence above the table: what was measured, how, and what it cost."""
    p = payload
    suite, seeds = p["suite"], p["seeds"]
    return (
        f"Accuracy (%) on the first {p['n_test']} test points of the embedded MNIST against the "
        f"union {', '.join(p['threats'])} (suite '{suite}', {p['runs'][0]['mode']} mode), "
        "checkpoint with the best held-out union accuracy; "
        + (
            f"mean ± std over {seeds} seeds; "
            if seeds > 1
            else "1 seed, [95 % interval] (Wilson; average: normal approx.); "
        )
        + bounds_note(suite, p["union_only"])
        + f"{p['jobs']} training process(es); total wall time {p['wall_time']:.0f} s, CPU time "
        f"{p['cpu_time']:.0f} s (training {p['train_cpu_time']:.0f} s, evaluation "
        f"{p['eval_cpu_time']:.0f} s) on {os.cpu_count()} core(s) (wall time ≈ CPU time / "
        "cores on an idle machine)."
    )


def _write_results(out: Path, payload: dict[str, Any], echo: Callable[[str], None]) -> None:
    """results.md (note, table, plot note), results.json and compare.png; echo the table."""
    threats, bounds, rows = payload["threats"], payload["upper_bound_columns"], payload["table"]
    md = table(rows, threats, bounds)
    note = _note(payload)
    plot_note = plot(rows, threats, out / "compare.png", bounds)
    text = f"# Strategy comparison\n\n{note}\n\n{md}\n"
    if plot_note:
        text += f"\n{plot_note}\n"
    text += "\n" + _recipes(payload["runs"])
    atomic_write_text(out / "results.md", text)
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1))
    echo("")
    echo(note)
    echo(md)
    echo(plot_note or f"plot: {out / 'compare.png'}")
    echo(f"wrote {out / 'results.md'} and {out / 'results.json'}")
