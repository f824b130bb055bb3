"""Training configuration: nested dataclasses loaded from YAML with ``yaml.safe_load``.

Sections: ``model``, ``data``, ``threats`` (a spec string such as ``"linf:0.3, l2:2, l1:10"``),
``strategy`` (``name`` plus the strategy's own options), ``optimizer``, ``schedule``,
``training`` and ``eval``. An unknown key is a one-line :class:`UnionRobustError` naming it and
the closest valid keys. ``--set a.b=value`` overrides parse ``value`` as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from unionrobust.errors import UnionRobustError, short_repr
from unionrobust.safeyaml import YAMLTooLarge, safe_load
from unionrobust.training.checks import validate_config


@dataclass
class ModelConfig:
    name: str = "small-cnn"
    num_classes: int = 10
    #: initial weights (our checkpoints, safetensors or plain/wrapped torch state dicts)
    weights: str | None = None
    #: architecture options passed to ``build_model`` (in_channels, input_size, mean, std, ...)
    options: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "mnist-embedded"
    root: str | None = None
    batch_size: int = 100
    #: "auto" = crop+flip for 3-channel images (CIFAR), none for 1-channel (MNIST)
    augment: str = "auto"
    crop_padding: int = 4
    #: use only the first ``train_n`` training examples (after removing the held-out points)
    train_n: int | None = None
    #: extra unlabelled / pseudo-labelled set (.npz or .pt with ``x`` and optionally ``y``)
    extra: str | None = None
    #: fraction of each batch drawn from ``extra`` (Croce & Hein App. A: one half)
    extra_fraction: float = 0.5


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    name: str = "piecewise"
    #: piecewise knots [[epoch, lr], ...]; default: 0 -> optimizer.lr at 40 % -> 0 at the end
    points: list | None = None
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    peak: float = 0.4
    factor: float = 10.0


@dataclass
class TrainingConfig:
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    #: mixed precision (only takes effect on CUDA)
    amp: bool = True
    #: linear ramp of the attack's epsilon/step size over the first epochs (0 = off)
    warmup_epochs: float = 0.0
    #: fraction of each batch trained on adversarial examples; the rest is clean
    adv_fraction: float = 1.0
    #: also checkpoint every N optimisation steps (0 = at the end of each epoch only)
    checkpoint_every: int = 0
    #: stop each epoch after this many steps (None = full pass over the data)
    max_steps_per_epoch: int | None = None
    progress: bool = True
    #: convert BatchNorm to SyncBatchNorm under DDP
    sync_bn: bool = False
    #: a non-finite loss or gradient: "error" stops the run, "skip" drops the batch (no step)
    nonfinite: str = "error"
    #: with ``nonfinite: skip``, the run still stops after this many skipped batches
    max_skipped: int = 10
    #: also log each epoch to TensorBoard (DIR/tensorboard) when it is installed
    tensorboard: bool = True
    #: with TensorBoard, also write per-step scalars every N steps (0 = per epoch only)
    tensorboard_every: int = 0


@dataclass
class EvalConfig:
    #: held-out points evaluated after each epoch (0 = no per-epoch evaluation)
    n: int = 200
    suite: str = "quick"
    batch_size: int = 200
    every: int = 1
    #: "holdout": the last ``n`` training examples, never trained on; "test": the test split
    source: str = "holdout"
    #: metric that selects the best checkpoint: union, average or clean accuracy
    select: str = "union"
    seed: int = 0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    threats: str = "linf:0.3, l2:2, l1:10"
    strategy: dict = field(default_factory=lambda: {"name": "natural"})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: free text describing the setup (paper, section)
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every value the trainer would pass on, so a config that loads also trains."""
        validate_config(self)
        return self

    @property
    def strategy_name(self) -> str:
        return str(self.strategy.get("name", "natural"))

    @property
    def strategy_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.strategy.items() if k != "name"}


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} valid: {', '.join(valid)}"


