"""Checkpoints: atomic commit by pointer, verified loads, clear errors, RNG round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from unionrobust.errors import UnionRobustError
from unionrobust.training import checkpoint as ckpt


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3, 4), value), "b": torch.arange(4.0) + value}


def _state(step: int) -> dict:
    return {"step": step, "optimizer": {"state": {0: {"m": torch.ones(2) * step}}}, "best": None}


def test_save_then_load_round_trip(tmp_path):
    ckpt.save_checkpoint(tmp_path, "last", _weights(1.0), _state(5), epoch=1, step=5)
    w, s, pointer = ckpt.load_checkpoint(tmp_path, "last")
    assert torch.equal(w["w"], _weights(1.0)["w"]) and torch.equal(w["b"], _weights(1.0)["b"])
    assert s["step"] == 5 and torch.equal(s["optimizer"]["state"][0]["m"], torch.ones(2) * 5)
    assert pointer["epoch"] == 1 and pointer["step"] == 5
    # a second save replaces the first and removes its files
    ckpt.save_checkpoint(tmp_path, "last", _weights(2.0), _state(9), epoch=2, step=9)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last-000000009.safetensors", "last-000000009.state.pt", "last.json"]
    w, s, _ = ckpt.load_checkpoint(tmp_path, "last")
    assert float(w["w"][0, 0]) == 2.0 and s["step"] == 9


@pytest.mark.parametrize("where", ["weights", "state", "pointer"])
def test_failing_write_keeps_the_previous_good_checkpoint(tmp_path, monkeypatch, where):
    ckpt.save_checkpoint(tmp_path, "last", _weights(1.0), _state(5), epoch=1, step=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if where == "weights":
        monkeypatch.setattr(ckpt, "weights_bytes", boom)
    elif where == "state":
        monkeypatch.setattr(ckpt.safetensors.torch, "load", boom)  # verification fails
    else:
        monkeypatch.setattr(ckpt, "atomic_write_text", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, "last", _weights(2.0), _state(9), epoch=2, step=9)
    monkeypatch.undo()
    w, s, pointer = ckpt.load_checkpoint(tmp_path, "last")
    assert float(w["w"][0, 0]) == 1.0 and s["step"] == 5 and pointer["step"] == 5
    for name, data in before.items():  # the good files are untouched
        assert (tmp_path / name).read_bytes() == data
    assert not list(tmp_path.glob("*.tmp"))  # no temp files left behind


def test_corrupt_or_missing_checkpoint_gives_one_line_error(tmp_path):
    with pytest.raises(UnionRobustError, match="no 'last' checkpoint") as err:
        ckpt.load_checkpoint(tmp_path, "last")
    assert "\n" not in str(err.value)
    ckpt.save_checkpoint(tmp_path, "last", _weights(1.0), _state(5), epoch=1, step=5)
    pointer = json.loads((tmp_path / "last.json").read_text())
    wfile = tmp_path / pointer["weights"]
    data = wfile.read_bytes()
    wfile.write_bytes(data[: len(data) // 2])  # truncated by a crash of something else
    with pytest.raises(ckpt.CheckpointError, match="is corrupt") as err:
        ckpt.load_checkpoint(tmp_path, "last")
    assert "\n" not in str(err.value)
    wfile.write_bytes(data)
    (tmp_path / pointer["state"]).unlink()
    with pytest.raises(ckpt.CheckpointError, match="cannot read"):
        ckpt.load_checkpoint(tmp_path, "last")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match=r"pointer .* is corrupt"):
        ckpt.load_checkpoint(tmp_path, "last")


class _Evil:
    """Any class: unpickling it would run code of the file's choosing."""


def test_state_file_is_read_with_weights_only(tmp_path):
    """A state file holding an arbitrary Python object is refused, not unpickled."""

    ckpt.save_checkpoint(tmp_path, "last", _weights(1.0), _state(1), epoch=0, step=1)
    pointer = json.loads((tmp_path / "last.json").read_text())
    path = tmp_path / pointer["state"]
    torch.save({"x": _Evil()}, path)
    pointer["sha256"]["state"] = ckpt._sha256(path.read_bytes())
    (tmp_path / "last.json").write_text(json.dumps(pointer))
    with pytest.raises(ckpt.CheckpointError, match="is corrupt"):
        ckpt.load_checkpoint(tmp_path, "last")


def test_rng_state_round_trip(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    state = ckpt.rng_state()
    ckpt.save_checkpoint(tmp_path, "last", _weights(0.0), {"rng": state}, epoch=0, step=0)
    expect = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    _, loaded, _ = ckpt.load_checkpoint(tmp_path, "last")
    ckpt.set_rng_state(loaded["rng"])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expect[0], got[0]) and expect[1:] == got[1:]
