"""Configs: unknown keys are named (with close matches), types checked, shipped configs valid."""

from __future__ import annotations

import pytest

from unionrobust.data import dataset_names
from unionrobust.errors import UnionRobustError
from unionrobust.models import model_kwargs, model_names
from unionrobust.threats import parse
from unionrobust.training.config import (
    Config,
    builtin_configs,
    config_from_dict,
    dump_config,
    load_config,
)
from unionrobust.training.strategies import strategy_names, strategy_options
from unionrobust.training.trainer import build_strategy


def test_defaults_and_nested_sections():
    cfg = config_from_dict({"training": {"epochs": 3}, "optimizer": {"lr": "1e-3"}})
    assert isinstance(cfg, Config)
    assert cfg.training.epochs == 3
    assert cfg.optimizer.lr == pytest.approx(1e-3)  # YAML reads 1e-3 as a string
    assert cfg.strategy_name == "natural"


def test_unknown_key_is_named_with_close_match():
    with pytest.raises(UnionRobustError, match=r"unknown config key 'training.epoch'.*'epochs'"):
        config_from_dict({"training": {"epoch": 3}})
    with pytest.raises(UnionRobustError, match=r"unknown config key 'optimiser'.*'optimizer'"):
        config_from_dict({"optimiser": {"lr": 0.1}})


def test_wrong_types_are_named():
    with pytest.raises(UnionRobustError, match=r"'training.epochs' must be an integer"):
        config_from_dict({"training": {"epochs": "many"}})
    with pytest.raises(UnionRobustError, match=r"'training.amp' must be true or false"):
        config_from_dict({"training": {"amp": 3}})
    with pytest.raises(UnionRobustError, match="section 'data' must be a mapping"):
        config_from_dict({"data": 5})


def test_overrides_and_roundtrip(tmp_path):
    cfg = load_config("mnist-small-msd", ["training.epochs=2", "strategy.steps=3"])
    assert cfg.training.epochs == 2 and cfg.strategy == {"name": "msd", "steps": 3}
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(str(path))
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(UnionRobustError, match=r"unknown config key 'training.epohcs'"):
        load_config("mnist-small", ["training.epohcs=2"])


def test_unknown_config_name_lists_builtins():
    with pytest.raises(
        UnionRobustError, match=r"no config file or built-in config 'msd-mnst'.*msd-mnist"
    ):
        load_config("msd-mnst")


@pytest.mark.parametrize("name", builtin_configs())
def test_every_shipped_config_is_valid(name):
    cfg = load_config(name)
    assert cfg.description
    parse(cfg.threats)
    assert cfg.model.name in model_names()
    assert set(cfg.model.options) <= set(model_kwargs(cfg.model.name)) | {"mean", "std"}
    assert cfg.strategy_name in strategy_names()
    assert set(cfg.strategy_options) <= set(strategy_options(cfg.strategy_name))
    assert cfg.data.dataset in dataset_names()
    assert build_strategy(cfg).threats is not None  # option values are valid too


def test_the_paper_configs_are_shipped():
    names = set(builtin_configs())
    assert {"msd-mnist", "msd-cifar10", "eat-cifar10", "tramer-mnist", "minmax-mnist"} <= names
    assert {f"mnist-small-{s}" for s in ("pinf", "max", "avg", "msd", "eat")} <= names
    msd = load_config("msd-mnist")
    assert msd.schedule.points == [[0, 0.0], [6, 0.001], [15, 0.0]]
    assert msd.strategy == {"name": "msd", "steps": 100, "alpha": [0.01, 0.1, 0.8]}