def _bad(where: str, what: str, value: Any) -> UnionRobustError:
    return UnionRobustError(f"config key {where!r} must be {what}, got {short_repr(value)}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type (YAML reads ``1e-3`` as a string)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _bad(where, "true or false", value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(where, "an integer", value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(where, "a number", value)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _bad(where, "a string", value)
    if hint is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise _bad(where, "a list", value)
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise _bad(where, "a mapping", value)
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UnionRobustError(f"config section {where or 'top level'!r} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise UnionRobustError(f"unknown config key {full!r}" + _suggest(str(key), names))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value if value is not None else {}, full)
        else:
            kwargs[key] = _coerce(value, hint, full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate and build a :class:`Config`; unknown keys raise naming the key."""
    cfg = _build(Config, data or {}, "")
    if "name" not in cfg.strategy:
        cfg.strategy = {"name": "natural", **cfg.strategy}
    return cfg.validate()


def builtin_configs() -> list[str]:
    """Names of the configs shipped in ``unionrobust/configs``."""
    root = resources.files("unionrobust") / "configs"
    try:
        return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
    except FileNotFoundError:
        return []


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = safe_load(text)
    except YAMLTooLarge as exc:
        raise UnionRobustError(f"config {source}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnionRobustError(f"config {source} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnionRobustError(f"config {source} must be a YAML mapping at top level")
    return data


def read_config_dict(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a config file path or a built-in config name (``msd-mnist``)."""
    path = Path(name_or_path)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UnionRobustError(
                f"config {str(path)!r} is not a text (UTF-8) YAML file"
            ) from None
        return _read_yaml(text, str(path))
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if stem in builtin_configs():
        text = (resources.files("unionrobust") / "configs" / f"{stem}.yaml").read_text("utf-8")
        return _read_yaml(text, stem)
    valid = builtin_configs()
    raise UnionRobustError(
        f"no config file or built-in config {name_or_path!r}" + _suggest(stem, valid)
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.epochs=3"`` -> (["training", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise UnionRobustError(f"--set expects key=value, got {short_repr(text)}")
    key, raw = text.split("=", 1)
    try:
        value = safe_load(raw) if raw.strip() else ""
    except YAMLTooLarge as exc:
        raise UnionRobustError(f"--set {key.strip()!r}: {exc}") from None
    except yaml.YAMLError:
        value = raw
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UnionRobustError(f"--set expects key=value, got {short_repr(text)}")
    return parts, value


def _is_section(parts: list[str]) -> bool:
    """Whether the config key ``parts`` is a section (a dataclass or a mapping such as
    ``strategy`` or ``model.options``), following the :class:`Config` schema."""
    hint: Any = Config
    for p in parts:
        if not dataclasses.is_dataclass(hint):
            return False
        hint = typing.get_type_hints(hint).get(p)
        if hint is None:
            return False
    return dataclasses.is_dataclass(hint) or hint is dict or typing.get_origin(hint) is dict


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw mapping (validated later by :func:`config_from_dict`).

    A section is never replaced by a scalar (``--set training=5`` is an error, whatever follows).
    """
    out = dict(data)
    for text in overrides:
        parts, value = parse_override(text)
        key = ".".join(parts)
        if not isinstance(value, dict) and _is_section(parts):
            raise UnionRobustError(
                f"--set {short_repr(text)}: {key!r} is a config section, not a value; set one "
                f"of its keys instead, e.g. --set {key}.KEY=VALUE"
            )
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is not None and not isinstance(child, dict):
                raise UnionRobustError(
                    f"--set {short_repr(text)}: {'.'.join(parts[: i + 1])!r} is a value, "
                    "not a section"
                )
            child = dict(child) if isinstance(child, dict) else {}
            node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config (file path or built-in name; None = defaults) and apply ``--set`` pairs."""
    data = read_config_dict(name_or_path) if name_or_path else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
