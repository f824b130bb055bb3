"""RobustBench models by name: the zoo's architecture, the checkpoint loaded safely by us.

``load_robustbench_model("Carmon2019Unlabeled", dataset="cifar10", threat_model="Linf",
model_dir="models")`` builds the architecture from RobustBench's model zoo entry
(``robustbench.model_zoo.model_dicts[dataset][threat_model][name]["model"]()``) and reads the
checkpoint from RobustBench's folder layout ``model_dir/<dataset>/<threat_model>/<name>.pt``
(ensembles: ``<name>.pt_m<i>.pt``) with ``torch.load(weights_only=True)`` through
:mod:`unionrobust.models.io` -- never RobustBench's own loader, which unpickles arbitrary objects.
Nothing is downloaded unless ``download=True`` (with gdown, as RobustBench's own loader does). The
``robustbench`` package is only read for its zoo table (:mod:`unionrobust.models.robustbench_zoo`,
installed with ``--no-deps``); tests pass a small ``zoo``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.atomic import atomic_path
from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.models.io import load_weights
from unionrobust.models.robustbench_zoo import PACKAGE_HINT, read_model_dicts

#: model names of the form ``robustbench:<name>`` are RobustBench zoo entries
PREFIX = "robustbench:"
INSTALL_HINT = f'pip install "unionrobust[robustbench]" && {PACKAGE_HINT}'

#: ``{dataset: {threat_model: {name: {"model": builder, "gdrive_id": id or [ids]}}}}``
Zoo = Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]


def is_robustbench_name(name: object) -> bool:
    """True for ``robustbench:<name>``."""
    return isinstance(name, str) and name.startswith(PREFIX)


def robustbench_zoo() -> Zoo:
    """RobustBench's model table with plain string keys (read from the ``robustbench`` package's
    files, see :mod:`unionrobust.models.robustbench_zoo`)."""
    model_dicts = read_model_dicts()
    return {
        getattr(ds, "value", str(ds)): {
            getattr(tm, "value", str(tm)): dict(m) for tm, m in t.items()
        }
        for ds, t in model_dicts.items()
    }


def checkpoint_path(
    name: str, dataset: str, threat_model: str, model_dir: str | os.PathLike
) -> Path:
    """Where RobustBench keeps a checkpoint: ``model_dir/<dataset>/<threat_model>/<name>.pt``."""
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def _entry(zoo: Zoo, name: str, dataset: str, threat_model: str) -> Mapping[str, Any]:
    if dataset not in zoo:
        raise unknown_name("RobustBench dataset", dataset, zoo)
    if threat_model not in zoo[dataset]:
        raise unknown_name(f"RobustBench threat model for {dataset}", threat_model, zoo[dataset])
    models = zoo[dataset][threat_model]
    if name not in models:
        raise unknown_name(f"RobustBench model ({dataset}, {threat_model})", name, models)
    entry = models[name]
    if not callable(entry.get("model")):
        raise UnionRobustError(f"RobustBench entry {name!r} has no model builder")
    return entry


def gdown_download(gdrive_id: str, path: str) -> None:
    """RobustBench 1.1.1's own downloader (``robustbench.utils.download_gdrive_new``):
    ``gdown.download(id=..., output=...)``."""
    try:
        import gdown  # optional: the robustbench extra
    except ImportError:
        raise UnionRobustError(
            f"downloading RobustBench weights needs gdown ({INSTALL_HINT})"
        ) from None
    gdown.download(id=gdrive_id, output=path)


def _download(gdrive_id: str, path: Path, downloader: Callable[[str, str], Any] | None) -> None:
    """Download into a temporary file next to ``path`` and rename it into place when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            (downloader or gdown_download)(gdrive_id, str(tmp))
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise UnionRobustError(f"no file arrived for Google Drive id {gdrive_id}")
    except Exception as exc:  # network errors of all kinds: one line
        raise UnionRobustError(f"downloading {path.name} failed: {exc}") from None


def _load_into(model: nn.Module, path: Path, strict: bool) -> None:
    """Load ``path`` into ``model``; missing buffers the constructor sets (input normalisation
    constants such as ``mu``/``sigma``) are accepted, missing parameters are not."""
    result = load_weights(model, path, strict=False)
    if not strict:
        return
    params = {n for n, _ in model.named_parameters()}
    missing = [k for k in result.missing if k in params]
    if missing or result.unexpected:
        parts = [f"missing parameter(s) {', '.join(missing[:4])}"] if missing else []
        if result.unexpected:
            parts.append(f"unexpected key(s) {', '.join(result.unexpected[:4])}")
        raise UnionRobustError(
            f"weights file {str(path)!r} does not fit the RobustBench architecture: "
            + "; ".join(parts)
            + " (strict=False loads the matching keys only)"
        )


def load_robustbench_model(
    name: str,
    *,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "models",
    weights: str | os.PathLike | None = None,
    download: bool = False,
    strict: bool = True,
    device: str | torch.device | None = None,
    zoo: Zoo | None = None,
    downloader: Callable[[str, str], Any] | None = None,
) -> nn.Module:
    """A RobustBench zoo model (``name`` with or without ``robustbench:``), in eval mode.

    The checkpoint is ``weights`` if given, else :func:`checkpoint_path`; a missing file is an
    error naming that path unless ``download=True`` (RobustBench's Google Drive downloader).
    ``zoo`` replaces RobustBench's table (same layout, for tests and private zoos).
    """
    if not isinstance(name, str) or not name:
        raise UnionRobustError(f"a RobustBench model name is a string, got {name!r}")
    name = name.removeprefix(PREFIX)
    table = robustbench_zoo() if zoo is None else zoo
    entry = _entry(table, name, str(dataset), str(threat_model))
    model = entry["model"]()
    if not isinstance(model, nn.Module):
        raise UnionRobustError(f"RobustBench entry {name!r} built a {type(model).__name__}")
    ids = entry.get("gdrive_id")
    base = (
        Path(weights)
        if weights is not None
        else checkpoint_path(name, dataset, threat_model, model_dir)
    )
    if isinstance(ids, (list, tuple)):  # an ensemble: one file per member, in model.models
        members = getattr(model, "models", None)
        if members is None or len(members) != len(ids):
            raise UnionRobustError(f"RobustBench ensemble {name!r} does not list its members")
        files = [(members[i], Path(f"{base}_m{i}.pt"), gid) for i, gid in enumerate(ids)]
    else:
        files = [(model, base, ids)]
    for target, path, gid in files:
        if not path.is_file():
            if not download or weights is not None:
                raise UnionRobustError(
                    f"RobustBench weights not found: expected {str(path)!r} "
                    f"(layout <model-dir>/{dataset}/{threat_model}/{name}.pt); copy the file "
                    "there, or allow the download (download=True / --download)"
                )
            if not gid:
                raise UnionRobustError(f"RobustBench entry {name!r} has no download id")
            _download(str(gid), path, downloader)
        _load_into(target, path, strict)
    if device is not None:
        model = model.to(device)
    return model.eval()
