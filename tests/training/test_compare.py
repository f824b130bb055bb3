"""`unionrobust compare` end to end in a tiny setting (2 strategies, 1 epoch, few points)."""

from __future__ import annotations

import json

import pytest

from _helpers import TINY_TRAINING
from unionrobust.cli.main import main
from unionrobust.training import compare_table
from unionrobust.training.compare import ALL_STRATEGIES, DEFAULT_STRATEGIES, expand_strategies
from unionrobust.training.compare_table import _fmt, is_bound, table, upper_bound_columns

TINY = ["--set", "training.epochs=1", *TINY_TRAINING, "--set", "eval.n=10"]


def test_compare_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--strategies", "pinf,eat", "--n", "20", "--jobs", "1",
                 "--out", str(out), "--no-progress", *TINY])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| strategy | clean | linf:0.3 | l2:2 | l1:10 | union | average | s/epoch |" in printed
    md = (out / "results.md").read_text()
    assert "first 20 test points" in md and "| pinf |" in md and "| eat |" in md
    # results.md names each strategy's recipe and the checkpoint it evaluated
    assert (
        "## Recipes" in md and "- **pinf**: config `mnist-small-pinf` with training.epochs=1" in md
    )
    assert "checkpoint evaluated: " in md and "train CPU s | eval CPU s |" in md
    # the default evaluation: standard suite, per-threat mode, every figure exact, 95 % intervals
    assert "suite 'standard', per-threat mode" in md and "≤" not in md
    row = next(line for line in md.splitlines() if line.startswith("| pinf |")).split(" | ")
    assert all("[" in cell for cell in row[1:7])
    data = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in data["runs"]] == ["pinf", "eat"]
    assert data["suite"] == "standard" and data["union_only"] is False
    assert data["upper_bound_columns"] == []
    for r in data["runs"]:
        # each run's figures were written next to its weights as soon as it finished
        saved = out / "runs" / f"{r['strategy']}-seed0" / "evaluation.json"
        assert json.loads(saved.read_text()) == r
        assert r["n_test"] == 20 and r["epochs"] == 1 and r["mode"] == "per-threat"
        assert r["ci95"]["union"][0] <= r["union"] <= r["ci95"]["union"][1]
        assert r["train_cpu_seconds"] > 0 and r["eval_cpu_seconds"] > 0
        assert 0 <= r["union"] <= min(r["per_threat"].values()) <= r["clean"] <= 1
        assert r["average"] == pytest.approx(sum(r["per_threat"].values()) / 3)
    try:
        import matplotlib  # noqa: F401

        assert (out / "compare.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in md
    assert main(["compare", "--strategies", "pinf,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_compare_union_only_marks_per_threat_upper_bounds(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--strategies", "pinf", "--n", "20", "--jobs", "1",
                 "--union-only", "--out", str(out), "--no-progress", *TINY])  # fmt: skip
    assert code == 0
    assert "average ≤ " in capsys.readouterr().out  # the progress line labels the bound too
    md = (out / "results.md").read_text()
    assert "suite 'standard', union-only mode" in md and "≤: upper bounds" in md
    row = next(line for line in md.splitlines() if line.startswith("| pinf |")).split(" | ")
    assert row[2].startswith("≤ ") and not row[5].startswith("≤") and row[6].startswith("≤ ")
    data = json.loads((out / "results.json").read_text())
    assert data["union_only"] is True and data["runs"][0]["mode"] == "union-only"


def test_table_reports_mean_and_std_over_seeds():
    rows = [{"strategy": "msd", "clean": [0.9, 0.8], "union": [0.5, 0.3], "average": [0.6, 0.6],
             "per_threat": {"linf:0.3": [0.5, 0.5]}, "time_per_epoch": [10.0, 12.0]}]  # fmt: skip
    md = table(rows, ["linf:0.3"])
    assert "| msd | 85.0 ± 7.1 | 50.0 ± 0.0 | 40.0 ± 14.1 | 60.0 ± 0.0 | 11.0 ± 1.4 |" in md
    assert _fmt([0.25]) == "25.0"


def test_table_gives_each_strategy_its_cpu_cost_when_known():
    row = {"strategy": "msd", "clean": [0.9], "union": [0.5], "average": [0.6],
           "per_threat": {"linf:0.3": [0.5]}, "time_per_epoch": [10.0],
           "train_cpu": [301.4], "eval_cpu": [250.0]}  # fmt: skip
    md = table([row], ["linf:0.3"])
    assert md.splitlines()[0].endswith("| s/epoch | train CPU s | eval CPU s |")
    assert md.splitlines()[2].endswith("| 10.0 | 301 | 250 |")
    two = {**row, "train_cpu": [300.0, 310.0], "eval_cpu": [250.0, 250.0]}
    assert "| 305 ± 7 | 250 ± 0 |" in table([two], ["linf:0.3"])
    del row["eval_cpu"]  # rows without a cost (older results) get no such column
    assert "eval CPU s" not in table([row], ["linf:0.3"])


def test_table_shows_95_percent_intervals_and_marks_upper_bounds():
    rows = [{"strategy": "msd", "clean": [0.9], "union": [0.42], "average": [0.5],
             "per_threat": {"linf:0.3": [0.5]}, "time_per_epoch": [10.0],
             "ci95": {"clean": [[0.86, 0.93]], "union": [[0.354, 0.49]],
                      "average": [[0.45, 0.55]], "linf:0.3": [[0.43, 0.57]]}}]  # fmt: skip
    md = table(rows, ["linf:0.3"], upper_bound_columns("standard", True, ["linf:0.3"]))
    assert "| msd | 90.0 [86.0, 93.0] | ≤ 50.0 [43.0, 57.0] | 42.0 [35.4, 49.0] | " in md
    assert "| ≤ 50.0 [45.0, 55.0] | 10.0 |" in md
    exact = table(rows, ["linf:0.3"], upper_bound_columns("standard", False, ["linf:0.3"]))
    assert "≤" not in exact
    quick = upper_bound_columns("quick", False, ["linf:0.3"])
    assert set(quick) == {"linf:0.3", "union", "average"}


def _row(flags=None):
    row = {"strategy": "pinf", "clean": [0.9], "union": [0.1], "average": [0.5],
           "per_threat": {"linf:0.3": [0.7], "l1:10": [0.2]}, "time_per_epoch": [1.0],
           "ci95": {"clean": [[0.85, 0.94]], "union": [[0.07, 0.14]], "average": [[0.45, 0.55]],
                    "linf:0.3": [[0.64, 0.75]], "l1:10": [[0.16, 0.25]]}}  # fmt: skip
    if flags is not None:
        row["is_bound"] = flags
    return row


def test_is_bound_prefers_the_cell_flag_over_the_column_list():
    assert is_bound(_row(), "linf:0.3", ["linf:0.3"]) and not is_bound(_row(), "union", [])
    flagged = _row({"linf:0.3": False, "l1:10": True})
    assert not is_bound(flagged, "linf:0.3", ["linf:0.3"]) and is_bound(flagged, "l1:10")
    md = table([flagged], ["linf:0.3", "l1:10"])
    assert "| pinf | 90.0 [85.0, 94.0] | 70.0 [64.0, 75.0] | ≤ 20.0 [16.0, 25.0] | 10.0" in md


def test_plot_draws_upper_bounds_hollow_hatched_and_marked(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    seen = {}

    def keep(fig, path, dpi=100):
        ax = fig.axes[0]
        seen["patches"] = [(p.get_hatch(), p.get_facecolor()[3]) for p in ax.patches]
        seen["texts"] = [t.get_text() for t in ax.texts]
        seen["legend"] = [t.get_text() for t in ax.get_legend().get_texts()]

    monkeypatch.setattr(compare_table, "atomic_savefig", keep)
    threats = ["linf:0.3", "l1:10"]
    compare_table.plot([_row({"l1:10": True})], threats, tmp_path / "p.png")
    hatched = [p for p in seen["patches"] if p[0]]
    assert len(hatched) == 1 and hatched[0] == ("///", 0.0)  # one hollow hatched bar: l1
    assert seen["texts"] == ["≤"] and "≤ upper bound" in seen["legend"]
    compare_table.plot([_row()], threats, tmp_path / "q.png")  # exact: solid bars, no mark
    assert not any(p[0] for p in seen["patches"]) and seen["texts"] == []
    assert "≤ upper bound" not in seen["legend"]
    compare_table.plot([_row()], threats, tmp_path / "r.png", bounds=threats)  # column list
    assert sum(1 for p in seen["patches"] if p[0]) == 2 and seen["texts"] == ["≤", "≤"]


def test_all_expands_to_every_recipe_once():
    assert expand_strategies(["all"]) == list(ALL_STRATEGIES)
    assert expand_strategies(["msd", "all"]) == ["msd", *(s for s in ALL_STRATEGIES if s != "msd")]
    assert set(DEFAULT_STRATEGIES) < set(ALL_STRATEGIES)


def test_a_rerun_reuses_each_finished_evaluation(tmp_path, capsys):
    """Rerunning a finished comparison in the same folder trains nothing and re-evaluates
    nothing: each run's evaluation.json is reused while its weights and suite are the same."""
    out = tmp_path / "cmp"
    args = ["compare", "--strategies", "pinf", "--n", "12", "--jobs", "1", "--suite", "quick",
            "--out", str(out), "--no-progress", *TINY]  # fmt: skip
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())["runs"][0]
    assert main(args) == 0
    again = json.loads((out / "results.json").read_text())["runs"][0]
    assert again == first  # the same record, the evaluation's CPU seconds included
    record = out / "runs" / "pinf-seed0" / "evaluation.json"
    data = json.loads(record.read_text())
    data["evaluation_key"] = "another suite"
    record.write_text(json.dumps(data))
    assert main(args) == 0  # a record of another evaluation is not reused
    third = json.loads((out / "results.json").read_text())["runs"][0]
    assert third["evaluation_key"] == first["evaluation_key"] and third["union"] == first["union"]
    assert third["eval_seconds"] != first["eval_seconds"]
