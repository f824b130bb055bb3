"""On-disk formats, written by the tests: MNIST IDX, CIFAR-10 binary/python, CIFAR-10-C, images."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from unionrobust.data import as_tensors, get_dataset
from unionrobust.data.formats import read_cifar_binary, read_idx
from unionrobust.errors import UnionRobustError


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path: Path, compress: bool) -> None:
    ext = ".gz" if compress else ""
    for split, prefix, n in (("train", "train", 6), ("test", "t10k", 4)):
        images, labels = _mnist_arrays(n, seed=n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)
        x, y = as_tensors(get_dataset("mnist", split=split, root=tmp_path))
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
        assert y.tolist() == labels.tolist()


def test_mnist_torchvision_layout_and_env_root(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images, labels = _mnist_arrays(3, seed=0)
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    monkeypatch.setenv("UNIONROBUST_DATA", str(tmp_path))
    assert len(get_dataset("mnist")) == 3


def test_mnist_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("UNIONROBUST_DATA", raising=False)
    with pytest.raises(UnionRobustError, match=r"needs a local folder.*t10k-images-idx3-ubyte"):
        get_dataset("mnist")
    with pytest.raises(UnionRobustError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found"):
        get_dataset("mnist", root=tmp_path)
    with pytest.raises(UnionRobustError, match="torchvision"):
        get_dataset("mnist", root=tmp_path, download=True)
    images, labels = _mnist_arrays(3, seed=0)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2])
    with pytest.raises(UnionRobustError, match="do not form"):
        get_dataset("mnist", root=tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(UnionRobustError, match=r"t10k-labels-idx1-ubyte.*truncated"):
        read_idx(bad)
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(UnionRobustError, match="bad magic"):
        read_idx(bad)


def _cifar_records(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    rows = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return rows.tobytes(), images, labels


def test_cifar10_binary(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    data, _, labels = _cifar_records(5, seed=1)
    (folder / "test_batch.bin").write_bytes(data)
    ds = get_dataset("cifar10", root=tmp_path)
    x, y = as_tensors(ds)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == labels.tolist()
    # record layout: label byte, then 1024 red, 1024 green, 1024 blue bytes (row-major)
    assert [round(float(v) * 255) for v in x[0, :, 0, 1]] == [data[2], data[1026], data[2050]]
    assert ds.classes[0] == "airplane"
    for i in range(1, 6):
        d, _, _ = _cifar_records(2, seed=10 + i)
        (folder / f"data_batch_{i}.bin").write_bytes(d)
    assert len(get_dataset("cifar10", split="train", root=folder)) == 10
    (folder / "test_batch.bin").write_bytes(data[:-5])
    with pytest.raises(UnionRobustError, match=r"test_batch\.bin.*multiple of 3073"):
        get_dataset("cifar10", root=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnionRobustError, match=r"test_batch\.bin not found.*binary version"):
        get_dataset("cifar10", root=empty)
    with pytest.raises(UnionRobustError, match="labels above 9"):
        bad = tmp_path / "bad.bin"
        bad.write_bytes(bytes([12]) + bytes(3072))
        read_cifar_binary(bad)


def test_cifar10_python_version_with_restricted_unpickler(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images = np.arange(2 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [3, 9], b"data": images}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    x, y = as_tensors(get_dataset("cifar10", root=tmp_path))
    assert y.tolist() == [3, 9]
    assert torch.equal(x.reshape(2, -1), torch.from_numpy(images).float() / 255)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar10_python_refuses_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    evil = {b"labels": [1], b"data": np.zeros((1, 3072), np.uint8), b"x": _Evil(marker)}
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnionRobustError, match=r"refus.*getattr.*binary version"):
        get_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    pickle.loads((folder / "test_batch").read_bytes())  # control: plain pickle runs the code
    assert marker.exists()


def _fake_cifar10c(folder: Path, rows: int = 3) -> np.ndarray:
    """5 severities x ``rows`` images; pixel value = severity * 10 + row (to check slicing)."""
    sev = np.repeat(np.arange(1, 6), rows)
    idx = np.tile(np.arange(rows), 5)
    values = (sev * 10 + idx).astype(np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (5 * rows, 32, 32, 3)).copy()
    images[:, 0, 1, 1] = 200  # mark (row 0, column 1, green) to check the HWC -> CHW transpose
    np.save(folder / "fog.npy", images)
    np.save(folder / "labels.npy", (idx % 10).astype(np.int64))
    return values


def test_cifar10c_slices(tmp_path: Path) -> None:
    _fake_cifar10c(tmp_path)
    for severity in range(1, 6):
        x, y = as_tensors(get_dataset(f"cifar10c:fog:{severity}", root=tmp_path))
        assert x.shape == (3, 3, 32, 32)
        assert [round(float(v) * 255) for v in x[:, 0, 5, 5]] == [
            severity * 10 + i for i in range(3)
        ]
        assert y.tolist() == [0, 1, 2]
        assert torch.all(x[:, 1, 0, 1] == 200 / 255) and torch.all(x[:, 0, 0, 1] < 200 / 255)
    ds = get_dataset("cifar10c", root=tmp_path, corruption="fog", severity=2)
    assert round(float(ds[0][0][0, 5, 5]) * 255) == 20


def test_cifar10c_errors(tmp_path: Path) -> None:
    _fake_cifar10c(tmp_path)
    with pytest.raises(UnionRobustError, match=r"unknown CIFAR-10-C corruption 'smog'.*zoom_blur"):
        get_dataset("cifar10c:smog:1", root=tmp_path)
    with pytest.raises(UnionRobustError, match=r"1\.\.5"):
        get_dataset("cifar10c:fog:6", root=tmp_path)
    with pytest.raises(UnionRobustError, match=r"1\.\.5"):
        get_dataset("cifar10c:fog:two", root=tmp_path)
    with pytest.raises(UnionRobustError, match="needs a corruption"):
        get_dataset("cifar10c", root=tmp_path)
    with pytest.raises(UnionRobustError, match=r"snow\.npy.*not found"):
        get_dataset("cifar10c:snow:1", root=tmp_path)
    with pytest.raises(UnionRobustError, match="only a 'test' split"):
        get_dataset("cifar10c:fog:1", split="train", root=tmp_path)
    with pytest.raises(UnionRobustError, match="too many"):
        get_dataset("cifar10c:fog:1:extra", root=tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(UnionRobustError, match="multiple of 5"):
        get_dataset("cifar10c:fog:1", root=tmp_path)
    np.save(tmp_path / "frost.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(UnionRobustError, match=r"frost\.npy.*not a readable"):
        get_dataset("cifar10c:frost:1", root=tmp_path)


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    for label, cls in enumerate(["cat", "dog"]):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(2):
            arr = np.full((6, 5), 40 * label + 10 * i, np.uint8)
            Image.fromarray(arr, mode="L").save(tmp_path / "test" / cls / f"{i}.png")
    ds = get_dataset("imagefolder", root=tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = as_tensors(ds)
    assert x.shape == (4, 1, 6, 5) and y.tolist() == [0, 0, 1, 1]
    assert [round(float(v) * 255) for v in x[:, 0, 0, 0]] == [0, 10, 40, 50]
    rgb = get_dataset("imagefolder", root=tmp_path, channels=3)
    assert rgb[0][0].shape == (3, 6, 5)
    Image.fromarray(np.zeros((7, 7), np.uint8), mode="L").save(tmp_path / "test" / "dog" / "2.png")
    with pytest.raises(UnionRobustError, match="one size"):
        as_tensors(get_dataset("imagefolder", root=tmp_path))
    with pytest.raises(UnionRobustError, match="no class folders"):
        get_dataset("imagefolder", root=tmp_path / "test" / "cat")
