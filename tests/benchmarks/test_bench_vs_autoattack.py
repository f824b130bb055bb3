"""The pure helpers of benchmarks/bench_vs_autoattack.py (no AutoAttack or Foolbox needed):
verdict comparison against a slow per-point reference, targets, tables, cache keys."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_vs_autoattack as B

SPECS = ["linf:0.3", "l2:2", "l1:10"]
#: reference -> the specs it attacks (AutoAttack all, Boundary ℓ2, Pointwise ℓ1)
COVER = {"autoattack": SPECS, "boundary": ["l2:2"], "pointwise": ["l1:10"]}


def _reference(refs, ours, union_only):
    """Per point, in plain Python: what compare_verdicts must give."""
    n = len(ours[SPECS[0]])
    all_refs = {s: [all(refs[r][s][i] for r in refs if s in refs[r]) for i in range(n)]
                for s in SPECS}
    all_refs["union"] = [all(all_refs[s][i] for s in SPECS) for i in range(n)]
    ours = {**ours, "union": [all(ours[s][i] for s in SPECS) for i in range(n)]}
    out = {}
    for key in [*SPECS, "union"]:
        accs = {}
        for r, per in refs.items():
            if key in per:
                accs[r] = sum(per[key]) / n
            elif key == "union" and set(per) >= set(SPECS):
                accs[r] = sum(1 for i in range(n) if all(per[s][i] for s in SPECS)) / n
        a, o = all_refs[key], ours[key]
        out[key] = {
            "refs": accs,
            "all_refs": sum(a) / n,
            "min_ref": min(accs.values()) if accs else None,
            "ours": sum(o) / n,
            "missed": sum(1 for i in range(n) if not a[i] and o[i]),
            "extra": sum(1 for i in range(n) if a[i] and not o[i]),
            "n": n,
        }
    if union_only is not None:
        a = all_refs["union"]
        out["union"]["ours_union_only"] = sum(union_only) / n
        out["union"]["missed_union_only"] = sum(
            1 for i in range(n) if not a[i] and union_only[i]
        )
    return out


@settings(max_examples=50, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), with_union_only=st.booleans())
def test_compare_verdicts_matches_per_point_reference(data, n, with_union_only):
    bools = st.lists(st.booleans(), min_size=n, max_size=n)
    refs = {r: {s: data.draw(bools) for s in specs} for r, specs in COVER.items()}
    ours = {s: data.draw(bools) for s in SPECS}
    uo = data.draw(bools) if with_union_only else None
    got = B.compare_verdicts(
        {r: {s: torch.tensor(v) for s, v in per.items()} for r, per in refs.items()},
        {s: torch.tensor(v) for s, v in ours.items()},
        None if uo is None else torch.tensor(uo),
    )
    assert got == _reference(refs, ours, uo)


def test_robust_from_broken_excludes_clean_errors_and_broken_points():
    clean = torch.tensor([True, True, False, True])
    got = B.robust_from_broken({"boundary": {"l2:2": [1, 2]}, "aa": {"l2:2": []}}, clean)
    assert got["boundary"]["l2:2"].tolist() == [True, False, False, True]
    assert got["aa"]["l2:2"].tolist() == [True, True, False, True]
    assert clean.tolist() == [True, True, False, True]  # not modified


def _cpu(per_threat, union_only, aa_total=10.0, aa_apgd=4.0):
    return B.cpu_summary(
        {"autoattack": {"linf:0.3": aa_total}, "boundary": {"l2:2": 5.0}},
        aa_apgd, per_threat, union_only,
    )


def test_cpu_summary_ratios():
    c = _cpu(9.0, 3.0)
    assert c["aa_total"] == 10.0 and c["refs"]["boundary"]["total"] == 5.0
    assert (c["per_threat_ratio"], c["union_only_ratio"]) == (0.9, 0.3)
    assert c["union_only_ratio_apgd"] == 0.75
    assert _cpu(None, None)["union_only_ratio"] is None


def _flags(accuracy, missed, per_threat, union_only, apgd):
    return {
        "accuracy_le_min_ref": accuracy,
        "missed_le_0.5pct": missed,
        "cpu_per_threat_le_1x_aa": per_threat,
        "cpu_union_only_le_0.5x_aa": union_only,
        "cpu_union_only_le_1x_apgd_pair": apgd,
    }


def test_targets_flag_each_failure():
    t = torch.tensor
    aa = {"l2:2": t([True, True, False, False] * 50)}  # 100 of 200 robust
    boundary = {"l2:2": t([True, True, True, False] * 50)}  # weaker, but breaks nothing new
    weaker = {"l2:2": t([True, False, False, False] * 50)}
    v = B.compare_verdicts({"autoattack": aa, "boundary": boundary}, weaker, None)
    assert B.targets(v, _cpu(9.0, None), masked=False) == _flags(True, True, True, None, None)
    # a point only Boundary breaks (point 0 of the first block), which we call robust:
    # 1 in 200 = 0.5 %, allowed; accuracy still at the minimum (AutoAttack's)
    b1 = {"l2:2": boundary["l2:2"].clone()}
    b1["l2:2"][0] = False
    v1 = B.compare_verdicts({"autoattack": aa, "boundary": b1}, aa, None)
    assert (v1["l2:2"]["missed"], v1["l2:2"]["extra"]) == (1, 0)
    assert v1["l2:2"]["all_refs"] == 99 / 200 and v1["l2:2"]["min_ref"] == 0.5
    assert B.targets(v1, _cpu(9.0, 4.0), masked=False) == _flags(True, True, True, True, True)
    # two such points are too many; above the minimum fails; CPU over every limit
    b2 = {"l2:2": b1["l2:2"].clone()}
    b2["l2:2"][4] = False
    above = {"l2:2": aa["l2:2"] | t([False, False, True, False] * 50)}
    res = B.targets(
        B.compare_verdicts({"autoattack": aa, "boundary": b2}, above, None),
        _cpu(11.0, 6.0), masked=False,
    )
    assert res == _flags(False, False, False, False, False)
    # the APGD-pair target is not judged on masked models
    assert B.targets(v1, _cpu(9.0, 4.5), masked=True)["cpu_union_only_le_1x_apgd_pair"] is None
    # the union-only verdict is judged too: robust where a reference broke the union
    uo = aa["l2:2"].clone()
    uo[2] = uo[6] = True
    res = B.targets(B.compare_verdicts({"autoattack": aa}, weaker, uo), _cpu(9.0, 4.0), False)
    assert res["accuracy_le_min_ref"] is False and res["missed_le_0.5pct"] is False


def test_tables_name_every_model_reference_and_threat():
    t = torch.tensor
    refs = {r: {s: t([True, False]) for s in specs} for r, specs in COVER.items()}
    v = B.compare_verdicts(refs, {s: t([True, True]) for s in SPECS}, t([False, False]))
    cpu = B.cpu_summary(
        {"autoattack": dict.fromkeys(SPECS, 1.0), "boundary": {"l2:2": 7.0},
         "pointwise": {"l1:10": 2.5}},
        1.5, 2.0, 1.0,
    )
    results = {
        "lenet-max": {"n": 2, "clean": 1.0, "verdicts": v, "cpu": cpu, "masked": False,
                      "thresholding_filters": 0, "targets": B.targets(v, cpu, masked=False)},
        "lenet-pinf": {"n": 2, "clean": 1.0, "verdicts": v, "cpu": cpu, "masked": True,
                       "thresholding_filters": 4, "targets": B.targets(v, cpu, masked=True)},
    }
    text = B.tables(results)
    for s in [*SPECS, "union", "lenet-max", "1.0 + 1.0 + 1.0 = 3.0", "7.0", "2.5", "0.67",
              "0.33", "Boundary %", "all references %", "× APGD pair",
              "| lenet-max | no |", "| lenet-pinf | yes (4 thresholding filters) |",
              "cpu_union_only_le_1x_apgd_pair n/a"]:
        assert s in text
    assert "1 (50.0 %)" in text  # the references break point 2, we miss it, on every row


def test_cache_keys_change_with_weights_points_and_settings():
    w = B.tensor_digest([("w", torch.ones(3))])
    assert w == B.tensor_digest([("w", torch.ones(3))])
    assert w != B.tensor_digest([("w", torch.ones(3).double())])
    assert w != B.tensor_digest([("v", torch.ones(3))])
    p = B.tensor_digest([("x", torch.zeros(2, 1, 4, 4))])
    k = B.reference_key(w, p, {"boundary": {"steps": 5000}})
    assert k == B.reference_key(w, p, {"boundary": {"steps": 5000}})
    assert k != B.reference_key(w, p, {"boundary": {"steps": 25000}})
    assert k != B.reference_key(p, w, {"boundary": {"steps": 5000}})


def test_cached_or_run_runs_once_per_key(tmp_path):
    calls = []

    def run():
        calls.append(1)
        return {"cpu": {"l2:2": 1.0}}

    path = tmp_path / "m-ref.json"
    assert B.cached_or_run(path, "k1", {}, None) is None  # nothing cached, not allowed to run
    assert B.cached_or_run(path, "k1", {"model": "m"}, run) == {"cpu": {"l2:2": 1.0}}
    assert B.cached_or_run(path, "k1", {}, run) == {"cpu": {"l2:2": 1.0}}
    assert len(calls) == 1
    B.cached_or_run(path, "k2", {}, run)  # another key: run again
    assert len(calls) == 2


def test_unknown_model_or_reference_is_an_error():
    with pytest.raises(SystemExit):
        B.parse_args(["--models", "lenet-nope"])
    with pytest.raises(SystemExit):
        B.parse_args(["--references", "hsj"])
    args = B.parse_args(["--quick"])
    assert args.n == 20 and args.boundary_steps == 500
    assert B.boundary_steps("small-cnn-pinf-strong-s0", B.parse_args([])) == 25000
    assert B.boundary_steps("lenet-max", B.parse_args([])) == 5000


def test_tree_digest_follows_the_python_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    d = B.tree_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("changed")
    assert B.tree_digest(tmp_path) == d
    (tmp_path / "a.py").write_text("x = 2\n")
    assert B.tree_digest(tmp_path) != d
