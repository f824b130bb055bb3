"""``unionrobust geometry``: table, JSON and one-line errors."""

from __future__ import annotations

import json

import pytest

from unionrobust.cli.main import main
from unionrobust.geometry.unions import largest_lp_ball_in_hull, largest_lp_ball_in_union


def test_geometry_json(capsys):
    assert (
        main(["geometry", "--dim", "784", "--l1", "10", "--linf", "0.3", "--l2", "2", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    assert res["regime"] == "non-trivial" and res["box_ignored"] is True
    assert res["largest_ball"]["2"]["hull"] == pytest.approx(largest_lp_ball_in_hull(784, 10, 0.3))
    assert res["largest_ball"]["2"]["union"] == pytest.approx(
        largest_lp_ball_in_union(784, 10, 0.3)
    )
    assert set(res["largest_ball"]) == {"1", "2", "inf"}
    rule = res["eat_rule"]
    assert rule["covers_l2"] == (rule["hull_l2_radius"] >= 2)
    assert res["overlap_ranges"]["linf"] == pytest.approx([2 / 28, 2])


def test_geometry_table(capsys):
    assert main(["geometry", "--dim", "100", "--l1", "2", "--linf", "0.1", "--l2", "0.4"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "COVERED" in out and "does not cover" in out
    assert main(["geometry", "--dim", "100", "--l1", "2", "--linf", "0.1", "--p", "1.5,3"]) == 0
    out = capsys.readouterr().out
    assert "| 1.5 |" in out and "| 3 |" in out and "E-AT" not in out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--dim", "0", "--l1", "1", "--linf", "1"], "dimension"),
        (["--dim", "5", "--l1", "-1", "--linf", "1"], "--l1"),
        (["--dim", "5", "--l1", "1", "--linf", "1", "--l2", "-2"], "--l2"),
        (["--dim", "5", "--l1", "1", "--linf", "1", "--p", "0.5"], "--p"),
        (["--dim", "5", "--l1", "1", "--linf", "1", "--p", "x"], "--p"),
    ],
)
def test_geometry_bad_arguments(capsys, argv, match):
    assert main(["geometry", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and err.startswith("unionrobust geometry: error:")
