"""Verdicts on disk: an append-only JSONL log that lets a killed evaluation resume.

Layout of ``<out_dir>/verdicts.jsonl``:

- line 1, the header: ``{"type": "header", "format": 1, "config_hash": ..., "config": {...}}``
  (threats, suite entries, seed, batch size, example ids, data and model fingerprints);
- then one record per finished chunk, in the order the engine runs them:
  ``{"type": "clean", "chunk": k, "ids": [...], "correct": [...], "nonfinite": m}`` for the
  clean pass (``m`` rows with non-finite logits, counted as not correct) and
  ``{"type": "attack", "entry": e, "chunk": k, "ids": [...], "broken": [...], "norms": [...],
  "rejected": r, "seconds": s}`` for attack entry ``e``.

Every record is flushed and ``os.fsync``-ed before the engine moves on, so after a kill the log
holds every finished chunk and at most one truncated last line, which :func:`read_log` drops.
A resumed run must have the same config hash; otherwise it refuses rather than mixing results.
Final files (report.json, verdicts.csv) are written atomically with :func:`atomic_write_text`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
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

LOG_NAME = "verdicts.jsonl"
LOG_FORMAT = 1
#: keys every record of a type must hold (a clean record may also hold "nonfinite")
RECORD_KEYS = {
    "clean": ("chunk", "ids", "correct"),
    "attack": ("entry", "chunk", "ids", "broken", "norms", "rejected", "seconds"),
}
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


class VerdictLog:
    """The append-only log of one run in ``out_dir``.

    ``VerdictLog.open(out_dir, config, resume)`` returns the log and the finished records
    (empty unless resuming an existing log with the same configuration).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

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
        digest = config_hash(config)
        header = {"type": "header", "format": LOG_FORMAT, "config_hash": digest, "config": config}
        records: list[dict[str, Any]] = []
        if resume and path.exists():
            old_header, records, good_bytes = read_log(path)
            if old_header is None:
                records = []
            else:
                check_records(path, records)
                if old_header.get("config_hash") != digest:
                    raise UnionRobustError(
                        f"cannot resume: {path} was written by a different evaluation "
                        f"({_config_diff(old_header.get('config', {}), config)}); use another "
                        "output folder or run without resume"
                    )
                with writing(out, AFTER_WRITE_ERROR), open(path, "r+b") as f:
                    f.truncate(good_bytes)  # drop a truncated last line, if any
                return cls(path), records
        with writing(out):
            atomic_write_text(path, json.dumps(header, allow_nan=False) + "\n")
        return cls(path), records

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (flush + fsync)."""
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
        entry: int,
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
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    parsed: list[dict[str, Any]] = []
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
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec, complete = None, False
        if not complete:
            if last or all(not rest.strip() for rest in lines[i + 1 :]):
                break
            raise UnionRobustError(f"{path}: line {i + 1} is corrupt; cannot resume")
        parsed.append(rec)
        good += len(line) + 1
    if not parsed:
        return None, [], 0
    header = parsed[0]
    if header.get("type") != "header" or header.get("format") != LOG_FORMAT:
        raise UnionRobustError(f"{path} is not a unionrobust verdict log (format {LOG_FORMAT})")
    return header, parsed[1:], good


def check_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Raise one line if a record has an unknown type or lacks a key (a damaged log)."""
    for i, rec in enumerate(records):
        where = f"cannot resume: {path} line {i + 2}"
        keys = RECORD_KEYS.get(rec.get("type")) if isinstance(rec, dict) else None
        if keys is None:
            raise UnionRobustError(
                f"{where} is not a clean or attack record; start again with --overwrite "
                "(overwrite=True) or use another output folder"
            )
        missing = [k for k in keys if k not in rec]
        if missing:
            raise UnionRobustError(
                f"{where} (a {rec['type']} record) is missing {', '.join(map(repr, missing))}; "
                "the log is damaged: start again with --overwrite (overwrite=True)"
            )


def _config_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in: " + ", ".join(keys) if keys else "different format"


def records_by_key(records: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Index records by (type, entry, chunk); entry is -1 for the clean pass."""
    out = {}
    for r in records:
        out[(r["type"], int(r.get("entry", -1)), int(r["chunk"]))] = r
    return out


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
