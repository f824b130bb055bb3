"""Embedded MNIST subset, dataset registry and the tensor/subset/loader helpers."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import torch

from unionrobust.data import (
    ImageArrayDataset,
    as_tensors,
    dataset_names,
    get_dataset,
    load_embedded_mnist,
    loader,
    subset,
)
from unionrobust.data.embedded import _raw, embedded_indices
from unionrobust.errors import UnionRobustError


def test_embedded_file_is_small_and_packaged() -> None:
    ref = resources.files("unionrobust.data").joinpath("mnist5000.npz")
    assert ref.is_file()
    with ref.open("rb") as f:
        size = len(f.read())
    assert size < 2_000_000
    images, labels = _raw()
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert images.shape == (5000, 28, 28)


@pytest.mark.parametrize(("split", "n", "per_digit"), [("train", 4000, 400), ("test", 1000, 100)])
def test_embedded_shapes_ranges_balance(split: str, n: int, per_digit: int) -> None:
    x, y = load_embedded_mnist(split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), per_digit))
    # digits interleaved: any prefix of 10k examples holds each digit k times
    assert torch.equal(torch.bincount(y[:50], minlength=10), torch.full((10,), 5))
    # pixels are k/255 exactly (uint8 origin) and the images are real digits (mean ink ~0.13)
    assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)
    assert 0.08 < float(x.mean()) < 0.2


def test_embedded_split_is_per_digit_first_400_last_100() -> None:
    _, labels = _raw()
    train, test = set(embedded_indices("train")), set(embedded_indices("test"))
    assert not train & test and len(train | test) == 5000
    for digit in range(10):
        rows = np.flatnonzero(labels == digit)  # file order within the digit
        assert set(rows[:400]) <= train and set(rows[400:]) <= test
    assert sorted(embedded_indices("all")) == list(range(5000))
    # no train image reappears (byte-identical) in test
    x_tr, _ = load_embedded_mnist("train")
    x_te, _ = load_embedded_mnist("test")
    h_tr = {r.numpy().tobytes() for r in (x_tr * 255).round().to(torch.uint8)}
    h_te = {r.numpy().tobytes() for r in (x_te * 255).round().to(torch.uint8)}
    assert len(h_tr & h_te) <= 2  # MNIST itself has a few near-duplicates; none expected here


def test_embedded_dataset_matches_tensors() -> None:
    ds = get_dataset()  # default spec, split "test"
    assert len(ds) == 1000 and ds.name == "mnist-embedded/test"
    x, y = as_tensors(ds)
    x_ref, y_ref = load_embedded_mnist("test")
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    item_x, item_y = ds[7]
    assert item_x.shape == (1, 28, 28) and item_x.dtype == torch.float32
    assert isinstance(item_y, int) and item_y == int(y_ref[7])
    assert torch.equal(item_x, x_ref[7])
    assert len(get_dataset("mnist-embedded", split="train")) == 4000


def test_bad_names_list_valid_ones() -> None:
    with pytest.raises(UnionRobustError, match=r"unknown dataset 'svhn'.*cifar10.*mnist-embedded"):
        get_dataset("svhn")
    with pytest.raises(UnionRobustError, match=r"unknown split 'val'.*test, train"):
        load_embedded_mnist("val")
    with pytest.raises(UnionRobustError, match="unknown split"):
        get_dataset("mnist-embedded", split="validation")
    with pytest.raises(UnionRobustError, match="does not take"):
        get_dataset("mnist-embedded", corruption="fog")
    assert dataset_names() == sorted(
        ["mnist-embedded", "mnist", "cifar10", "cifar10c", "imagefolder"]
    )


def test_as_tensors_n_and_subsets() -> None:
    ds = get_dataset("mnist-embedded", "test")
    x, y = as_tensors(ds, n=20)
    assert x.shape == (20, 1, 28, 28) and torch.equal(y, load_embedded_mnist("test")[1][:20])
    a, b = subset(ds, 50, seed=3), subset(ds, 50, seed=3)
    assert a.indices == b.indices and len(set(a.indices)) == 50
    assert a.indices == sorted(a.indices)
    assert subset(ds, 50, seed=4).indices != a.indices
    xs, ys = as_tensors(a)
    x_all, y_all = load_embedded_mnist("test")
    assert torch.equal(xs, x_all[a.indices]) and torch.equal(ys, y_all[a.indices])
    nested = subset(a, 10, seed=0)
    xn, _ = as_tensors(nested)
    assert torch.equal(xn, x_all[[a.indices[i] for i in nested.indices]])
    assert subset(ds, None, 0) is ds
    with pytest.raises(UnionRobustError, match="cannot take"):
        subset(ds, 1001, 0)
    with pytest.raises(UnionRobustError, match="non-negative"):
        as_tensors(ds, n=-1)


def test_as_tensors_generic_dataset() -> None:
    data = [(torch.full((1, 2, 2), i / 10), i % 3) for i in range(5)]
    x, y = as_tensors(data)
    assert x.shape == (5, 1, 2, 2) and y.tolist() == [0, 1, 2, 0, 1]


def test_loader_is_seeded() -> None:
    ds = ImageArrayDataset(np.zeros((30, 1, 2, 2), np.uint8), np.arange(30) % 10)
    ds.labels = torch.arange(30)  # make the order observable

    def order(seed: int, shuffle: bool = True) -> list[int]:
        return torch.cat([y for _, y in loader(ds, 7, shuffle=shuffle, seed=seed)]).tolist()

    assert order(0) == order(0) and sorted(order(0)) == list(range(30))
    assert order(0) != order(1)
    assert order(5, shuffle=False) == list(range(30))
    batch_x, _ = next(iter(loader(ds, 7)))
    assert batch_x.shape == (7, 1, 2, 2) and batch_x.dtype == torch.float32
    with pytest.raises(UnionRobustError, match="batch_size"):
        loader(ds, 0)


def test_image_array_dataset_validation() -> None:
    with pytest.raises(UnionRobustError, match=r"\(N, C, H, W\)"):
        ImageArrayDataset(np.zeros((3, 4, 4), np.uint8), [0, 1, 2])
    with pytest.raises(UnionRobustError, match="3 images"):
        ImageArrayDataset(np.zeros((3, 1, 4, 4), np.uint8), [0, 1])
    floats = ImageArrayDataset(torch.full((2, 1, 2, 2), 0.5), [0, 1])
    assert torch.equal(floats[1][0], torch.full((1, 2, 2), 0.5))
