"""Shared benchmark helpers: thread setup, input-gradient floor, interleaved timing, tables.

Benchmarks report RATIOS measured within one run (e.g. attack step time / one forward+backward
of the model). On a shared CPU absolute seconds drift, so the timed functions of one setting
are run round-robin (one call of each per round) and the median over rounds is kept: slow
periods then hit every function alike.

Scripts in ``benchmarks/`` (their folder is on ``sys.path``) import it as ``_common``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unionrobust.allocator import APPLIED_ON_IMPORT


def set_threads(threads: int) -> int:
    """``torch.set_num_threads(threads)`` (inter-op too, where still allowed); returns it."""
    torch.set_num_threads(max(1, int(threads)))
    with contextlib.suppress(RuntimeError):  # inter-op threads can be set once per process
        torch.set_num_interop_threads(max(1, int(threads)))
    return torch.get_num_threads()


def use_allocator(system: bool = False) -> str:
    """Which allocator settings this process runs with (:func:`machine_note` prints it).
    ``import unionrobust`` applies the CLI's (:mod:`unionrobust.allocator`); ``system`` asks for
    glibc's defaults, which only ``UNIONROBUST_MALLOC=system`` set before the import gives."""
    if system and APPLIED_ON_IMPORT:
        raise SystemExit(
            "glibc's default allocator: start the benchmark with UNIONROBUST_MALLOC=system "
            "(import unionrobust tunes malloc)"
        )
    return "CLI malloc settings" if APPLIED_ON_IMPORT else "glibc defaults"


def frozen(model: nn.Module) -> nn.Module:
    """Eval mode, parameters without ``requires_grad``: gradients w.r.t. the input only."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """t_fb: one forward and one backward of the CE loss w.r.t. the input (the step floor)."""

    def run() -> None:
        xa = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(xa), y, reduction="sum")
        torch.autograd.grad(loss, xa)

    return run


def forward_only(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward pass without a graph."""

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def timeit(fn: Callable[[], object], warmup: int = 1, repeat: int = 5) -> float:
    """Median time (seconds, :func:`clock`) of ``repeat`` calls after ``warmup`` calls."""
    now = clock()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


def clock() -> Callable[[], float]:
    """The timer for this process: CPU time of the process when torch runs one thread (other
    jobs on a shared machine then do not count against us), wall time otherwise (CPU time
    would add up the threads)."""
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def interleaved(
    fns: dict[str, Callable[[], object]], warmup: int = 1, rounds: int = 5
) -> dict[str, float]:
    """Median time (seconds, :func:`clock`) per function, called round-robin each round."""
    now = clock()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = now()
            fn()
            times[name].append(now() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def per_step(total: dict[str, float], name: str, short: int, long: int) -> float:
    """Per-step time from runs of ``short`` and ``long`` steps (keys ``name@short`` and
    ``name@long``): the difference cancels the fixed cost (clean pass, random start, result)."""
    return (total[f"{name}@{long}"] - total[f"{name}@{short}"]) / (long - short)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats printed with 2 decimals (3 significant below 0.1)."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 0.1 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_note() -> str:
    """One line describing the run conditions (threads, load) to print above a table."""
    try:
        with open("/proc/loadavg") as fh:
            load = fh.read().split()[0]
    except OSError:
        load = "?"
    kind = "CPU time" if clock() is time.process_time else "wall time"
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {kind}, "
        f"{use_allocator()}, load average {load}"
    )


def fit_embedded(
    name: str,
    epochs: int,
    *,
    lr: float = 1e-3,
    batch: int = 100,
    seed: int = 0,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """A zoo model after ``epochs`` Adam epochs on the embedded MNIST training split (or
    ``data``), in a seeded order; returned in eval mode (parameters still trainable)."""
    from unionrobust.data import load_embedded_mnist
    from unionrobust.models import build_model

    x, y = load_embedded_mnist("train") if data is None else data
    torch.manual_seed(seed)
    model = build_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()
