"""Verdicts on disk: an append-only JSONL log that lets a killed evaluation resume.

Layout of ``<out_dir>/verdicts.jsonl``:

- line 1, the header: ``{"type": "header", "format": 2, "config_hash": ..., "config": {...}}``
  (threats, suite entries, seed, batch size, example ids, data and model fingerprints);
- then one record per finished chunk, in the order the engine runs them:
  ``{"type": "clean", "chunk": k, "ids": [...], "correct": [...], "nonfinite": m}`` for the
  clean pass (``m`` rows with non-finite logits, counted as not correct) and
  ``{"type": "attack", "entry": key, "chunk": k, "ids": [...], "broken": [...], "norms": [...],
  "rejected": r, "seconds": s}`` for the suite entry named ``key``
  (:meth:`unionrobust.evaluation.suites.SuiteEntry.key`, e.g. ``"apgd-t@l2:2#2"``).

Every record also holds ``"sha256"``: an HMAC-SHA256 of its canonical JSON (sorted keys, no
spaces, without that field) keyed by the run's config hash (:func:`record_digest`). Every record
is flushed and ``os.fsync``-ed before the engine moves on, so after a kill the log holds every
finished chunk and at most one truncated last line, which :func:`read_log` drops. A resumed run
must have the same config hash; otherwise it refuses rather than mixing results. Before it
replays anything it checks every record (:func:`check_records`): its digest, its schema (types,
lengths, 0/1 verdicts, counts in range, the entry's key one of this suite's) and that every
broken point's norm lies inside its threat's radius. A record that fails is a one-line error
naming the file and the line (start again with ``--overwrite``): an edited or damaged log is
never replayed, nor silently recomputed.
Final files (report.json, verdicts.csv) are written atomically with :func:`atomic_write_text`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import inspect
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.atomic import append_line, atomic_write_text
from unionrobust.errors import UnionRobustError
from unionrobust.outdir import clear_run, locked_folder, refuse_existing, writing
from unionrobust.threats import DEFAULT_TOL, AdditiveThreat, parse

LOG_NAME = "verdicts.jsonl"
LOG_FORMAT = 2  # 2: attack records name their entry by its key
#: keys every record of a type must hold (a clean record may also hold "nonfinite")
RECORD_KEYS = {
    "clean": ("chunk", "ids", "correct"),
    "attack": ("entry", "chunk", "ids", "broken", "norms", "rejected", "seconds"),
}
#: the field of a record holding its digest (:func:`record_digest`)
DIGEST_KEY = "sha256"
#: what to do with a damaged log
START_AGAIN = "start again with --overwrite (overwrite=True) or use another output folder"
#: an evaluation's files in its folder (report.md/.html and pictures are written by
#: :mod:`unionrobust.reporting`); the log last, see :func:`~unionrobust.outdir.clear_run`
RUN_FILES = ("report.json", "verdicts.csv", "report.md", "report.html", "filters.png",
             "curves.png", "mrb.png", LOG_NAME)  # fmt: skip
#: how to go on after a failed write: the log keeps every finished chunk
AFTER_WRITE_ERROR = "free space, then continue with --resume (resume=True); finished work is kept"


def check_out_dir(out_dir: str | os.PathLike | None, resume: bool, overwrite: bool) -> None:
    """Refuse to replace an earlier run in ``out_dir`` unless ``resume`` or ``overwrite``."""
    if resume and overwrite:
        raise UnionRobustError(
            "give resume=True (--resume) or overwrite=True (--overwrite), not both"
        )
    if not resume and not overwrite:
        refuse_existing(
            out_dir,
            (LOG_NAME, "report.json"),
            "continue it with --resume (resume=True), replace it with --overwrite "
            "(overwrite=True), or choose another output folder",
        )


def owning_out_dir(run: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``run`` holding its ``out_dir``'s lock, after refusing a folder that already holds
    a run unless ``resume`` or ``overwrite`` is given (both checked before any work); with
    ``overwrite`` the earlier run's files are removed before the new run writes anything."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out_dir, resume = bound.arguments["out_dir"], bound.arguments["resume"]
        with locked_folder(out_dir):
            check_out_dir(out_dir, resume, bound.arguments["overwrite"])
            if bound.arguments["overwrite"]:
                clear_run(out_dir, RUN_FILES)
            return run(*args, **kwargs)

    return wrapper


def tensor_hash(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over the shapes, dtypes and bytes of ``tensors`` (on CPU)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's state dict (parameter and buffer names and values)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_hash([t]).encode())
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _norm_json(v: float) -> float | None:
    return None if math.isnan(v) else v


def record_digest(run_hash: str, record: dict[str, Any]) -> str:
    """HMAC-SHA256 of ``record``'s canonical JSON (without its digest field), keyed by the
    run's config hash: a record edited after it was written, or copied from another run's log,
    no longer matches."""
    body = {k: v for k, v in record.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hmac.new(run_hash.encode(), text.encode(), hashlib.sha256).hexdigest()


class VerdictLog:
    """The append-only log of one run in ``out_dir``.

    ``VerdictLog.open(out_dir, config, resume)`` returns the log and the finished records
    (empty unless resuming an existing log with the same configuration).
    """

    def __init__(self, path: Path, run_hash: str) -> None:
        self.path = path
        self.run_hash = run_hash

    @classmethod
    def open(
        cls, out_dir: str | os.PathLike, config: dict[str, Any], resume: bool
    ) -> tuple[VerdictLog, list[dict[str, Any]]]:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UnionRobustError(f"cannot create output folder {str(out)!r}: {err}") from None
        path = out / LOG_NAME
        if path.exists() and not path.is_file():
            raise UnionRobustError(f"{path} is not a file (a folder?); remove it or {START_AGAIN}")
        digest = config_hash(config)
        header = {"type": "header", "format": LOG_FORMAT, "config_hash": digest, "config": config}
        if resume and path.exists():
            old_header, numbered, good_bytes = _read_numbered(path)
            if old_header is not None:
                if old_header["config_hash"] != digest:
                    raise UnionRobustError(
                        f"cannot resume: {path} was written by a different evaluation "
                        f"({_config_diff(old_header['config'], config)}); use another "
                        "output folder or run without resume"
                    )
                check_records(path, numbered, digest, _radii(config))
                with writing(out, AFTER_WRITE_ERROR), open(path, "r+b") as f:
                    f.truncate(good_bytes)  # drop a truncated last line, if any
                return cls(path, digest), [rec for _, rec in numbered]
        with writing(out):
            atomic_write_text(path, json.dumps(header, allow_nan=False) + "\n")
        return cls(path, digest), []

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (flush + fsync), with its digest."""
        record = {**record, DIGEST_KEY: record_digest(self.run_hash, record)}
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        with writing(self.path.parent, AFTER_WRITE_ERROR):
            append_line(self.path, line)

    def write_clean(
        self, chunk: int, ids: torch.Tensor, correct: torch.Tensor, nonfinite: int = 0
    ) -> None:
        self.append(
            {
                "type": "clean",
                "chunk": chunk,
                "ids": ids.tolist(),
                "correct": [int(c) for c in correct.tolist()],
                "nonfinite": int(nonfinite),
            }
        )

    def write_attack(
        self,
        entry: str,
        chunk: int,
        ids: torch.Tensor,
        broken: torch.Tensor,
        norms: torch.Tensor,
        rejected: int,
        seconds: float,
    ) -> None:
        self.append(
            {
                "type": "attack",
                "entry": entry,
                "chunk": chunk,
                "ids": ids.tolist(),
                "broken": [int(b) for b in broken.tolist()],
                "norms": [_norm_json(float(v)) for v in norms.tolist()],
                "rejected": int(rejected),
                "seconds": float(seconds),
            }
        )

    def close(self) -> None:
        """Nothing to release: every append opens, syncs and closes the file."""


