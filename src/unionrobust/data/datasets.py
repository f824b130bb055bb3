"""Dataset registry: ``get_dataset(spec, split, root)`` -> items ``(x in [0, 1] CHW, int y)``.

Specs: ``mnist-embedded`` (default, ships with the package), ``mnist`` (IDX files),
``cifar10`` (binary batches), ``cifar10c`` (``cifar10c:<corruption>:<severity>``),
``imagefolder`` (folder of class folders). Nothing is downloaded unless asked for.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from unionrobust.data.arrays import ImageArrayDataset
from unionrobust.data.embedded import embedded_uint8
from unionrobust.data.formats import (
    load_npy,
    read_cifar_binary,
    read_cifar_python,
    read_idx,
)
from unionrobust.errors import UnionRobustError, unknown_name

SPLITS = ("train", "test")
DATA_ENV = "UNIONROBUST_DATA"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10C_CORRUPTIONS = (
    "brightness", "contrast", "defocus_blur", "elastic_transform", "fog", "frost",
    "gaussian_blur", "gaussian_noise", "glass_blur", "impulse_noise", "jpeg_compression",
    "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise",
    "zoom_blur",
)  # fmt: skip


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)


def _root(root: str | os.PathLike | None, spec: str, hint: str) -> Path:
    """The data folder: ``root``, else ``$UNIONROBUST_DATA``; error with a hint otherwise."""
    if root is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise UnionRobustError(
                f"dataset {spec!r} needs a local folder: pass root=FOLDER (--root FOLDER; "
                f"data.root in a training config) or set {DATA_ENV}; {hint}"
            )
        root = env
    path = Path(root).expanduser()
    if not path.is_dir():
        raise UnionRobustError(f"dataset {spec!r}: folder {str(path)!r} does not exist; {hint}")
    return path


def _find(root: Path, names: list[str], subdirs: tuple[str, ...]) -> Path | None:
    for sub in ("", *subdirs):
        for name in names:
            p = root / sub / name if sub else root / name
            if p.is_file():
                return p
    return None


def _mnist_embedded(split: str, root, **options) -> Dataset:
    _no_options("mnist-embedded", options)
    _check_split(split)
    x, y = embedded_uint8(split)
    return ImageArrayDataset(x, y, name=f"mnist-embedded/{split}")


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SUBDIRS = ("MNIST/raw", "mnist", "MNIST", "raw")


def _mnist(split: str, root, download: bool = False, **options) -> Dataset:
    _no_options("mnist", options)
    _check_split(split)
    img_name, lab_name = _MNIST_FILES[split]
    hint = f"put {img_name}[.gz] and {lab_name}[.gz] (from the MNIST distribution) in that folder"
    if download:
        if importlib.util.find_spec("torchvision") is None:
            raise UnionRobustError(
                "download=True needs torchvision (pip install torchvision); otherwise " + hint
            )
        if root is None:
            raise UnionRobustError("download=True needs root=FOLDER to download into")
        import torchvision  # optional dependency, checked above

        torchvision.datasets.MNIST(str(root), train=split == "train", download=True)
    folder = _root(root, "mnist", hint)

    def locate(base: str) -> Path:
        variants = [
            base,
            base + ".gz",
            base.replace("-idx", ".idx"),
            base.replace("-idx", ".idx") + ".gz",
        ]
        p = _find(folder, variants, _MNIST_SUBDIRS)
        if p is None:
            raise UnionRobustError(
                f"dataset 'mnist': {base}[.gz] not found under {str(folder)!r}; {hint}"
            )
        return p

    img_path, lab_path = locate(img_name), locate(lab_name)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UnionRobustError(
            f"dataset 'mnist': {img_path.name} {images.shape} and {lab_path.name} "
            f"{labels.shape} do not form an image/label pair"
        )
    if images.dtype != np.uint8:
        raise UnionRobustError(f"dataset 'mnist': {img_path.name} must hold unsigned bytes")
    return ImageArrayDataset(images[:, None], labels.astype(np.int64), name=f"mnist/{split}")


_CIFAR_BIN = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
_CIFAR_PY = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _cifar10(split: str, root, **options) -> Dataset:
    _no_options("cifar10", options)
    _check_split(split)
    hint = "put the binary version (folder cifar-10-batches-bin from cifar-10-binary.tar.gz) there"
    folder = _root(root, "cifar10", hint)
    for sub, files, reader in (
        ("cifar-10-batches-bin", _CIFAR_BIN[split], read_cifar_binary),
        ("cifar-10-batches-py", _CIFAR_PY[split], read_cifar_python),
    ):
        base = next(
            (d for d in (folder, folder / sub) if all((d / f).is_file() for f in files)), None
        )
        if base is None:
            continue
        parts = [reader(base / f) for f in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return ImageArrayDataset(images, labels, CIFAR10_CLASSES, name=f"cifar10/{split}")
    raise UnionRobustError(
        f"dataset 'cifar10': {', '.join(_CIFAR_BIN[split])} not found under {str(folder)!r}; {hint}"
    )


def _parse_severity(severity) -> int:
    try:
        s = int(severity)
    except (TypeError, ValueError):
        s = -1
    if s < 1 or s > 5 or str(s) != str(severity).strip():
        raise UnionRobustError(f"CIFAR-10-C severity must be an integer 1..5, got {severity!r}")
    return s


def _cifar10c(
    split: str, root, corruption: str | None = None, severity: int | str = 5, **options
) -> Dataset:
    _no_options("cifar10c", options)
    if split != "test":
        raise UnionRobustError(f"CIFAR-10-C has only a 'test' split, got {split!r}")
    if corruption is None:
        raise UnionRobustError(
            "dataset 'cifar10c' needs a corruption, e.g. 'cifar10c:gaussian_noise:3'; valid: "
            + ", ".join(CIFAR10C_CORRUPTIONS)
        )
    if corruption not in CIFAR10C_CORRUPTIONS:
        raise unknown_name("CIFAR-10-C corruption", corruption, CIFAR10C_CORRUPTIONS)
    sev = _parse_severity(severity)
    hint = "put the CIFAR-10-C .npy files (<corruption>.npy and labels.npy) there"
    folder = _root(root, "cifar10c", hint)
    if not (folder / "labels.npy").is_file() and (folder / "CIFAR-10-C").is_dir():
        folder = folder / "CIFAR-10-C"
    images = load_npy(folder / f"{corruption}.npy")
    labels = load_npy(folder / "labels.npy", mmap=False)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise UnionRobustError(
            f"{corruption}.npy must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}"
        )
    if len(images) != len(labels) or len(images) % 5:
        raise UnionRobustError(
            f"{corruption}.npy has {len(images)} rows and labels.npy {len(labels)}; expected the "
            "same multiple of 5 (5 severities)"
        )
    rows = len(images) // 5  # 10,000 for the real files
    sl = slice((sev - 1) * rows, sev * rows)
    chw = np.ascontiguousarray(np.asarray(images[sl]).transpose(0, 3, 1, 2))
    return ImageArrayDataset(
        chw, labels[sl].astype(np.int64), CIFAR10_CLASSES, name=f"cifar10c/{corruption}/{sev}"
    )


_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".webp"}


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` files read lazily with Pillow; classes sorted by folder name."""

    def __init__(self, root: Path, channels: int | None = None, name: str = "imagefolder") -> None:
        try:
            from PIL import Image
        except ImportError:
            raise UnionRobustError(
                "dataset 'imagefolder' needs Pillow: pip install pillow"
            ) from None
        self._image = Image
        self.classes = sorted(
            d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not self.classes:
            raise UnionRobustError(f"dataset 'imagefolder': no class folders in {str(root)!r}")
        self.samples: list[tuple[Path, int]] = []
        for label, cls in enumerate(self.classes):
            files = sorted(
                p for p in (root / cls).iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTS
            )
            self.samples += [(p, label) for p in files]
        if not self.samples:
            raise UnionRobustError(f"dataset 'imagefolder': no PNG/JPEG images under {str(root)!r}")
        if channels is None:
            with self._open(self.samples[0][0]) as im:
                channels = 1 if im.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        if channels not in (1, 3):
            raise UnionRobustError(f"imagefolder channels must be 1 or 3, got {channels!r}")
        self.mode = "L" if channels == 1 else "RGB"
        self.name = name
        self._size: tuple[int, int] | None = None

    def _open(self, path: Path):
        try:
            return self._image.open(path)
        except OSError as exc:
            raise UnionRobustError(f"cannot read image {str(path)!r}: {exc}") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with self._open(path) as im:
            arr = np.array(im.convert(self.mode), dtype=np.uint8)
        if self._size is None:
            self._size = arr.shape[:2]
        elif arr.shape[:2] != self._size:
            raise UnionRobustError(
                f"image {str(path)!r} is {arr.shape[1]}x{arr.shape[0]}, others are "
                f"{self._size[1]}x{self._size[0]}; resize the folder to one size"
            )
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(chw)).float().div_(255.0), label


