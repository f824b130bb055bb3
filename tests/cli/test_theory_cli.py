"""``unionrobust theory``: table, JSON and one-line errors."""

from __future__ import annotations

import json

import pytest

from unionrobust.cli.main import main

SMALL = ["--dim", "50", "--samples", "2000", "--mix", "4"]


def test_theory_json(capsys):
    assert main(["theory", *SMALL, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["holds"] is True and res["min_avg"] >= 0.5 - 1e-12
    assert res["eps_1"] == 2.0 and res["eps_inf"] == pytest.approx(2 * 2.0 / 50**0.5)
    names = {r["name"] for r in res["rows"]}
    assert {"natural", "f=sign(x0)", "h=sign(sum x_i)", "constant +1"} <= names
    ob = res["opt_bounds"]
    assert ob["opt_max"] == max(ob["risks"].values())
    assert ob["opt_avg"] == pytest.approx(sum(ob["risks"].values()) / 2)


def test_theory_table(capsys):
    assert main(["theory", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| natural | exact |" in out and "(Theorem 1)" in out and "OPT(R_avg)" in out
    assert main(["theory", *SMALL, "--radius-scale", "0.4"]) == 0
    assert "does not apply" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--dim", "0"], "d (number of weak features)"),
        (["--p0", "1.2"], "p0"),
        (["--alpha", "0"], "alpha"),
        (["--samples", "0"], "--samples"),
        (["--mix", "1"], "n_mix"),
        (["--radius-scale", "-1"], "radius_scale"),
    ],
)
def test_theory_bad_arguments(capsys, argv, match):
    assert main(["theory", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and err.startswith("unionrobust theory: error:")
