"""Weight files: safetensors/torch round trips, wrappers, clear errors, no pickle code runs."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch

from unionrobust.errors import UnionRobustError
from unionrobust.models import (
    build_model,
    load_model,
    load_weights,
    save_weights,
    with_normalization,
)


def _wrn(seed: int):
    """A tiny WideResNet with BatchNorm buffers that differ from their defaults."""
    torch.manual_seed(seed)
    model = build_model("wide-resnet", depth=10, widen_factor=1, input_size=8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(seed + 7)
    return model


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    src, dst = _wrn(0), _wrn(1)
    assert not _same(src, dst)
    path = save_weights(src, tmp_path / "sub" / "w.safetensors")
    assert path.is_file() and os.listdir(path.parent) == ["w.safetensors"]  # no temp files left
    result = load_weights(dst, path)
    assert _same(src, dst) and result.missing == [] and result.unexpected == []
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_save_overwrites_atomically_and_accepts_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(_wrn(0), path)
    save_weights(_wrn(2).state_dict(), path)
    dst = _wrn(1)
    load_weights(dst, path)
    assert _same(dst, _wrn(2))
    with pytest.raises(UnionRobustError, match=r"only tensors"):
        save_weights({"a": torch.zeros(1), "epoch": 3}, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_save_handles_shared_storage(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    path = save_weights({"a": w, "b": w, "c": w[:2]}, tmp_path / "tied.safetensors")
    model = torch.nn.Module()
    model.register_buffer("a", torch.zeros(4, 4))
    model.register_buffer("b", torch.zeros(4, 4))
    model.register_buffer("c", torch.zeros(2, 4))
    load_weights(model, path)
    assert torch.equal(model.a, w) and torch.equal(model.c, w[:2])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd, "acc": 0.5},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model_state_dict", "model", "net", "module", "nested-module"],
)
def test_torch_file_wrappers(tmp_path: Path, wrap) -> None:
    src, dst = _wrn(0), _wrn(1)
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(src.state_dict()), path)
    load_weights(dst, path)
    assert _same(src, dst)


def test_normalized_model_and_bare_files_interchange(tmp_path: Path) -> None:
    bare = _wrn(0)
    save_weights(bare, tmp_path / "bare.safetensors")
    wrapped = with_normalization(_wrn(1), 0.5, 0.25)
    load_weights(wrapped, tmp_path / "bare.safetensors")
    assert _same(wrapped.model, bare)
    save_weights(wrapped, tmp_path / "wrapped.safetensors")
    other = _wrn(3)
    load_weights(other, tmp_path / "wrapped.safetensors")
    assert _same(other, bare)


def test_old_files_without_batch_counters_load(tmp_path: Path) -> None:
    src = _wrn(0)
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    dst = _wrn(1)
    load_weights(dst, tmp_path / "old.pth")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


def test_load_model_builds_loads_and_evals(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = build_model("small-cnn", num_classes=4)
    save_weights(src, tmp_path / "m.safetensors")
    model = load_model("small-cnn", tmp_path / "m.safetensors", num_classes=4)
    assert not model.training and _same(model, src)
    normed = load_model("small-cnn", tmp_path / "m.safetensors", num_classes=4, mean=0.5, std=0.5)
    assert _same(normed.model, src)
    with pytest.raises(UnionRobustError, match=r"m.safetensors"):
        load_model("small-cnn", tmp_path / "m.safetensors", num_classes=10)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnionRobustError, match=r"nope.safetensors.*not found"):
        load_weights(_wrn(0), tmp_path / "nope.safetensors")
    with pytest.raises(UnionRobustError, match=r"not a file"):
        load_weights(_wrn(0), tmp_path)


@pytest.mark.parametrize("name", ["junk.pt", "junk.safetensors", "junk.bin"])
@pytest.mark.parametrize("seed", range(6))
def test_corrupt_files(tmp_path: Path, name: str, seed: int) -> None:
    path = tmp_path / name
    noise = random.Random(seed).randbytes(300)
    path.write_bytes(noise if seed % 2 else b"\x80\x02" + noise)  # odd: raw, even: pickle-like
    with pytest.raises(UnionRobustError, match=name) as e:
        load_weights(_wrn(0), path)
    assert "\n" not in str(e.value)


def test_truncated_files(tmp_path: Path) -> None:
    src = _wrn(0)
    for name, writer in (("t.safetensors", save_weights), ("t.pt", torch.save)):
        path = tmp_path / name
        writer(src.state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(UnionRobustError, match=name):
            load_weights(_wrn(1), path)


def test_shape_mismatch_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_weights(build_model("small-cnn", num_classes=10), tmp_path / "ten.safetensors")
    with pytest.raises(UnionRobustError, match=r"ten\.safetensors.*shape.*classifier\.2\.weight"):
        load_weights(build_model("small-cnn", num_classes=5), tmp_path / "ten.safetensors")
    with pytest.raises(UnionRobustError, match=r"shape"):  # shapes are checked even when lenient
        load_weights(
            build_model("small-cnn", num_classes=5), tmp_path / "ten.safetensors", strict=False
        )


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    src = _wrn(0).state_dict()
    partial = {k: v for k, v in src.items() if k != "fc.bias"}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(UnionRobustError, match=r"partial\.pt.*1 missing key.*fc\.bias"):
        load_weights(_wrn(1), tmp_path / "partial.pt")
    dst = _wrn(1)
    result = load_weights(dst, tmp_path / "partial.pt", strict=False)
    assert result.missing == ["fc.bias"] and torch.equal(dst.fc.weight, src["fc.weight"])
    extra = {**src, "head.weight": torch.zeros(3)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(UnionRobustError, match=r"unexpected key.*head.weight"):
        load_weights(_wrn(1), tmp_path / "extra.pt")
    assert load_weights(_wrn(1), tmp_path / "extra.pt", strict=False).unexpected == ["head.weight"]


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "acc": 0.9}, tmp_path / "meta.pt")
    with pytest.raises(UnionRobustError, match=r"meta\.pt.*no state dict.*epoch"):
        load_weights(_wrn(0), tmp_path / "meta.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UnionRobustError, match=r"list"):
        load_weights(_wrn(0), tmp_path / "list.pt")


class _Evil:
    """Unpickling this object creates the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_code_is_never_run(tmp_path: Path) -> None:
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil_raw.pkl"
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.zeros(1), "x": _Evil(marker)}, zipped)
    raw.write_bytes(pickle.dumps({"w": torch.zeros(1), "x": _Evil(marker)}, protocol=2))
    for path in (zipped, raw):
        with pytest.raises(UnionRobustError, match=rf"{path.name}.*refused"):
            load_weights(_wrn(0), path)
        assert not marker.exists()
    raw4 = tmp_path / "evil_p4.pkl"  # protocol 4: refused by the unpickler at another opcode
    raw4.write_bytes(pickle.dumps({"x": _Evil(marker)}, protocol=4))
    with pytest.raises(UnionRobustError, match=r"evil_p4.pkl.*refused"):
        load_weights(_wrn(0), raw4)
    assert not marker.exists()
    # control: the same kind of file really does run code when loaded unsafely
    control_marker = tmp_path / "CONTROL"
    control = tmp_path / "control.pt"
    torch.save({"x": _Evil(control_marker)}, control)
    torch.load(control, weights_only=False)
    assert control_marker.exists()
