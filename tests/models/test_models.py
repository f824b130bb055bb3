"""Model zoo: every architecture builds, has the right output shape and size, options work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unionrobust.errors import UnionRobustError
from unionrobust.models import (
    MODELS,
    Normalize,
    NormalizedModel,
    build_model,
    load_weights,
    model_kwargs,
    model_names,
    save_weights,
    with_normalization,
)
from unionrobust.models.small import SmallCNN, SmallCNN5

# Published / architecture-implied parameter counts at the default input size (10 classes).
# Madry MNIST CNN: 3.27M; PreAct ResNet-18: 11.2M; WRN-28-10: 36.5M (Zagoruyko & Komodakis).
EXPECTED_PARAMS = {
    "small-cnn": 1.0e5,
    "small-cnn5": 1.47e5,
    "mnist-cnn": 3.27e6,
    "mlp": 1.26e5,  # 784*128 + 128*128 + 128*64 + 64*10 (+ biases)
    "lenet": 4.4e4,
    "lenet-v2": 2.25e5,
    "all-cnn": 5.0e5,
    "preact-resnet18": 1.12e7,
    "wide-resnet": 3.65e7,
}
# cheap options for running the big nets forward in tests (the ResNets are size-agnostic)
FAST = {
    "wide-resnet": {"depth": 10, "widen_factor": 1, "input_size": 8},
    "preact-resnet18": {"input_size": 8},
    "all-cnn": {"input_size": 12},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_model() -> None:
    assert set(model_names()) == set(MODELS) == set(EXPECTED_PARAMS)
    assert model_names() == sorted(model_names())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_order_of_magnitude(name: str) -> None:
    count = n_params(build_model(name))
    assert 0.7 * EXPECTED_PARAMS[name] < count < 1.4 * EXPECTED_PARAMS[name], count


def test_exact_counts_of_simple_nets() -> None:
    # hand-computed from the layer lists in the docstrings (MNIST, 10 classes)
    mlp = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert n_params(build_model("mlp")) == mlp
    conv = 1 * 32 * 25 + 32 + 32 * 64 * 25 + 64
    madry = conv + 7 * 7 * 64 * 1024 + 1024 + 1024 * 10 + 10
    assert n_params(build_model("mnist-cnn")) == madry
    lenet = (25 * 6 + 6) + (6 * 16 * 25 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + 84 * 10 + 10
    assert n_params(build_model("lenet")) == lenet


def test_small_cnn_options_build_the_recipes_net() -> None:
    # conv 16@3x3 (pad 1), conv 32@3x3, FC 64 by default; the recipes' 5x5, no padding, FC 256
    small = (9 * 16 + 16) + (16 * 32 * 9 + 32) + (7 * 7 * 32 * 64 + 64) + (64 * 10 + 10)
    assert n_params(build_model("small-cnn")) == small
    net = build_model("small-cnn", kernel=5, padding=0, hidden=256)
    wide = (25 * 16 + 16) + (16 * 32 * 25 + 32) + (4 * 4 * 32 * 256 + 256) + (256 * 10 + 10)
    assert n_params(net) == wide
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert {"kernel", "padding", "hidden"} <= set(model_kwargs("small-cnn"))
    # small-cnn5 is that net by name, with the same initialisation from the same seed
    torch.manual_seed(0)
    named = build_model("small-cnn5")
    torch.manual_seed(0)
    net = build_model("small-cnn", kernel=5, padding=0, hidden=256)
    assert all(
        torch.equal(a, b)
        for a, b in zip(named.state_dict().values(), net.state_dict().values(), strict=True)
    )
    assert model_kwargs("small-cnn5")["kernel"] == 5


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
@pytest.mark.parametrize("num_classes", [3])  # default 10 is built by the count tests
def test_output_shape_and_backward(name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    kwargs = {"input_size": MODELS[name].input_size, **FAST.get(name, {})}
    model = build_model(name, num_classes=num_classes, **kwargs)
    side = kwargs["input_size"]
    x = torch.rand(2, MODELS[name].in_channels, side, side, requires_grad=True)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["small-cnn", "mnist-cnn", "mlp", "lenet", "lenet-v2", "all-cnn"])
def test_small_nets_on_cifar_shapes(name: str) -> None:
    model = build_model(name, in_channels=3, input_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert n_params(model) > n_params(build_model(name)) or name == "all-cnn"


def test_resnets_on_mnist_shapes() -> None:
    model = build_model("wide-resnet", in_channels=1, input_size=28, depth=10, widen_factor=1)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_all_cnn_width_follows_table_a1() -> None:
    assert build_model("all-cnn").net[0].out_channels == 32
    assert build_model("all-cnn", in_channels=3, input_size=32).net[0].out_channels == 64
    assert build_model("all-cnn", width=48).net[0].out_channels == 48


def test_wide_resnet_depth_and_width() -> None:
    m = build_model("wide-resnet", depth=16, widen_factor=2)
    assert len(m.block1.layer) == 2 and m.fc.in_features == 128
    with pytest.raises(UnionRobustError, match=r"6n \+ 4"):
        build_model("wide-resnet", depth=27)


def test_softplus_option() -> None:
    soft = build_model("preact-resnet18", input_size=8, activation="softplus")
    kinds = {type(m) for m in soft.modules()}
    assert nn.Softplus in kinds and nn.ReLU not in kinds
    small = {"depth": 10, "widen_factor": 1, "input_size": 8}
    torch.manual_seed(0)
    relu = build_model("wide-resnet", **small).eval()
    torch.manual_seed(0)
    smooth = build_model("wide-resnet", activation="softplus", softplus_beta=5.0, **small).eval()
    assert nn.Softplus in {type(m) for m in smooth.modules()}
    assert nn.ReLU not in {type(m) for m in smooth.modules()}
    x = torch.rand(2, 3, 8, 8)
    assert not torch.allclose(relu(x), smooth(x))  # same weights, different activation
    with pytest.raises(UnionRobustError, match=r"relu, softplus"):
        build_model("preact-resnet18", activation="tanh")
    with pytest.raises(UnionRobustError, match=r"softplus_beta"):
        build_model("wide-resnet", activation="softplus", softplus_beta=0.0, **small)


def test_state_dict_names_match_common_cifar_codes() -> None:
    """Key names used by RobustBench-style checkpoints load without renaming."""
    wrn = build_model("wide-resnet", depth=10, widen_factor=2).state_dict()
    for key in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.0.bn2.weight",
                "bn1.running_mean", "fc.weight", "fc.bias"):  # fmt: skip
        assert key in wrn
    pre = build_model("preact-resnet18").state_dict()
    for key in ("conv1.weight", "layer2.0.shortcut.0.weight", "layer4.1.bn2.weight", "bn.weight",
                "linear.weight"):  # fmt: skip
        assert key in pre


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(UnionRobustError, match=r"unknown model 'resnet9000'.*small-cnn"):
        build_model("resnet9000")


def test_bad_kwargs_one_line_error() -> None:
    with pytest.raises(UnionRobustError, match=r"does not take argument.*widen_factor") as e:
        build_model("small-cnn", widen_factor=3)
    assert "\n" not in str(e.value)
    with pytest.raises(UnionRobustError, match=r"num_classes"):
        build_model("mlp", num_classes=1)
    with pytest.raises(UnionRobustError, match=r"in_channels"):
        build_model("mlp", in_channels=0)
    with pytest.raises(UnionRobustError, match=r"input_size"):
        build_model("mlp", input_size=(28,))
    with pytest.raises(UnionRobustError, match=r"at least"):
        build_model("lenet", input_size=8)
    with pytest.raises(UnionRobustError, match=r"cannot build"):
        build_model("wide-resnet", widen_factor="wide")


def test_model_kwargs_lists_options() -> None:
    assert model_kwargs("wide-resnet")["depth"] == 28
    assert model_kwargs("preact-resnet18")["activation"] == "relu"


def test_docstrings_cite_a_source() -> None:
    from unionrobust.models import resnet, small

    for cls in (small.MadryMNISTCNN, small.MLP, small.LeNet, small.LeNetV2, small.AllCNN,
                resnet.PreActResNet18, resnet.WideResNet):  # fmt: skip
        assert cls.__doc__ and any(str(y) in cls.__doc__ for y in range(1998, 2023))


def test_normalization_wrapper() -> None:
    torch.manual_seed(0)
    inner = build_model("small-cnn", in_channels=3, input_size=8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    model = with_normalization(inner, mean, std)
    x = torch.rand(4, 3, 8, 8)
    expected = inner((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-6)
    # statistics are not weights: the state dict is the inner one under "model."
    assert set(model.state_dict()) == {f"model.{k}" for k in inner.state_dict()}
    assert model.double()(x.double()).dtype == torch.float64
    with pytest.raises(UnionRobustError, match=r"expects"):
        model(torch.rand(4, 1, 8, 8))


def test_normalize_validation_and_build_option() -> None:
    with pytest.raises(UnionRobustError, match=r"> 0"):
        Normalize(0.5, 0.0)
    with pytest.raises(UnionRobustError, match=r"same length"):
        Normalize((0.1, 0.2), (1.0, 1.0, 1.0))
    scalar = Normalize(0.5, 0.5)
    assert torch.allclose(scalar(torch.ones(1, 3, 2, 2)), torch.ones(1, 3, 2, 2))
    m = build_model("mlp", mean=0.1307, std=0.3081)
    assert isinstance(m, NormalizedModel) and m(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(UnionRobustError, match=r"both mean and std"):
        build_model("mlp", mean=0.5)


def test_small_cnn_learns_embedded_mnist() -> None:
    """Smoke check that the demo net trains: one epoch on 1,000 images beats 70 % on test."""
    import torch.nn.functional as F

    from unionrobust.data import load_embedded_mnist

    torch.manual_seed(0)
    x, y = load_embedded_mnist("train")
    x, y = x[:1000], y[:1000]  # interleaved digits: balanced
    x_test, y_test = load_embedded_mnist("test")
    model = build_model("small-cnn")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for idx in torch.randperm(1000, generator=g).split(25):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model.eval()(x_test).argmax(1) == y_test).float().mean()
    assert acc > 0.7, float(acc)  # reaches ~0.80; chance is 0.1


def test_channels_last_small_cnn_is_the_same_function_and_keeps_its_layout(tmp_path):
    """``channels_last`` changes only the memory format: same outputs and input gradients as
    the channels-first net with the same weights, through a save/load round trip."""
    torch.manual_seed(0)
    first = SmallCNN(10, 1, (28, 28), kernel=5, padding=0, hidden=256).eval()
    last = SmallCNN5(10, 1, (28, 28)).eval()
    assert last.channels_last and not first.channels_last
    path = save_weights(first, tmp_path / "w.safetensors")
    load_weights(last, path)
    weight = last.features[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and weight.dim() == 4
    x = torch.rand(6, 1, 28, 28, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_first, out_last = first(x), last(x2)
    torch.testing.assert_close(out_last, out_first, rtol=1e-5, atol=1e-5)
    out_first.sum().backward()
    out_last.sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-6)
    # saved weights are plain contiguous tensors that a channels-first net loads unchanged
    load_weights(first, save_weights(last, tmp_path / "back.safetensors"))
    torch.testing.assert_close(first(x), last(x2), rtol=1e-5, atol=1e-5)
    rgb = SmallCNN(10, 3, (32, 32), channels_last=True).eval()
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 10)
