"""Crash-safe checkpoints: safetensors weights + a ``weights_only`` torch file, via a pointer.

A checkpoint ``TAG`` (``last`` or ``best``) in a folder is three files::

    TAG-<step>.safetensors   model weights
    TAG-<step>.state.pt      optimiser, schedule, RNG, strategy and progress state: tensors and
                             plain Python only, read back with ``torch.load(weights_only=True)``
    TAG.json                 the pointer: file names, their SHA-256, epoch and step

A save writes both data files to temporary names, re-reads and verifies them, renames them to
fresh names and only then replaces ``TAG.json`` (temp file + ``os.replace``). A crash or a failing
write at any point therefore leaves the previous pointer and the files it names untouched; files
no pointer names are removed after the commit. Loading checks the hashes, so a truncated or
corrupt file is a one-line error, never a silent partial load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from unionrobust.atomic import atomic_write_text, fsync_dir
from unionrobust.errors import UnionRobustError

FORMAT = 1


class CheckpointError(UnionRobustError):
    """A checkpoint is missing, corrupt or does not fit the run."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes of a state dict (tensors copied to contiguous CPU memory)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return safetensors.torch.save(tensors)


def state_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _read_state(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """All global RNG states (torch CPU, CUDA, python, numpy) as tensors/plain Python."""
    algo, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [
            str(algo),
            torch.from_numpy(np.asarray(keys).copy()),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    algo, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((algo, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


# ---------------------------------------------------------------- save / load


def _pointer(directory: Path, tag: str) -> Path:
    return directory / f"{tag}.json"


def has_checkpoint(directory: str | os.PathLike, tag: str = "last") -> bool:
    return _pointer(Path(directory), tag).is_file()


def save_checkpoint(
    directory: str | os.PathLike,
    tag: str,
    weights: Mapping[str, torch.Tensor],
    state: dict[str, Any],
    *,
    epoch: int,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``tag`` atomically (see module docstring); return the pointer path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wdata = weights_bytes(weights)
    sdata = state_bytes(state)
    stem = f"{tag}-{step:09d}"
    names = {"weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
    written: list[Path] = []
    try:
        for kind, data in (("weights", wdata), ("state", sdata)):
            target = directory / names[kind]
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
            written.append(Path(tmp))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        # verify by re-reading before anything is committed
        wback, sback = written[0].read_bytes(), written[1].read_bytes()
        if _sha256(wback) != _sha256(wdata) or _sha256(sback) != _sha256(sdata):
            raise CheckpointError(f"checkpoint {tag} in {directory}: read-back differs from write")
        safetensors.torch.load(wback)
        _read_state(sback)
        for tmp, kind in zip(written, ("weights", "state"), strict=True):
            os.replace(tmp, directory / names[kind])
        written = []
        fsync_dir(directory)
        pointer = {
            "format": FORMAT,
            "tag": tag,
            "epoch": int(epoch),
            "step": int(step),
            **names,
            "sha256": {"weights": _sha256(wdata), "state": _sha256(sdata)},
            **(extra or {}),
        }
        atomic_write_text(_pointer(directory, tag), json.dumps(pointer, indent=1))
    except BaseException:
        for tmp in written:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    _collect_garbage(directory, tag, names)
    return _pointer(directory, tag)


def _collect_garbage(directory: Path, tag: str, keep: dict[str, str]) -> None:
    for path in directory.glob(f"{tag}-*"):
        if path.name not in keep.values():
            with contextlib.suppress(OSError):
                path.unlink()
    for path in directory.glob(f".{tag}-*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()


def read_pointer(directory: str | os.PathLike, tag: str = "last") -> dict[str, Any]:
    path = _pointer(Path(directory), tag)
    if not path.is_file():
        raise CheckpointError(f"no {tag!r} checkpoint in {str(directory)!r} (missing {path.name})")
    try:
        pointer = json.loads(path.read_text("utf-8"))
        if pointer.get("format") != FORMAT:
            raise ValueError(f"unsupported format {pointer.get('format')!r}")
        for key in ("weights", "state", "sha256", "epoch", "step"):
            if key not in pointer:
                raise ValueError(f"missing field {key!r}")
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint pointer {str(path)!r} is corrupt: {exc}") from None
    return pointer


def load_checkpoint(
    directory: str | os.PathLike, tag: str = "last"
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return ``(weights, state, pointer)`` of checkpoint ``tag``; hashes are verified."""
    directory = Path(directory)
    pointer = read_pointer(directory, tag)
    out = []
    for kind in ("weights", "state"):
        path = directory / pointer[kind]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(
                f"checkpoint {tag!r} in {str(directory)!r}: cannot read {path.name} "
                f"({exc.strerror or exc})"
            ) from None
        if _sha256(data) != pointer["sha256"][kind]:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is corrupt (SHA-256 mismatch, "
                f"{len(data)} bytes); delete the folder or resume from another checkpoint"
            )
        try:
            out.append(safetensors.torch.load(data) if kind == "weights" else _read_state(data))
        except Exception as exc:  # any decoder failure means a corrupt file
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt: {first}") from None
    return out[0], out[1], pointer