def _imagefolder(split: str, root, channels: int | None = None, **options) -> Dataset:
    _no_options("imagefolder", options)
    _check_split(split)
    folder = _root(root, "imagefolder", "it must contain one sub-folder of images per class")
    if (folder / split).is_dir():
        folder = folder / split
    return ImageFolderDataset(folder, channels, name=f"imagefolder/{split}")


def _no_options(spec: str, options: dict) -> None:
    if options:
        raise UnionRobustError(
            f"dataset {spec!r} does not take option(s) {', '.join(sorted(options))}"
        )


#: spec name -> builder(split, root, **options)
DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist-embedded": _mnist_embedded,
    "mnist": _mnist,
    "cifar10": _cifar10,
    "cifar10c": _cifar10c,
    "imagefolder": _imagefolder,
}
_POSITIONAL = {"cifar10c": ("corruption", "severity")}


def dataset_names() -> list[str]:
    """Registered dataset spec names, sorted."""
    return sorted(DATASETS)


def get_dataset(
    spec: str = "mnist-embedded",
    split: str = "test",
    root: str | os.PathLike | None = None,
    **options,
) -> Dataset:
    """Dataset of ``(x float32 CHW in [0, 1], int y)`` for ``spec``.

    ``spec`` is a name from :func:`dataset_names`, optionally followed by ``:``-separated
    arguments (``cifar10c:gaussian_noise:3`` = corruption, severity). ``root`` is the local data
    folder (default ``$UNIONROBUST_DATA``); ``options`` are spec-specific (``download`` for mnist,
    ``corruption``/``severity`` for cifar10c, ``channels`` for imagefolder).
    """
    if not isinstance(spec, str):
        raise UnionRobustError(f"dataset spec must be a string, got {type(spec).__name__}")
    name, *args = [s.strip() for s in spec.strip().split(":")]
    if name not in DATASETS:
        raise unknown_name("dataset", name, DATASETS)
    names = _POSITIONAL.get(name, ())
    if len(args) > len(names):
        raise UnionRobustError(
            f"dataset spec {spec!r} has too many ':' arguments (at most {len(names)} for {name})"
        )
    for key, value in zip(names, args, strict=False):
        if key in options:
            raise UnionRobustError(
                f"dataset {name!r}: {key} given twice (in the spec and as option)"
            )
        options[key] = value
    return DATASETS[name](split, root, **options)
