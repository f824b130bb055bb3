"""Model zoo: registry of architectures from the papers, input normalisation, safe weight IO."""

from unionrobust.models.io import load_weights, save_weights
from unionrobust.models.loader import get_model as get_model  # deprecated alias of load_model
from unionrobust.models.loader import load_model, load_user_model
from unionrobust.models.normalize import Normalize, NormalizedModel, with_normalization
from unionrobust.models.registry import MODELS, ModelSpec, build_model, model_kwargs, model_names

__all__ = [
    "MODELS",
    "ModelSpec",
    "Normalize",
    "NormalizedModel",
    "build_model",
    "load_model",
    "load_user_model",
    "load_weights",
    "model_kwargs",
    "model_names",
    "save_weights",
    "with_normalization",
]
