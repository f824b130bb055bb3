"""Model registry: ``build_model(name, num_classes, **kwargs)`` for every architecture we ship."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from unionrobust.errors import UnionRobustError, unknown_name
from unionrobust.models.normalize import with_normalization
from unionrobust.models.resnet import PreActResNet18, WideResNet
from unionrobust.models.small import (
    MLP,
    AllCNN,
    LeNet,
    LeNetV2,
    MadryMNISTCNN,
    SmallCNN,
    SmallCNN5,
)


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: its builder, a one-line description and default input shape."""

    builder: Callable[..., nn.Module]
    description: str
    in_channels: int
    input_size: int


def _size(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        sizes = (input_size, input_size)
    elif isinstance(input_size, Sequence) and len(input_size) == 2:
        sizes = (input_size[0], input_size[1])
    else:
        raise UnionRobustError(f"input_size must be an int or (height, width), got {input_size!r}")
    if not all(isinstance(s, int) and s >= 1 for s in sizes):
        raise UnionRobustError(f"input_size must be positive integers, got {input_size!r}")
    return sizes


def _sized(cls: type[nn.Module], min_size: int) -> Callable[..., nn.Module]:
    """Builder for the small nets whose flatten size depends on the input resolution."""

    def build(num_classes: int, in_channels: int, input_size: int | Sequence[int], **kw):
        size = _size(input_size)
        if min(size) < min_size:
            raise UnionRobustError(
                f"{cls.__name__} needs inputs of at least {min_size}x{min_size}, got {size}"
            )
        return cls(num_classes, in_channels, size, **kw)

    build.__signature__ = _merged_signature(cls)  # type: ignore[attr-defined]
    return build


def _merged_signature(cls: type[nn.Module]) -> inspect.Signature:
    params = [
        inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("in_channels", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("input_size", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ]
    extra = list(inspect.signature(cls.__init__).parameters.values())[4:]  # after self, n, c, size
    return inspect.Signature(params + extra)


def _cifar(cls: type[nn.Module], min_size: int) -> Callable[..., nn.Module]:
    """Builder for fully convolutional nets (any input size above a minimum)."""

    def build(num_classes: int, in_channels: int, input_size: int | Sequence[int], **kw):
        size = _size(input_size)
        if min(size) < min_size:
            raise UnionRobustError(
                f"{cls.__name__} needs inputs of at least {min_size}x{min_size}, got {size}"
            )
        return cls(num_classes=num_classes, in_channels=in_channels, **kw)

    sig = inspect.signature(cls.__init__)
    extra = [
        p for n, p in sig.parameters.items() if n not in ("self", "num_classes", "in_channels")
    ]
    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            for n in ("num_classes", "in_channels", "input_size")
        ]
        + extra
    )
    return build


#: name -> spec; ``build_model`` is the way to instantiate them
MODELS: dict[str, ModelSpec] = {
    "small-cnn": ModelSpec(
        _sized(SmallCNN, 4), "tiny 2-conv CNN for fast CPU demos and tests", 1, 28
    ),
    "small-cnn5": ModelSpec(
        _sized(SmallCNN5, 16), "small-cnn with 5x5 convs and FC 256: the main job's recipes",
        1, 28,
    ),
    "mnist-cnn": ModelSpec(
        _sized(MadryMNISTCNN, 4), "Madry et al. MNIST CNN (MSD paper, 4 layers)", 1, 28
    ),
    "mlp": ModelSpec(_sized(MLP, 1), "Wang et al. model A: MLP 128-128-64", 1, 28),
    "all-cnn": ModelSpec(_sized(AllCNN, 4), "Wang et al. model B: All-CNN variant", 1, 28),
    "lenet": ModelSpec(_sized(LeNet, 16), "Wang et al. model C: LeNet-5 with ReLU", 1, 28),
    "lenet-v2": ModelSpec(_sized(LeNetV2, 12), "Wang et al. model D: enlarged LeNet", 1, 28),
    "preact-resnet18": ModelSpec(
        _cifar(PreActResNet18, 8), "PreAct ResNet-18 (relu or softplus), Croce & Hein", 3, 32
    ),
    "wide-resnet": ModelSpec(
        _cifar(WideResNet, 4), "WideResNet-depth-k (default 28-10), Zagoruyko & Komodakis", 3, 32
    ),
}


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(MODELS)


def model_kwargs(name: str) -> dict[str, object]:
    """Architecture-specific keyword arguments of ``name`` with their defaults."""
    spec = _spec(name)
    sig = inspect.signature(spec.builder)
    return {
        n: (None if p.default is inspect.Parameter.empty else p.default)
        for n, p in sig.parameters.items()
        if n not in ("num_classes",)
    }


def _spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise unknown_name("model", str(name), MODELS)
    return MODELS[name]


def build_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int | None = None,
    input_size: int | Sequence[int] | None = None,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    **kwargs,
) -> nn.Module:
    """Build architecture ``name`` for ``in_channels`` x ``input_size`` images in [0, 1].

    ``in_channels``/``input_size`` default to the architecture's home dataset (1x28 for the
    MNIST nets, 3x32 for the ResNets). With ``mean`` and ``std`` the model is wrapped by
    :func:`with_normalization` so it standardises its input itself. Extra keyword arguments are
    architecture options (see :func:`model_kwargs`).
    """
    spec = _spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise UnionRobustError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    channels = spec.in_channels if in_channels is None else in_channels
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise UnionRobustError(f"in_channels must be a positive integer, got {channels!r}")
    size = spec.input_size if input_size is None else input_size
    allowed = [
        n
        for n in inspect.signature(spec.builder).parameters
        if n not in ("num_classes", "in_channels", "input_size")
    ]
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        valid = ", ".join(["in_channels", "input_size", "mean", "std", *allowed])
        raise UnionRobustError(
            f"model {name!r} does not take argument(s) {', '.join(bad)}; valid: {valid}"
        )
    try:
        model = spec.builder(num_classes, channels, size, **kwargs)
    except UnionRobustError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnionRobustError(f"cannot build model {name!r} with {kwargs}: {msg}") from None
    if (mean is None) != (std is None):
        raise UnionRobustError("give both mean and std for input normalisation, or neither")
    if mean is not None:
        model = with_normalization(model, mean, std)
    return model