def read_log(path: str | os.PathLike) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """(header, records, bytes of complete lines). A truncated or garbled LAST line is ignored
    (a kill mid-write); a bad line anywhere else is an error."""
    header, numbered, good = _read_numbered(Path(path))
    return header, [rec for _, rec in numbered], good


def _read_numbered(path: Path) -> tuple[dict[str, Any] | None, list[tuple[int, Any]], int]:
    """:func:`read_log` with each record's line number; the header is checked."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UnionRobustError(f"cannot read {path}: {err.strerror or err}") from None
    lines = data.split(b"\n")
    parsed: list[tuple[int, Any]] = []
    good = 0
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if not line.strip():
            if not last:
                good += len(line) + 1
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            complete = not last  # a final line without its newline was cut mid-write
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            rec, complete = None, False
        if not complete:
            if last or all(not rest.strip() for rest in lines[i + 1 :]):
                break
            raise UnionRobustError(f"{path}: line {i + 1} is corrupt; cannot resume")
        parsed.append((i + 1, rec))
        good += len(line) + 1
    if not parsed:
        return None, [], 0
    (line_no, header), records = parsed[0], parsed[1:]
    if not isinstance(header, dict) or header.get("type") != "header":
        raise UnionRobustError(f"{path} is not a unionrobust verdict log")
    if header.get("format") != LOG_FORMAT:
        raise UnionRobustError(
            f"cannot resume: {path} has verdict-log format {str(header.get('format'))[:20]!r}, "
            f"this version writes format {LOG_FORMAT}; {START_AGAIN}"
        )
    config = header.get("config")
    if not isinstance(config, dict) or header.get("config_hash") != config_hash(config):
        raise UnionRobustError(
            f"cannot resume: {path} line {line_no} (the header) is damaged: its configuration "
            f"does not match its hash; {START_AGAIN}"
        )
    return header, records, good


def _radii(config: dict[str, Any]) -> dict[str, float | None]:
    """Per entry key of ``config``, the largest norm a broken point may have (the threat's
    radius with the re-check's tolerance; None for sets that are not norm balls)."""
    out: dict[str, float | None] = {}
    for d in config.get("entries", []):
        threat = parse(d["threat"])[0]
        bound = isinstance(threat, AdditiveThreat)
        out[d["key"]] = threat.size * (1 + DEFAULT_TOL) + 1e-6 if bound else None
    return out


def check_records(
    path: Path,
    records: list[tuple[int, Any]],
    run_hash: str,
    radii: dict[str, float | None],
) -> None:
    """Raise one line naming ``path`` and the line if a record (``(line, record)`` pairs) has
    an unknown type, lacks a key, fails its digest (:func:`record_digest`), breaks the schema,
    or logs a broken point outside its threat's radius (``radii``: per entry key)."""
    for line, rec in records:
        where = f"cannot resume: {path} line {line}"
        kind = rec.get("type") if isinstance(rec, dict) else None
        keys = RECORD_KEYS.get(kind) if isinstance(kind, str) else None
        if keys is None:
            raise UnionRobustError(f"{where} is not a clean or attack record; {START_AGAIN}")
        missing = [k for k in (*keys, DIGEST_KEY) if k not in rec]
        if missing:
            raise UnionRobustError(
                f"{where} (a {rec['type']} record) is missing {', '.join(map(repr, missing))}; "
                f"the log is damaged: {START_AGAIN}"
            )
        if not hmac.compare_digest(str(rec[DIGEST_KEY]), record_digest(run_hash, rec)):
            raise UnionRobustError(
                f"{where} fails its integrity check (it was edited or damaged after it was "
                f"written); {START_AGAIN}"
            )
        problem = _schema_problem(rec, radii)
        if problem:
            raise UnionRobustError(f"{where} (a {rec['type']} record): {problem}; {START_AGAIN}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _flags_problem(rec: dict[str, Any], name: str, n: int) -> str | None:
    v = rec[name]
    if not isinstance(v, list) or len(v) != n or any(b not in (0, 1) or b is True for b in v):
        return f"{name!r} must be a list of {n} values 0 or 1, one per id"
    return None


def _schema_problem(rec: dict[str, Any], radii: dict[str, float | None]) -> str | None:
    """What is wrong with a record's values ("" / None when nothing)."""
    if not _is_int(rec["chunk"]) or rec["chunk"] < 0:
        return "'chunk' must be an integer >= 0"
    ids = rec["ids"]
    if not isinstance(ids, list) or not ids or not all(_is_int(i) for i in ids):
        return "'ids' must be a non-empty list of integers"
    n = len(ids)
    if rec["type"] == "clean":
        bad = rec.get("nonfinite", 0)
        if not _is_int(bad) or not 0 <= bad <= n:
            return f"'nonfinite' must be an integer in [0, {n}]"
        return _flags_problem(rec, "correct", n)
    if rec["entry"] not in radii:
        return f"'entry' {str(rec['entry'])[:40]!r} is not an entry of this run's suite"
    problem = _flags_problem(rec, "broken", n)
    if problem:
        return problem
    norms = rec["norms"]
    if not isinstance(norms, list) or len(norms) != n:
        return f"'norms' must be a list of {n} numbers or nulls, one per id"
    if not all(v is None or (_is_number(v) and v >= 0) for v in norms):
        return "'norms' must hold finite numbers >= 0 or nulls"
    if not _is_int(rec["rejected"]) or not 0 <= rec["rejected"] <= n:
        return f"'rejected' must be an integer in [0, {n}]"
    if not _is_number(rec["seconds"]) or rec["seconds"] < 0:
        return "'seconds' must be a finite number >= 0"
    radius = radii[rec["entry"]]
    for b, v in zip(rec["broken"], norms, strict=True):
        if b and (v is None or (radius is not None and v > radius)):
            return f"a broken point's norm {v} is outside the threat's radius {radius}"
    return None


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in: " + ", ".join(keys) if keys else "different format"


def records_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, str | None, int], dict]:
    """Index records by (type, entry key, chunk); the key is None for the clean pass."""
    return {(r["type"], r.get("entry"), int(r["chunk"])): r for r in records}


def norms_from_json(values: list[float | None]) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN becomes null)."""
    return atomic_write_text(path, json.dumps(_nan_to_none(obj), indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Atomically write a list of dict rows (same keys) as CSV with a header line."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def write_outputs(report: Any, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """report.json (``report.to_dict()``) and verdicts.csv (``report.verdict_rows()``)."""
    out = Path(out_dir)
    with writing(out, AFTER_WRITE_ERROR):
        return (
            write_json(out / "report.json", report.to_dict()),
            write_csv(out / "verdicts.csv", report.verdict_rows()),
        )


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
