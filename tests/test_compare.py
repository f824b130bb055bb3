"""`unionrobust compare` end to end in a tiny setting (2 strategies, 1 epoch, few points)."""

from __future__ import annotations

import json

import pytest

from _helpers import TINY_TRAINING
from unionrobust.cli.main import main
from unionrobust.training.compare import _fmt, table

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
    data = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in data["runs"]] == ["pinf", "eat"]
    for r in data["runs"]:
        assert r["n_test"] == 20 and r["epochs"] == 1
        assert 0 <= r["union"] <= min(r["per_threat"].values()) <= r["clean"] <= 1
        assert r["average"] == pytest.approx(sum(r["per_threat"].values()) / 3)
    try:
        import matplotlib  # noqa: F401

        assert (out / "compare.png").stat().st_size > 0
    except ImportError:
        assert "matplotlib is not installed" in md
    assert main(["compare", "--strategies", "pinf,nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_table_reports_mean_and_std_over_seeds():
    rows = [{"strategy": "msd", "clean": [0.9, 0.8], "union": [0.5, 0.3], "average": [0.6, 0.6],
             "per_threat": {"linf:0.3": [0.5, 0.5]}, "time_per_epoch": [10.0, 12.0]}]  # fmt: skip
    md = table(rows, ["linf:0.3"])
    assert "| msd | 85.0 ± 7.1 | 50.0 ± 0.0 | 40.0 ± 14.1 | 60.0 ± 0.0 | 11.0 ± 1.4 |" in md
    assert _fmt([0.25]) == "25.0"
