"""The pure verdict-comparison helpers of benchmarks/bench_vs_autoattack.py (no AutoAttack
needed: they compare bool verdict vectors against a slow per-point reference)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_vs_autoattack as B

SPECS = ["linf:0.3", "l2:2", "l1:10"]


def _reference(aa, ours, union_only):
    """Per point, in plain Python: the counts compare_verdicts must give."""
    n = len(aa[SPECS[0]])
    out = {}
    aa_u = [all(aa[s][i] for s in SPECS) for i in range(n)]
    ours_u = [all(ours[s][i] for s in SPECS) for i in range(n)]
    for key, a, o in [*[(s, aa[s], ours[s]) for s in SPECS], ("union", aa_u, ours_u)]:
        out[key] = {
            "aa": sum(a) / n,
            "ours": sum(o) / n,
            "missed": sum(1 for i in range(n) if not a[i] and o[i]),
            "extra": sum(1 for i in range(n) if a[i] and not o[i]),
            "n": n,
        }
    if union_only is not None:
        out["union"]["ours_union_only"] = sum(union_only) / n
        out["union"]["missed_union_only"] = sum(
            1 for i in range(n) if not aa_u[i] and union_only[i]
        )
    return out


@settings(max_examples=50, deadline=None)
@given(data=st.data(), n=st.integers(1, 30), with_union_only=st.booleans())
def test_compare_verdicts_matches_per_point_reference(data, n, with_union_only):
    bools = st.lists(st.booleans(), min_size=n, max_size=n)
    aa = {s: data.draw(bools) for s in SPECS}
    ours = {s: data.draw(bools) for s in SPECS}
    uo = data.draw(bools) if with_union_only else None
    got = B.compare_verdicts(
        {s: torch.tensor(v) for s, v in aa.items()},
        {s: torch.tensor(v) for s, v in ours.items()},
        None if uo is None else torch.tensor(uo),
    )
    assert got == _reference(aa, ours, uo)


def _cpu(per_threat: float, union_only: float | None) -> dict:
    return {"per_threat_ratio": per_threat, "union_only_ratio": union_only}


def _flags(accuracy, missed, per_threat_cpu, union_only_cpu) -> dict:
    return {
        "accuracy_le_aa": accuracy,
        "missed_le_0.5pct": missed,
        "cpu_per_threat_le_1x": per_threat_cpu,
        "cpu_union_only_le_0.5x": union_only_cpu,
    }


def test_targets_flag_each_failure():
    aa = {"linf:0.3": torch.tensor([True, True, False, False] * 50)}  # 100 of 200 robust
    weaker = {"linf:0.3": torch.tensor([True, False, False, False] * 50)}
    ok = B.targets(B.compare_verdicts(aa, weaker, None), _cpu(0.9, None))
    assert ok == _flags(True, True, True, None)
    # we miss point 2 (AutoAttack breaks it) but break point 0: same accuracy, 1 miss in 200
    # points = 0.5 %, allowed
    one = aa["linf:0.3"].clone()
    one[2], one[0] = True, False
    v1 = B.compare_verdicts(aa, {"linf:0.3": one}, None)
    assert (v1["linf:0.3"]["missed"], v1["linf:0.3"]["extra"]) == (1, 1)
    assert B.targets(v1, _cpu(0.9, 0.4)) == _flags(True, True, True, True)
    # two misses are too many; a higher accuracy than AutoAttack fails too
    two = one.clone()
    two[6] = True
    res = B.targets(B.compare_verdicts(aa, {"linf:0.3": two}, None), _cpu(1.1, 0.6))
    assert res == _flags(False, False, False, False)
    # the union-only verdict is judged too: robust where AutoAttack broke the union
    uo = aa["linf:0.3"].clone()
    uo[2] = uo[6] = True
    res = B.targets(B.compare_verdicts(aa, weaker, uo), _cpu(0.9, 0.4))
    assert res["accuracy_le_aa"] is False and res["missed_le_0.5pct"] is False


def test_tables_name_every_model_and_threat():
    t = torch.tensor
    v = B.compare_verdicts(
        {s: t([True, False]) for s in SPECS}, {s: t([True, True]) for s in SPECS}, t([False, False])
    )
    cpu = {
        "aa": {**{s: 1.0 for s in SPECS}, "total": 3.0},
        "aa_apgd": 1.5,
        "per_threat": 2.0,
        "per_threat_ratio": 2 / 3,
        "per_threat_ratio_apgd": 4 / 3,
        "union_only": 1.0,
        "union_only_ratio": 1 / 3,
    }
    results = {"lenet-max": {"n": 2, "clean": 1.0, "verdicts": v, "cpu": cpu, "targets": {}}}
    text = B.tables(results)
    for s in [*SPECS, "union", "lenet-max", "1.0 + 1.0 + 1.0 = 3.0", "0.67", "1.33", "0.33"]:
        assert s in text
    assert "1 (50.0 %)" in text  # AutoAttack breaks point 2, we miss it, on every row
