"""MultiRobustBench-comparable evaluation: grids, CR and stability by hand, a tiny grid run."""

from __future__ import annotations

import json

import pytest
import torch

from _helpers import tiny_data, tiny_mlp
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation import multirobust as mrb

# A hand-made model result and user reference (percent), MultiRobustBench's layout.
OURS = {
    "NoAttack": 90.0,
    "AutoLinfAttack": {"0.005": 60.0, "0.01": 30.0},
    "AutoL2Attack": {"0.125": 45.0},
}
REFERENCE = {
    "NoAttack": 90.0,
    "AutoLinfAttack": {"0.005": 80.0, "0.01": 40.0},
    "AutoL2Attack": {"0.125": 90.0, "0.25": 70.0},  # extra strengths are ignored
}


def test_competitiveness_ratio_by_hand():
    # ratios: clean 90/90 = 1; linf 60/80 = 0.75, 30/40 = 0.75; l2 45/90 = 0.5
    # CR_ind_avg = (1 + 0.75 + 0.75 + 0.5) / 4 * 100 = 75; CR_ind_worst = 0.5 * 100 = 50
    # per family: linf avg (1 + 0.75 + 0.75) / 3 = 83.33.., worst 75; l2 avg 1.5 / 2 = 75, worst 50
    cr = mrb.competitiveness_ratio(OURS, REFERENCE)
    assert cr["CR_ind_avg"] == pytest.approx(75.0)
    assert cr["CR_ind_worst"] == pytest.approx(50.0)
    assert cr["ratios"] == 4
    assert cr["per_family"]["AutoLinfAttack"]["avg"] == pytest.approx(250 / 3)
    assert cr["per_family"]["AutoLinfAttack"]["worst"] == pytest.approx(75.0)
    assert cr["per_family"]["AutoL2Attack"] == pytest.approx({"avg": 75.0, "worst": 50.0})


def test_stability_by_hand():
    # linf: 90 -> 60 -> 30: drops 30, 30 -> 30; l2: 90 -> 45: drop 45; overall 45
    s = mrb.stability(OURS)
    assert s["per_family"] == pytest.approx({"AutoLinfAttack": 30.0, "AutoL2Attack": 45.0})
    assert s["max_drop"] == pytest.approx(45.0)


def test_reference_errors_are_one_line(tmp_path):
    with pytest.raises(UnionRobustError, match=r"no accuracy for AutoL2Attack at 0\.5"):
        mrb.competitiveness_ratio({**OURS, "AutoL2Attack": {"0.5": 1.0}}, REFERENCE)
    with pytest.raises(UnionRobustError, match="is 0"):
        mrb.competitiveness_ratio(OURS, {**REFERENCE, "NoAttack": 0})
    bad = tmp_path / "ref.yaml"
    bad.write_text("AutoLinfAttack: {0.005: 1}\n")
    with pytest.raises(UnionRobustError, match="NoAttack"):
        mrb.load_reference(bad)
    with pytest.raises(UnionRobustError, match="not found"):
        mrb.load_reference(tmp_path / "none.json")


def test_reference_file_yaml_keys_become_multirobustbench_keys(tmp_path):
    path = tmp_path / "ref.yaml"
    path.write_text("NoAttack: 90\nAutoLinfAttack: {0.005: 80, 0.01: 40}\nAutoL2Attack:\n"
                    "  0.125: 90\n")  # fmt: skip
    ref = mrb.load_reference(path)
    assert ref["AutoLinfAttack"] == {"0.005": 80.0, "0.01": 40.0}
    as_json = tmp_path / "ref.json"
    as_json.write_text(json.dumps(REFERENCE))
    assert mrb.load_reference(as_json) == REFERENCE
    assert mrb.competitiveness_ratio(OURS, ref)["CR_ind_avg"] == pytest.approx(75.0)


