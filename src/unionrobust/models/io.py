"""Safe weight files: save as safetensors, load safetensors or torch files without pickle code.

Torch files are read with ``torch.load(weights_only=True)``, which refuses any pickled object
other than tensors and plain containers, so a malicious checkpoint cannot run code. Common
checkpoint wrappers (``{"state_dict": ...}``, ``{"model": ...}``, DataParallel's ``module.``
prefix, RobustBench files) are unwrapped. Every failure is one line naming the file.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from unionrobust.atomic import atomic_path
from unionrobust.errors import UnionRobustError

#: keys under which checkpoints commonly nest the state dict, tried in this order
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "last")
#: prefixes added by wrappers (DataParallel/DDP, torch.compile, our NormalizedModel)
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass(frozen=True)
class LoadResult:
    """Keys that were not matched (only non-empty when ``strict=False``)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def _brief(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def save_weights(
    model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike
) -> Path:
    """Write a model's state dict (or a state dict) to ``path`` as safetensors, atomically.

    The file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so a crash never leaves a half-written file under ``path``.
    """
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, Mapping):
        state = model_or_state
    else:
        raise UnionRobustError(
            f"save_weights needs a model or a state dict, got {type(model_or_state).__name__}"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise UnionRobustError(
                f"cannot save {key!r}: weights files hold only tensors, not {type(value).__name__}"
            )
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        tensors[str(key)] = value.detach().to("cpu").contiguous().clone()
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "writer": "unionrobust"})
    return Path(path)


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def weights_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it names an existing file; a one-line error otherwise."""
    p = Path(path)
    if not p.exists():
        raise UnionRobustError(f"weights file {str(p)!r} not found")
    if p.is_dir():
        raise UnionRobustError(
            f"weights path {str(p)!r} is a directory, not a file; give the weights file in it "
            "(.safetensors, or a torch state dict .pt/.pth)"
        )
    if not p.is_file():
        raise UnionRobustError(f"weights path {str(p)!r} is not a file")
    return p


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read and unwrap the tensors of a weights file (safetensors or torch, no pickle code)."""
    p = weights_path(path)
    if p.suffix == ".safetensors" or _looks_like_safetensors(p):
        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # SafetensorError, OSError, ValueError, ...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UnionRobustError(
                f"weights file {str(p)!r} is not a valid safetensors file ({reason})"
            ) from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _weights_only_detail(exc)
        if "global" in detail.lower():
            raise UnionRobustError(
                f"weights file {str(p)!r} was refused: it pickles objects other than tensors, "
                f"which could run code ({detail[:120]}); re-save it as a state dict or safetensors"
            ) from None
        raise UnionRobustError(
            f"weights file {str(p)!r} is corrupt or not a weights file ({detail[:120]})"
        ) from None
    except Exception as exc:  # garbage bytes raise all sorts (IndexError, KeyError, ...)
        raise UnionRobustError(
            f"weights file {str(p)!r} is corrupt or not a weights file ({_first_line(exc)})"
        ) from None
    return unwrap_state_dict(obj, str(p))


def _weights_only_detail(exc: BaseException) -> str:
    """The reason torch's weights-only unpickler gives, without its long advice text."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text[text.index(marker) + len(marker) :].strip()
        first = rest.splitlines()[0].strip() if rest else "unpickling failed"
        return first.split(". Please")[0]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError) or not text:
        return f"{type(exc).__name__}: {text}"
    return text.splitlines()[0][:160]


def unwrap_state_dict(obj: object, source: str = "<object>") -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object (plain or under a wrapper key)."""
    for _ in range(4):
        if isinstance(obj, nn.Module):  # not reachable with weights_only, kept for in-memory use
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise UnionRobustError(
                f"weights file {source!r} holds a {type(obj).__name__}, not a state dict"
            )
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = _brief([str(k) for k in obj], 6)
            raise UnionRobustError(
                f"weights file {source!r} has no state dict (top-level keys: {keys or 'none'}); "
                f"expected tensors or one of {', '.join(WRAPPER_KEYS)}"
            )
        obj = inner
    raise UnionRobustError(f"weights file {source!r}: state dict nested too deeply")


def _strip(keys: list[str], prefix: str) -> list[str] | None:
    if keys and all(k.startswith(prefix) for k in keys):
        return [k[len(prefix) :] for k in keys]
    return None


def match_keys(file_keys: list[str], model_keys: list[str]) -> dict[str, str]:
    """Map file keys to model keys, removing/adding wrapper prefixes when that matches better."""
    target = set(model_keys)
    candidates: list[list[str]] = [file_keys]
    frontier = [file_keys]
    for _ in range(3):  # strip up to three stacked wrapper prefixes, e.g. module.model.
        nxt = []
        for keys in frontier:
            for prefix in _PREFIXES:
                stripped = _strip(keys, prefix)
                if stripped is not None:
                    nxt.append(stripped)
        candidates += nxt
        frontier = nxt
    for prefix in _PREFIXES:  # the model is wrapped but the file is not
        if model_keys and all(k.startswith(prefix) for k in model_keys):
            candidates += [[prefix + k for k in keys] for keys in list(candidates)]
    best = max(candidates, key=lambda keys: sum(k in target for k in keys))
    return dict(zip(file_keys, best, strict=True))


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load a weights file into ``model`` in place.

    Shape mismatches are always an error. With ``strict=True`` missing or unexpected keys are
    errors too (except BatchNorm ``num_batches_tracked`` counters, which old files lack).
    """
    if not isinstance(model, nn.Module):
        raise UnionRobustError(f"load_weights needs an nn.Module, got {type(model).__name__}")
    state = read_state_dict(path)
    own = model.state_dict()
    mapping = match_keys(list(state), list(own))
    renamed = {mapping[k]: v for k, v in state.items()}
    src = str(path)
    shapes = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in renamed.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        raise UnionRobustError(
            f"weights file {src!r} does not fit the model: {len(shapes)} shape mismatch(es): "
            f"{_brief(shapes, 3)}"
        )
    missing = [k for k in own if k not in renamed and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in renamed if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_brief(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_brief(unexpected)}")
        raise UnionRobustError(f"weights file {src!r} does not fit the model: " + "; ".join(parts))
    bad_dtype = [
        k
        for k, v in renamed.items()
        if k in own and v.is_floating_point() != own[k].is_floating_point()
    ]
    if bad_dtype:
        raise UnionRobustError(
            f"weights file {src!r} does not fit the model: float/int mismatch for "
            f"{_brief(bad_dtype, 3)}"
        )
    model.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=False)
    return LoadResult(missing=missing, unexpected=unexpected)
