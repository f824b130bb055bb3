"""CLI of the min-max, affine and spatial attacks (tiny runs on the embedded MNIST data)."""

from __future__ import annotations

import json

import pytest

from unionrobust.cli.main import main


def test_minmax_ensemble_writes_table_report_and_plot(tmp_path, capsys):
    out = tmp_path / "ens"
    code = main(
        [
            "minmax", "ensemble", "--ensemble", "mlp, lenet", "--threat", "linf:0.1",
            "--steps", "2", "--n", "6", "--fixed-weights", "1,3", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "| opt" in text and "asr_all" in text and "| fixed" in text
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"avg", "minmax", "fixed"}
    assert len(report["mean_weight_trajectory"]) == 3  # steps + 1
    assert (out / "weights.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv",
    [
        ["minmax", "universal", "--model", "mlp", "--group-size", "3", "--n", "7"],
        ["minmax", "transforms", "--model", "mlp", "--random", "--transforms", "ori,flh,rot"],
        ["affine", "--model", "mlp", "--threats", "linf:0.1, l1:3", "--betas", "0,1"],
        ["affine", "--model", "mlp", "--threats", "linf:0.1, rt:10:1", "--k", "2"],
        ["spatial", "--model", "mlp", "--threat", "rt:10:1", "--n-rot", "3", "--n-trans", "3"],
    ],
)
def test_other_modes_run(argv, capsys):
    extra = [] if "--n" in argv else ["--n", "4"]
    assert main([*argv, *extra, "--steps", "2"] if argv[0] != "spatial" else [*argv, *extra]) == 0
    text = capsys.readouterr().out
    assert "| opt" in text or "accuracy %" in text


def test_cli_errors_are_one_line(capsys):
    assert main(["spatial", "--model", "mlp", "--threat", "linf:0.1", "--n", "2"]) == 2
    assert "rotation-translation" in capsys.readouterr().err
    assert main(["minmax", "ensemble", "--ensemble", "mlp, nope", "--n", "2"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["affine", "--model", "mlp", "--threats", "linf:0.1", "--n", "2"]) == 2
    assert "exactly two" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--gamma", "nan", "--gamma must be a number"), ("--w-lr", "x", "--w-lr must be a number")],
)
def test_minmax_number_options_fail_in_one_line(flag, value, message, capsys):
    argv = ["minmax", "universal", "--model", "mlp", "--n", "4", "--group-size", "2", "--untrained"]
    assert main([*argv, flag, value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_minmax_ensemble_refuses_more_points_than_the_split(capsys):
    """Issue 11: a too-large --n was clamped silently in ensemble mode (its own data loader)."""
    argv = ["minmax", "ensemble", "--ensemble", "mlp, mlp", "--n", "100000", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "holds only 1000 examples" in err and "\n" not in err
