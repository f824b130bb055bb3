"""The verdict log's integrity (issue 18, fault matrix): every record carries an HMAC-SHA256 of
its canonical JSON keyed by the run's config hash and is validated against the record schema
and the threat's radius before ``resume`` replays it; a tampered or malformed record is a
one-line error naming the file and the line, never a traceback or a different result."""

from __future__ import annotations

import json

import pytest
from test_eval_support import THREATS, dummy_suite, linear_problem

from unionrobust.errors import UnionRobustError
from unionrobust.evaluation import evaluate
from unionrobust.evaluation.verdicts import DIGEST_KEY, LOG_NAME, record_digest


def run(out, **kw):
    model, x, y = linear_problem()
    return evaluate(model, x, y, threats=THREATS, suite=dummy_suite(THREATS), batch_size=10,
                    out_dir=out, progress=False, diagnostics=False, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A finished run's log lines (header first) and the report."""
    out = tmp_path_factory.mktemp("log")
    rep = run(out)
    return (out / LOG_NAME).read_text().splitlines(), rep


def _first(lines, kind: str, broken: bool | None = None) -> int:
    """Index of the first record of ``kind`` (with a broken point, if ``broken``)."""
    for i, line in enumerate(lines[1:], start=1):
        rec = json.loads(line)
        if rec["type"] == kind and (broken is None or any(rec.get("broken", [])) == broken):
            return i
    raise AssertionError(kind)


def _resume_error(tmp_path, lines) -> str:
    (tmp_path / LOG_NAME).write_text("\n".join(lines) + "\n")
    with pytest.raises(UnionRobustError) as info:
        run(tmp_path, resume=True)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / LOG_NAME) in msg
    return msg


def test_records_carry_a_digest_keyed_by_the_run(logged):
    lines, _ = logged
    header = json.loads(lines[0])
    for line in lines[1:]:
        rec = json.loads(line)
        assert rec[DIGEST_KEY] == record_digest(header["config_hash"], rec)
        assert record_digest("another run", rec) != rec[DIGEST_KEY]


def test_an_untouched_log_resumes(logged, tmp_path):
    lines, rep = logged
    (tmp_path / LOG_NAME).write_text("\n".join(lines) + "\n")
    again = run(tmp_path, resume=True)
    assert (again.broken == rep.broken).all()


def _flip_a_zero(rec):
    rec["broken"][rec["broken"].index(0)] = 1


def _huge_norm(rec):
    rec["norms"][0] = 1e9


def _flip_clean(rec):
    rec["correct"][0] = 1 - rec["correct"][0]


@pytest.mark.parametrize(
    ("kind", "edit"),
    [("attack", _flip_a_zero), ("attack", _huge_norm), ("clean", _flip_clean)],
)
def test_an_edited_record_fails_its_integrity_check(logged, tmp_path, kind, edit):
    """Valid JSON, plausible values: only the digest tells (issue 18: accepted before)."""
    lines, _ = logged
    lines = list(lines)
    i = _first(lines, kind, broken=None)
    rec = json.loads(lines[i])
    if kind == "attack" and 0 not in rec["broken"]:
        pytest.skip("no unbroken point in the first attack record")
    edit(rec)
    lines[i] = json.dumps(rec)
    msg = _resume_error(tmp_path, lines)
    assert f"line {i + 1}" in msg and "integrity" in msg and "--overwrite" in msg


def _short(rec):
    rec["broken"] = rec["broken"][:-1]


def _text(rec):
    rec["broken"] = "xyz"


def _null_rejected(rec):
    rec["rejected"] = None


def _string_chunk(rec):
    rec["chunk"] = "a"


def _bad_ids(rec):
    rec["ids"] = {"0": 1}


def _nan_seconds(rec):
    rec["seconds"] = "NaN"


def _other_entry(rec):
    rec["entry"] = "pgd@linf:9"


def _norm_outside(rec):
    i = rec["broken"].index(1)
    rec["norms"][i] = 1e9  # a broken point outside the threat's ball


def _negative_nonfinite(rec):
    rec["nonfinite"] = -1


def _correct_two(rec):
    rec["correct"][0] = 2


@pytest.mark.parametrize(
    ("kind", "edit", "needle"),
    [
        ("attack", _short, "broken"),
        ("attack", _text, "broken"),
        ("attack", _null_rejected, "rejected"),
        ("attack", _string_chunk, "chunk"),
        ("attack", _bad_ids, "ids"),
        ("attack", _nan_seconds, "seconds"),
        ("attack", _other_entry, "entry"),
        ("attack", _norm_outside, "radius"),
        ("clean", _negative_nonfinite, "nonfinite"),
        ("clean", _correct_two, "correct"),
    ],
)
def test_a_malformed_record_is_one_line_even_with_a_valid_digest(
    logged, tmp_path, kind, edit, needle
):
    """Records re-signed after the edit (a forger, or a bug): the schema and the radius check
    catch them, naming the line and the field."""
    lines, _ = logged
    lines = list(lines)
    key = json.loads(lines[0])["config_hash"]
    i = _first(lines, kind, broken=True if edit is _norm_outside else None)
    rec = json.loads(lines[i])
    edit(rec)
    rec[DIGEST_KEY] = record_digest(key, rec)
    lines[i] = json.dumps(rec)
    msg = _resume_error(tmp_path, lines)
    assert f"line {i + 1}" in msg and needle in msg


@pytest.mark.parametrize(
    "line", ['[1, 2]', '"text"', "5", '{"type": "attack"}', '{"type": "other"}']
)
def test_a_record_of_the_wrong_shape_is_one_line(logged, tmp_path, line):
    lines = list(logged[0])
    lines.insert(2, line)
    msg = _resume_error(tmp_path, lines)
    assert "line 3" in msg


@pytest.mark.parametrize(
    "header", ['[1]', '{"type": "header", "format": 2}', '{"type": "header", "format": 2, '
               '"config_hash": "0", "config": {}}'],
)
def test_a_damaged_header_is_one_line(logged, tmp_path, header):
    lines = list(logged[0])
    lines[0] = header
    msg = _resume_error(tmp_path, lines)
    assert "line 1" in msg or "not a unionrobust verdict log" in msg


def test_a_log_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / LOG_NAME).mkdir()
    for kw in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(UnionRobustError, match="not a file") as info:
            run(tmp_path, **kw)
        assert "\n" not in str(info.value)
