"""Datasets: the embedded MNIST subset, MNIST/CIFAR-10/CIFAR-10-C/image folders from disk."""

from unionrobust.data.arrays import ImageArrayDataset, as_tensors, loader, subset
from unionrobust.data.datasets import DATASETS, dataset_names, get_dataset
from unionrobust.data.embedded import load_embedded_mnist
from unionrobust.data.load import load_data

__all__ = [
    "DATASETS",
    "ImageArrayDataset",
    "as_tensors",
    "dataset_names",
    "get_dataset",
    "load_data",
    "load_embedded_mnist",
    "loader",
    "subset",
]
