"""Training: strategies (the inner maximisation per batch) and the trainer (loop, schedules,
crash-safe checkpoints and exact resume, DDP, YAML configs, strategy comparison)."""

from unionrobust.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from unionrobust.training.compare import compare
from unionrobust.training.config import Config, builtin_configs, config_from_dict, load_config
from unionrobust.training.schedules import make_schedule
from unionrobust.training.trainer import Trainer, TrainResult, train

__all__ = [
    "CheckpointError",
    "Config",
    "TrainResult",
    "Trainer",
    "builtin_configs",
    "compare",
    "config_from_dict",
    "load_checkpoint",
    "load_config",
    "make_schedule",
    "save_checkpoint",
    "train",
]
