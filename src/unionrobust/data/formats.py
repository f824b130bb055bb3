"""Parsers for on-disk dataset formats: MNIST IDX, CIFAR-10 binary/python, CIFAR-10-C .npy.

Nothing here uses plain ``pickle``: the CIFAR-10 python batches are read with an unpickler
that only rebuilds numpy arrays, and .npy files are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np

from unionrobust.errors import UnionRobustError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UnionRobustError(f"cannot read {str(path)!r}: {exc}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format), gzip-compressed or not."""
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UnionRobustError(f"{str(p)!r} is not an IDX file (bad magic number)")
    ndim = data[3]
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise UnionRobustError(f"{str(p)!r} is not an IDX file (bad header)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise UnionRobustError(
            f"{str(p)!r} is truncated or corrupt: header says {dims} ({expected} bytes), "
            f"found {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    p = Path(path)
    data = _read_bytes(p)
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise UnionRobustError(
            f"{str(p)!r} is not a CIFAR-10 binary batch: size {len(data)} is not a multiple of "
            f"{CIFAR_RECORD} bytes"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = rows[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UnionRobustError(f"{str(p)!r}: labels above 9, not a CIFAR-10 binary batch")
    return rows[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts, lists, strings and numpy arrays, and nothing else."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 location
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_cifar_python(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the CIFAR-10 *python* version, read with the array-only unpickler."""
    p = Path(path)
    data = _read_bytes(p)
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UnionRobustError(
            f"{str(p)!r} refused or unreadable as a CIFAR-10 python batch ({exc}); "
            "use the binary version (cifar-10-batches-bin) instead"
        ) from None
    if not isinstance(obj, dict):
        raise UnionRobustError(f"{str(p)!r} is not a CIFAR-10 python batch (not a dict)")
    get = lambda k: obj.get(k.encode(), obj.get(k))  # noqa: E731
    images, labels = get("data"), get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or labels is None:
        raise UnionRobustError(f"{str(p)!r} is not a CIFAR-10 python batch (no uint8 'data')")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or images.ndim != 2 or images.shape[1] != 3072:
        raise UnionRobustError(f"{str(p)!r} is not a CIFAR-10 python batch (bad data/labels)")
    if len(labels) != len(images) or (len(labels) and labels.max() > 9):
        raise UnionRobustError(f"{str(p)!r} is not a CIFAR-10 python batch (bad labels)")
    return images.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def load_npy(path: str | Path, mmap: bool = True) -> np.ndarray:
    """``np.load`` without pickle (memory-mapped by default), with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise UnionRobustError(f"file {str(p)!r} not found")
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UnionRobustError(f"{str(p)!r} is not a readable .npy array ({exc})") from None
