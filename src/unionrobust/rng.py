"""Counter-based random numbers keyed by example.

Attacks draw their randomness from ``(seed, example_id, counter)`` through an integer hash rather than
from a stateful generator. An example therefore gets the same random start and the same random
sparsity whatever batch it is in, so the evaluation cascade, resumed runs and sharded (distributed)
runs give exactly the verdicts of one uninterrupted pass over the data. All ops are vectorised
tensor ops on the keys' device; nothing loops over examples.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash on int64 tensors holding values in [0, 2**32).

    Multiplications are split into 16-bit halves so no intermediate leaves int64's range.
    """

    def mul(a: torch.Tensor, c: int) -> torch.Tensor:
        lo, hi = c & 0xFFFF, c >> 16
        return ((a * lo) + (((a * hi) & 0xFFFF) << 16)) & _MASK32

    h = h ^ (h >> 16)
    h = mul(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = mul(h, 0xC2B2AE35)
    h = h ^ (h >> 16)
    return h


def keyed_bits(seed: int, example_ids: torch.Tensor, counter: int, numel: int) -> torch.Tensor:
    """Return int64 hash values in [0, 2**32) of shape ``(B, numel)``.

    ``example_ids`` is a 1-D integer tensor; ``counter`` distinguishes successive draws
    (restart index, iteration, purpose) for the same example.
    """
    ids = example_ids.to(torch.int64).reshape(-1, 1) & _MASK32
    base = _mix32((ids * 0x9E37 + (seed & _MASK32)) & _MASK32)
    base = _mix32(base ^ _mix32(torch.full_like(base, counter & _MASK32)))
    idx = torch.arange(numel, device=ids.device, dtype=torch.int64).reshape(1, -1)
    return _mix32((_mix32(base ^ _mix32(idx & _MASK32)) + idx) & _MASK32)


def keyed_uniform(
    seed: int,
    example_ids: torch.Tensor,
    counter: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) samples of shape ``(B, *shape)``, a pure function of its arguments."""
    numel = 1
    for s in shape:
        numel *= s
    bits = keyed_bits(seed, example_ids, counter, numel) >> 8  # 24 bits
    u = bits.to(dtype) * (1.0 / (1 << 24))
    return u.reshape(example_ids.shape[0], *shape)


def keyed_normal(
    seed: int,
    example_ids: torch.Tensor,
    counter: int,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal samples (Box-Muller) keyed like :func:`keyed_uniform`."""
    u1 = keyed_uniform(seed, example_ids, 2 * counter, shape, torch.float64)
    u2 = keyed_uniform(seed, example_ids, 2 * counter + 1, shape, torch.float64)
    r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]
    return (r * torch.cos(2 * torch.pi * u2)).to(dtype)


def keyed_randint(
    seed: int, example_ids: torch.Tensor, counter: int, low: int, high: int
) -> torch.Tensor:
    """One integer per example, uniform in ``[low, high]`` (inclusive), shape ``(B,)``."""
    span = high - low + 1
    bits = keyed_bits(seed, example_ids, counter, 1).reshape(-1)
    return low + torch.remainder(bits, span)


def default_ids(batch: int, device: torch.device | str) -> torch.Tensor:
    """The ids used when a caller gives none: 0..batch-1."""
    return torch.arange(batch, device=device, dtype=torch.int64)


class KeyedRandom:
    """Random draws for a batch, keyed by ``(seed, example id, counter)``.

    Pass one to threat models' ``random_init`` and ``step``; ``subset`` keeps the keys of the
    examples that remain when an attack shrinks its batch.
    """

    def __init__(self, seed: int, ids: torch.Tensor) -> None:
        self.seed = int(seed)
        self.ids = ids.to(torch.int64)

    @classmethod
    def for_batch(
        cls, seed: int, batch: int, device: torch.device | str, ids: torch.Tensor | None = None
    ) -> KeyedRandom:
        return cls(seed, default_ids(batch, device) if ids is None else ids.to(device))

    def subset(self, index: torch.Tensor) -> KeyedRandom:
        """Keys of ``ids[index]`` (a bool mask or an index tensor)."""
        return KeyedRandom(self.seed, self.ids[index])

    def uniform(self, counter: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        return keyed_uniform(self.seed, self.ids, counter, tuple(shape), dtype)

    def normal(self, counter: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        return keyed_normal(self.seed, self.ids, counter, tuple(shape), dtype)

    def randint(self, counter: int, low: int, high: int) -> torch.Tensor:
        return keyed_randint(self.seed, self.ids, counter, low, high)
