"""``affine`` and ``spatial`` show a progress bar on stderr; ``--no-progress`` hides it."""

from __future__ import annotations

import pytest

from unionrobust.cli.main import main

RUNS = {
    "spatial": (
        ["spatial", "--model", "mlp", "--threat", "rt:10:1", "--n-rot", "3", "--n-trans", "3"],
        "spatial-grid",
        4,
    ),
    "affine": (
        [
            "affine",
            "--model",
            "mlp",
            "--threats",
            "linf:0.1,l1:3",
            "--betas",
            "0,1",
            "--steps",
            "2",
        ],
        "affine",
        8,  # two betas x four inputs
    ),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_progress_bar_on_stderr_unless_disabled(name, capsys):
    argv, label, total = RUNS[name]
    common = [*argv, "--n", "4", "--untrained"]
    assert main(common) == 0
    shown = capsys.readouterr().err
    assert f"{label}:" in shown and f"/{total} [" in shown
    assert main([*common, "--no-progress"]) == 0
    assert f"{label}:" not in capsys.readouterr().err