def test_cifar10_grid_is_multirobustbench_config():
    grid = mrb.mrb_grid("cifar10")
    assert {k: len(v) for k, v in grid.items()} == {
        "AutoLinfAttack": 20, "AutoL2Attack": 20, "AutoL1Attack": 20,
    }  # fmt: skip
    assert grid["AutoLinfAttack"][:3] == [0.005, 0.01, 0.015]
    assert grid["AutoLinfAttack"][-1] == 0.1
    assert grid["AutoL2Attack"][-1] == 2.5
    assert grid["AutoL1Attack"][:2] == [1.5, 3.0] and grid["AutoL1Attack"][-1] == 30.0
    # keys as in MultiRobustBench's accs JSON (float(round(eps, 5)))
    assert [mrb.eps_key(e) for e in grid["AutoL1Attack"][:2]] == ["1.5", "3.0"]
    assert mrb.eps_key(grid["AutoLinfAttack"][2]) == "0.015"
    assert mrb.mrb_grid("cifar10", every=5)["AutoL2Attack"] == [0.625, 1.25, 1.875, 2.5]
    with pytest.raises(UnionRobustError, match="valid: cifar10"):
        mrb.mrb_grid("mnist")


def test_grid_run_on_a_tiny_model():
    model = tiny_mlp(seed=1)
    x, _ = tiny_data(24, seed=2)
    y = model(x).argmax(1)  # every point clean-correct
    y[:4] = (y[:4] + 1) % 10  # and four wrong ones
    grid = {"AutoLinfAttack": [0.02, 0.1], "AutoL2Attack": [0.2, 1.0], "AutoL1Attack": [1.0, 4.0]}
    result = mrb.multirobust_evaluation(
        model, x, y, grid, reference={"NoAttack": 100.0, **{
            f: {mrb.eps_key(e): 100.0 for e in v} for f, v in grid.items()}},
        suite="quick", batch_size=10,
    )  # fmt: skip
    accs = result["accuracies"]
    assert accs["NoAttack"] == pytest.approx(100 * 20 / 24)
    for family, values in grid.items():
        series = [accs[family][mrb.eps_key(e)] for e in values]
        assert series[0] <= accs["NoAttack"] and series[1] <= series[0]  # monotone in ε
        # the first strength equals our engine run on that threat alone
        norm = mrb.GRIDS["cifar10"][family][0]
        alone = evaluate(model, x, y, f"{norm}:{values[0]}", suite="quick", batch_size=10,
                         progress=False, diagnostics=False)  # fmt: skip
        assert series[0] == pytest.approx(100 * float(alone.threat_robust()[:, 0].double().mean()))
    for i, point in enumerate(result["union"]):
        worst = min(accs[f][mrb.eps_key(grid[f][i])] for f in grid)
        assert point["accuracy"] <= worst
    assert result["union"][1]["accuracy"] < accs["NoAttack"]  # the large balls break something
    # reference 100% everywhere: CR_avg = mean accuracy over the 7 numbers, worst = the least
    numbers = [accs["NoAttack"]] + [a for f in grid for a in accs[f].values()]
    assert result["cr"]["CR_ind_avg"] == pytest.approx(sum(numbers) / 7)
    assert result["cr"]["CR_ind_worst"] == pytest.approx(min(numbers))
    assert result["stability"]["max_drop"] >= 0


def test_reference_missing_a_strength_fails_before_the_run():
    model = tiny_mlp()
    x, y = tiny_data(4)
    with pytest.raises(UnionRobustError, match=r"no accuracy for AutoLinfAttack at 0\.005"):
        mrb.multirobust_evaluation(model, x, y, "cifar10", reference={"NoAttack": 90.0,
                                   "AutoLinfAttack": {}})  # fmt: skip


