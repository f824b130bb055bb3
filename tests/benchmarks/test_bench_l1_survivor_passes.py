"""The pure parts of benchmarks/bench_l1_survivor_passes.py: the suite keys it compares exist
(and are ℓ1 APGD passes of ``standard``), the references are read from the cache, bad input
is a one-line error."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_l1_survivor_passes as L

from unionrobust.evaluation.suites import get_suite


def test_the_compared_entries_are_standards_l1_apgd_passes():
    suite = get_suite("standard", L.THREATS)
    by_key = dict(zip(suite.keys(), suite.entries, strict=True))
    for key in (*L.ROUND_ONE, *L.PASSES):
        entry = by_key[key]
        assert suite.threats[entry.threat_index].name == "l1"
        assert entry.attack.startswith("apgd")
    # each compared pass draws its own starts
    assert len({by_key[k].seed_offset for k in L.PASSES}) == len(L.PASSES)


def test_reference_broken_unites_the_newest_autoattack_and_pointwise_runs(tmp_path):
    def write(name: str, broken: dict, mtime: int) -> None:
        f = tmp_path / name
        f.write_text(json.dumps({"result": {"broken": broken}}))
        os.utime(f, (mtime, mtime))

    write("lenet-max-aaa-autoattack.json", {"l1:10": [1, 2]}, 100)
    write("lenet-max-bbb-autoattack.json", {"l1:10": [3]}, 200)  # newer: this one counts
    write("lenet-max-ccc-pointwise.json", {"l1:10": [3, 7]}, 100)
    write("lenet-msd-ddd-pointwise.json", {"l1:10": [9]}, 100)  # another model
    assert L.reference_broken(tmp_path, "lenet-max", "l1:10") == {3, 7}
    assert L.reference_broken(tmp_path, "lenet-max", "l2:2") == set()
    with pytest.raises(SystemExit, match="no cached pointwise run of lenet-pinf"):
        write("lenet-pinf-eee-autoattack.json", {}, 100)
        L.reference_broken(tmp_path, "lenet-pinf", "l1:10")


def test_unknown_model_is_a_one_line_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        L.main(["--ref-cache", str(tmp_path), "--models", "lenet-nope"])
    err = capsys.readouterr().err
    assert "unknown model 'lenet-nope'; valid:" in err and "lenet-max" in err
