"""One model from a zoo name or the user's own code, with its weights: what ``--model``,
``--model-module`` and ``--weights`` of every command resolve to.

A zoo model without weights is refused unless ``untrained=True``: evaluating a random
initialisation by mistake gives a meaningless number with exit 0. A user factory may load its
own weights, so it is not asked for them.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.models.io import load_weights, weights_path
from unionrobust.models.normalize import NormalizedModel
from unionrobust.models.registry import build_model, model_names


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_user_model(spec: str) -> nn.Module:
    """Build a model from ``"FILE.py:FACTORY"``: import the file (it is executed), call
    ``FACTORY()``; every failure is one line naming the file or the factory."""
    path_text, sep, factory_name = str(spec).rpartition(":")
    if not sep or not path_text or not factory_name:
        raise UnionRobustError(f"--model-module must look like FILE.py:FACTORY, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise UnionRobustError(f"--model-module: file {path_text!r} not found")
    mod_spec = importlib.util.spec_from_file_location(f"_unionrobust_user_{path.stem}", path)
    if mod_spec is None or mod_spec.loader is None:
        raise UnionRobustError(f"--model-module: cannot import {path_text!r}")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as err:  # the user's file: report its error in one line
        raise UnionRobustError(
            f"--model-module: importing {path_text} failed ({_first_line(err)})"
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UnionRobustError(f"--model-module: {path_text} has no function {factory_name!r}")
    try:
        model = factory()
    except Exception as err:  # the user's factory: report its error in one line
        raise UnionRobustError(
            f"--model-module: {factory_name}() failed ({_first_line(err)}); fix {path_text}"
        ) from None
    if not isinstance(model, nn.Module):
        raise UnionRobustError(
            f"--model-module: {factory_name}() returned {type(model).__name__}, not an nn.Module"
        )
    return model


def check_model_request(
    name: str | None,
    weights: str | os.PathLike | None = None,
    *,
    module: str | None = None,
    untrained: bool = False,
) -> None:
    """The checks of :func:`get_model` that need no building or reading (run them before
    loading data): one of ``name``/``module``, a known name, an existing weights file, and
    weights or ``untrained`` for a zoo model."""
    if (name is None) == (module is None):
        raise UnionRobustError("give exactly one of --model NAME or --model-module FILE.py:FACTORY")
    if weights is not None and untrained:
        raise UnionRobustError("give --weights or --untrained, not both")
    if name is not None and name not in model_names():
        raise unknown_name("model", str(name), model_names())
    if weights is not None:
        weights_path(weights)
    elif name is not None and not untrained:
        raise UnionRobustError(
            f"model {name!r} has no weights: give --weights FILE (weights=FILE), or "
            "--untrained (untrained=True) to use its random initialisation on purpose"
        )


def load_model(
    name: str | None = None,
    weights: str | os.PathLike | None = None,
    *,
    module: str | None = None,
    untrained: bool = False,
    strict: bool = True,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The one model loader: zoo architecture ``name`` (``kwargs``: ``num_classes``,
    ``in_channels``, ``input_size``, ``mean``/``std``, ...) or ``module`` =
    ``"FILE.py:FACTORY"``, with ``weights`` loaded (safetensors or a weights-only torch file;
    ``strict``), moved to ``device`` if given; returned in eval mode.

    A zoo model needs ``weights`` or ``untrained=True`` (the CLI's ``--weights`` /
    ``--untrained``). ``robustbench:<name>`` is a RobustBench zoo model: ``kwargs`` are those of
    :func:`unionrobust.models.robustbench.load_robustbench_model` (``dataset``,
    ``threat_model``, ``model_dir``, ``download``, ...), and ``weights`` overrides the model
    folder's file.
    """
    if isinstance(name, str) and name.startswith("robustbench:"):
        # deferred: models.robustbench builds on models.io
        from unionrobust.models.robustbench import load_robustbench_model

        allowed = set(inspect.signature(load_robustbench_model).parameters) - {"name", "weights"}
        bad = sorted(set(kwargs) - allowed)
        if bad:
            raise UnionRobustError(
                f"RobustBench models do not take argument(s) {', '.join(bad)}; "
                f"valid: {', '.join(sorted(allowed))}"
            )
        return load_robustbench_model(name, weights=weights, strict=strict, device=device, **kwargs)
    check_model_request(name, weights, module=module, untrained=untrained)
    model = load_user_model(module) if module is not None else build_model(name, **kwargs)
    if weights is not None:
        target = model.model if isinstance(model, NormalizedModel) else model
        load_weights(target, weights, strict=strict)
    if device is not None:
        model = model.to(device)
    return model.eval()


def get_model(*args: Any, **kwargs: Any) -> nn.Module:
    """Deprecated alias of :func:`load_model` (same arguments)."""
    warnings.warn(
        "unionrobust.get_model is deprecated; use unionrobust.load_model (same arguments)",
        DeprecationWarning,
        stacklevel=2,
    )
    return load_model(*args, **kwargs)