def test_cli_eval_mrb_grid_writes_report_json_md_html(tmp_path, monkeypatch, capsys):
    from unionrobust.cli import main as cli_main
    from unionrobust.models import build_model, save_weights

    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_weights(build_model("small-cnn"), weights)
    grid = mrb.mrb_grid("cifar10", every=10)  # strengths 10 and 20 of each family
    ref = {"NoAttack": 50.0, **{f: {mrb.eps_key(e): 50.0 for e in v} for f, v in grid.items()}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    out = tmp_path / "run"
    code = cli_main.main([
        "eval", "--model", "small-cnn", "--weights", str(weights), "--n", "8",
        "--threats", "linf:0.1", "--suite", "quick", "--no-progress", "--out", str(out),
        "--mrb-grid", "cifar10", "--mrb-every", "10", "--mrb-reference", str(tmp_path / "ref.json"),
    ])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    m = report["multirobustbench"]
    assert m["grid"] == grid and report["n_examples"] == 8
    numbers = [m["accuracies"]["NoAttack"]] + [a for f in grid for a in m["accuracies"][f].values()]
    assert m["cr"]["CR_ind_avg"] == pytest.approx(sum(numbers) / len(numbers) * 2)
    assert "CR_ind_avg" in (out / "report.md").read_text()
    assert "MultiRobustBench grid" in (out / "report.html").read_text()
    assert "CR_ind_worst" in capsys.readouterr().out
    code = cli_main.main(["eval", "--model", "small-cnn", "--mrb-reference", "r.json"])
    assert code == 2 and "--mrb-reference needs --mrb-grid" in capsys.readouterr().err


def test_published_reference_is_multirobustbenchs_ata():
    ref = mrb.published_reference("cifar10")
    assert "multirobustbench/multirobustbench/blob/8c953518" in ref["source"]
    assert "ata_accs.js" in ref["source"]
    assert ref["NoAttack"] == pytest.approx(94.20333333333333)
    assert ref["AutoLinfAttack"]["0.03"] == pytest.approx(44.69)  # spot checks against the
    assert ref["AutoL2Attack"]["0.5"] == pytest.approx(65.33)  # published table
    assert ref["AutoL1Attack"]["30.0"] == pytest.approx(24.94333333333333)
    for family, values in mrb.mrb_grid("cifar10").items():  # every strength of the grid
        assert sorted(ref[family], key=float) == [mrb.eps_key(e) for e in values]
    same = {k: v for k, v in ref.items() if k == "NoAttack" or k in mrb.GRIDS["cifar10"]}
    cr = mrb.competitiveness_ratio(same, ref)
    assert cr["CR_ind_avg"] == pytest.approx(100.0) and cr["note"] is None
    assert cr["strengths"] == {f: "20 of 20" for f in mrb.GRIDS["cifar10"]}
    with pytest.raises(UnionRobustError, match="valid: cifar10"):
        mrb.published_reference("mnist")


def test_cli_mrb_grid_uses_the_published_reference_and_says_when_coarse(
    tmp_path, monkeypatch, capsys
):
    from unionrobust.cli import main as cli_main

    monkeypatch.setattr(cli_main, "COMMANDS", ["eval"])
    out = tmp_path / "run"
    code = cli_main.main([
        "eval", "--model", "small-cnn", "--untrained", "--n", "8", "--threats", "linf:0.1",
        "--suite", "quick", "--no-progress", "--out", str(out), "--mrb-grid", "cifar10",
        "--mrb-every", "10",
    ])  # fmt: skip
    assert code == 0
    cr = json.loads((out / "report.json").read_text())["multirobustbench"]["cr"]
    assert cr["strengths"] == {f: "2 of 20" for f in mrb.GRIDS["cifar10"]}
    assert "CR computed on 2 of 20 strengths per family" in cr["note"]
    assert "metrics.py" in cr["reference"]
    printed = capsys.readouterr().out
    for text in (printed, (out / "report.md").read_text(), (out / "report.html").read_text()):
        assert "CR computed on 2 of 20 strengths" in text and "CR_ind_avg" in text
