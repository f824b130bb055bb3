"""Verdicts on disk: the JSONL log, resume after a kill, config checks, report files."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from test_eval_support import (
    THREATS,
    CallCounter,
    dummy_suite,
    linear_problem,
)

from unionrobust.atomic import atomic_write_text
from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.verdicts import LOG_NAME, read_log

BATCH = 10


def run(problem, out, counter=None, **kw):
    model, x, y = problem
    kw.setdefault("threats", THREATS)
    return evaluate(
        model,
        x,
        y,
        suite=dummy_suite(kw["threats"], counter),
        batch_size=BATCH,
        out_dir=out,
        progress=False,
        **kw,
    )


def without_timings(report_json: dict) -> dict:
    d = dict(report_json)
    d.pop("timings")
    d["per_attack"] = [{k: v for k, v in r.items() if k != "seconds"} for r in d["per_attack"]]
    return d


def same_verdicts(a, b) -> None:
    assert torch.equal(a.clean_correct, b.clean_correct)
    assert torch.equal(a.broken, b.broken)
    assert torch.equal(a.norms.isnan(), b.norms.isnan())
    assert torch.equal(a.norms.nan_to_num(), b.norms.nan_to_num())
    assert a.rejected == b.rejected and a.attacked == b.attacked


@pytest.fixture(scope="module")
def problem():
    return linear_problem()


@pytest.fixture(scope="module")
def reference(problem, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return run(problem, out), out


def test_outputs_on_disk(reference, problem):
    rep, out = reference
    data = json.loads((out / "report.json").read_text())
    for key in (
        "clean_accuracy",
        "union_accuracy",
        "average_accuracy",
        "per_threat",
        "per_attack",
        "n_examples",
        "suite",
        "threats",
        "seed",
        "version",
        "timings",
        "union_accuracy_ci95",
        "average_accuracy_ci95",
    ):
        assert key in data, key
    assert data["union_accuracy"] == pytest.approx(rep.union_accuracy)
    assert set(data["per_threat"]) == set(THREATS.replace(" ", "").split(","))
    assert data["n_examples"] == problem[1].shape[0]
    assert len(data["per_attack"]) == 6
    rows = list(csv.DictReader((out / "verdicts.csv").open()))
    assert len(rows) == rep.n_examples
    assert [int(r["robust[union]"]) for r in rows] == rep.union_robust.int().tolist()
    assert [int(r["label"]) for r in rows] == problem[2].tolist()
    assert "broken[onestep@linf:0.05]" in rows[0] and "norm[noise@l1:1]" in rows[0]
    header, records, _ = read_log(out / LOG_NAME)
    assert header["config"]["threats"] == THREATS
    assert {r["type"] for r in records} == {"clean", "attack"}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_after_a_crash_equals_uninterrupted(reference, problem, tmp_path):
    ref, ref_out = reference
    crash = CallCounter(crash_after=4)
    with pytest.raises(KeyboardInterrupt):
        run(problem, tmp_path, crash)
    assert not (tmp_path / "report.json").exists()
    _, records, _ = read_log(tmp_path / LOG_NAME)
    assert sum(r["type"] == "attack" for r in records) == 4
    counter = CallCounter()
    resumed = run(problem, tmp_path, counter, resume=True)
    same_verdicts(resumed, ref)
    assert counter.calls == sum((a + BATCH - 1) // BATCH for a in ref.attacked) - 4
    assert without_timings(json.loads((tmp_path / "report.json").read_text())) == without_timings(
        json.loads((ref_out / "report.json").read_text())
    )
    assert (tmp_path / "verdicts.csv").read_text() == (ref_out / "verdicts.csv").read_text()


def test_resume_ignores_a_truncated_last_line(reference, problem, tmp_path):
    ref, ref_out = reference
    text = (ref_out / LOG_NAME).read_bytes()
    lines = text.split(b"\n")
    keep = len(lines) // 2
    cut = b"\n".join(lines[:keep]) + b"\n" + lines[keep][: len(lines[keep]) // 2]
    (tmp_path / LOG_NAME).write_bytes(cut)
    counter = CallCounter()
    resumed = run(problem, tmp_path, counter, resume=True)
    same_verdicts(resumed, ref)
    assert counter.calls > 0  # the cut chunk and the ones after it were recomputed
    # the log is whole again: same records as the reference, in the same order
    _, rec_ref, _ = read_log(ref_out / LOG_NAME)
    _, rec_new, _ = read_log(tmp_path / LOG_NAME)
    timed = ("seconds", "sha256")  # the digest covers the timing too
    strip = [{k: v for k, v in r.items() if k not in timed} for r in rec_ref]
    assert [{k: v for k, v in r.items() if k not in timed} for r in rec_new] == strip


def test_resume_of_a_finished_run_recomputes_nothing(reference, problem, tmp_path):
    ref, ref_out = reference
    (tmp_path / LOG_NAME).write_bytes((ref_out / LOG_NAME).read_bytes())
    counter = CallCounter()
    same_verdicts(run(problem, tmp_path, counter, resume=True), ref)
    assert counter.calls == 0


def test_resume_refuses_another_configuration(reference, problem, tmp_path):
    _, ref_out = reference
    (tmp_path / LOG_NAME).write_bytes((ref_out / LOG_NAME).read_bytes())
    with pytest.raises(UnionRobustError, match=r"different evaluation.*seed") as info:
        run(problem, tmp_path, resume=True, seed=1)
    assert "\n" not in str(info.value)
    with pytest.raises(UnionRobustError, match="threats"):
        run(problem, tmp_path, resume=True, threats="linf:0.05, l2:0.2")
    model, x, y = problem
    with pytest.raises(UnionRobustError, match="data_hash"):
        run((model, x.flip(0), y.flip(0)), tmp_path, resume=True)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 4))
    with pytest.raises(UnionRobustError, match="model_hash"):
        run((other, x, y), tmp_path, resume=True)
    # the log was not touched by the refused attempts
    assert (tmp_path / LOG_NAME).read_bytes() == (ref_out / LOG_NAME).read_bytes()


def test_a_corrupt_line_inside_the_log_is_an_error(reference, problem, tmp_path):
    _, ref_out = reference
    lines = (ref_out / LOG_NAME).read_bytes().split(b"\n")
    lines[2] = lines[2][:10]
    (tmp_path / LOG_NAME).write_bytes(b"\n".join(lines))
    with pytest.raises(UnionRobustError, match="line 3 is corrupt"):
        run(problem, tmp_path, resume=True)


def test_with_overwrite_a_fresh_log_replaces_the_old_one(reference, problem, tmp_path):
    ref, ref_out = reference
    (tmp_path / LOG_NAME).write_bytes((ref_out / LOG_NAME).read_bytes())
    with pytest.raises(UnionRobustError, match="--overwrite"):  # issue 11: never silently
        run(problem, tmp_path)
    counter = CallCounter()
    same_verdicts(run(problem, tmp_path, counter, overwrite=True), ref)
    assert counter.calls == sum((a + BATCH - 1) // BATCH for a in ref.attacked)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    with pytest.raises(TypeError):
        atomic_write_text(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
