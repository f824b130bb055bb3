"""Cost of the evaluation diagnostics and report writing, as ratios, in one run.

On a small-cnn (embedded MNIST, 64 points — the diagnostics' default sample), the table gives
the time of :func:`run_diagnostics`, of the gradient-masking flag computed from a report, and
of writing report.md + report.html (with the filter picture), each divided by one forward +
backward pass of the model on the same 64 points (t_fb), and the diagnostics' share of a
``quick``-suite evaluation of N points.

    python benchmarks/bench_diagnostics.py [--n 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _common import forward_backward, interleaved, machine_note, markdown_table, set_threads

from unionrobust.data import as_tensors, get_dataset
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.diagnostics import gradient_masking, run_diagnostics
from unionrobust.models import build_model
from unionrobust.reporting.html import write_reports


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    set_threads(a.threads)
    torch.manual_seed(0)
    model = build_model("small-cnn").eval()
    x, y = as_tensors(get_dataset("mnist-embedded", "test"), a.n)
    xs, ys = x[:64], y[:64]
    kw = dict(threats="linf:0.3, l2:2, l1:10", suite="quick", progress=False)
    report = evaluate(model, x, y, **kw)
    out = tempfile.mkdtemp(prefix="bench_diag_")

    def frozen_fb():
        for q in model.parameters():
            q.requires_grad_(False)
        try:
            forward_backward(model, xs, ys)()
        finally:
            for q in model.parameters():
                q.requires_grad_(True)

    t = interleaved(
        {
            "fb": frozen_fb,
            "diag": lambda: run_diagnostics(model, xs, ys),
            "masking": lambda: gradient_masking(report),
            "write": lambda: write_reports(out, report, model=model),
            "eval_nodiag": lambda: evaluate(model, x, y, diagnostics=False, **kw),
            "eval": lambda: evaluate(model, x, y, **kw),
        },
        warmup=1,
        rounds=3,
    )
    rows = [
        ["run_diagnostics (64 points) / t_fb", t["diag"] / t["fb"]],
        ["gradient_masking(report) / t_fb", t["masking"] / t["fb"]],
        ["write_reports (md+html+filters) / t_fb", t["write"] / t["fb"]],
        [f"eval quick n={a.n}: with / without diagnostics", t["eval"] / t["eval_nodiag"]],
    ]
    print(markdown_table(["measure", "ratio"], rows))
    print()
    print(machine_note())


if __name__ == "__main__":
    main()
