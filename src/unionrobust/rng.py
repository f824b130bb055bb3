"""Counter-based random numbers keyed by example.

Attacks draw their randomness from ``(seed, example_id, counter)`` through an integer hash rather
than from a stateful generator. An example therefore gets the same random start and the same random
sparsity whatever batch it is in, so the evaluation cascade, resumed runs and sharded (distributed)
runs give exactly the verdicts of one uninterrupted pass over the data. All ops are vectorised
tensor ops on the keys' device; nothing loops over examples.
"""

from __future__ import annotations

import functools
import math

import torch

from unionrobust.errors import UnionRobustError, check_seed

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


# --------------------------------------------------------------------------- counter table
#
# THE RULE: one example's draws never collide across uses. A counter value names one draw of
# one example, so two uses (an attack's steps and its random starts, MSD's member choice and the
# spatial worst-of-k draws, a training strategy's attack and its training transforms) that run
# on the same (seed, example id) must never share a counter of the same stream: otherwise their
# "independent" draws are the same bits and one choice predicts the other. Because every draw is
# a function of (seed, example id, counter) only, an example's verdict then does not depend on
# which batch, cascade stage, shard or resumed run it is attacked in (batch-independent
# verdicts). Each use owns the half-open range [start, stop) below and must stay inside it; new
# uses add a row here (``tests/core/test_rng.py`` checks that the ranges are disjoint).

#: per-iteration draws of an attack (restart·steps + t, times K members for MSD; Square's
#: per-step draws; Pointwise's passes from ``STEP_COUNTER + (1 << 20)``)
STEP_COUNTER = 0
#: the per-example β of the affine attacks (``draw=True``)
BETA_COUNTER = 1 << 27
#: random transformations of the min-max domains (step t, domain i: + t·K + i; the
#: transforms' own sub-draws at + 2**20 and + 2**21; the training forward's draw after them)
TRANSFORM_COUNTER = 1 << 28
#: MSD's per-example member choice for a random start (+ restart)
MEMBER_COUNTER = 1 << 29
#: worst-of-k rotation-translation draws (+ draw index); was 2**29 = MEMBER_COUNTER, a real
#: collision (``tests/core/test_rng.py::test_member_and_spatial_draws_no_longer_collide``)
SPATIAL_DRAW_COUNTER = 3 << 28
#: the decision-based boundary search (attacks/decision.py): its blended-noise starts (+ draw)
#: and its gradient-estimation samples (+ 2**10 + step·2**8 + chunk)
DECISION_COUNTER = (3 << 28) + (1 << 24)
#: random starts (+ 4·restart (+ member) for PGD/MSD/DDN, + part for the affine attacks)
INIT_COUNTER = 1 << 30

#: name -> [start, stop): the table every user imports its counters from
COUNTER_RANGES: dict[str, tuple[int, int]] = {
    "step": (STEP_COUNTER, BETA_COUNTER),
    "beta": (BETA_COUNTER, BETA_COUNTER + (1 << 20)),
    "transform": (TRANSFORM_COUNTER, MEMBER_COUNTER),
    "member": (MEMBER_COUNTER, MEMBER_COUNTER + (1 << 20)),
    "spatial-draw": (SPATIAL_DRAW_COUNTER, SPATIAL_DRAW_COUNTER + (1 << 20)),
    "decision": (DECISION_COUNTER, DECISION_COUNTER + (1 << 24)),
    "init": (INIT_COUNTER, 1 << 31),
}

#: stream tags: the same (seed, id, counter) gives unrelated numbers for each kind of draw
STREAM_UNIFORM, STREAM_NORMAL, STREAM_RANDINT = 0, 1, 2


def _key_state(
    seed: int, ids: torch.Tensor, counter: int | torch.Tensor, stream: int
) -> torch.Tensor:
    """The hash state of ``(seed, id, counter, stream)``: ``ids`` a (B, 1) int64 column,
    ``counter`` an int (→ (B, 1)), a (B, 1) column (one counter per row) or a (1, T) / (B, T)
    int64 table of counters (→ (B, T), element for element the same values as calls with one
    counter each)."""
    seed = int(seed)
    if not isinstance(counter, torch.Tensor):
        counter = int(counter)
    h = torch.full_like(ids, _mix32_int(((seed & _MASK32) ^ 0x243F6A88) & _MASK32))
    h = _mix32(h ^ ((seed >> 32) & _MASK32))
    h = _mix32(h ^ (ids & _MASK32))
    h = _mix32(h ^ ((ids >> 32) & _MASK32))
    h = _mix32(h ^ (counter & _MASK32))
    return _mix32(h ^ ((int(stream) * 0x9E3779B9 + (counter >> 32)) & _MASK32))


def keyed_bits(
    seed: int,
    example_ids: torch.Tensor,
    counter: int | torch.Tensor,
    numel: int,
    stream: int = 0,
) -> torch.Tensor:
    """Return int64 hash values in [0, 2**32) of shape ``(B, numel)``.

    ``example_ids`` is a 1-D integer tensor; ``counter`` distinguishes successive draws
    (restart index, iteration, purpose) for the same example (an int, or a (B, 1) column: one
    per row), ``stream`` the kind of draw. The
    key is absorbed one 32-bit word at a time (seed low/high, id low/high, counter, stream),
    each followed by a bijective avalanche mix, so for fixed other inputs distinct ids, counters
    or seeds give distinct states (no structured collisions such as seed + id shifts).
    """
    ids = example_ids.to(torch.int64).reshape(-1, 1)
    return _element_bits(_key_state(seed, ids, counter, stream), numel)


def _element_bits(h: torch.Tensor, numel: int) -> torch.Tensor:
    """The ``numel`` element hashes of key states ``h`` (trailing dim 1 → ``numel``)."""
    idx = torch.arange(numel, device=h.device, dtype=torch.int64)
    return _mix32((_mix32(h ^ idx) + idx * 0x9E3779B9) & _MASK32)


def _counter_table(
    counters: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor | None
) -> torch.Tensor:
    """A (1, T) row of ``counters`` for the (B, 1) column ``ids``, or with per-row
    ``offsets`` (:meth:`KeyedRandom.shifted`) the (B, T) table ``counters + offsets[i]``."""
    table = counters.to(ids.device, torch.int64).reshape(1, -1)
    if offsets is None:
        return table
    return table + offsets.to(ids.device, torch.int64).reshape(-1, 1)


@functools.lru_cache(maxsize=256)
def _mix32_int(v: int) -> int:
    """:func:`_mix32` on a Python int (for the key words known on the host)."""
    return int(_mix32(torch.tensor([v & _MASK32], dtype=torch.int64))[0])


def _to_unit(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Map 32-bit hashes to floats in [0, 1) exactly: keep as many top bits as ``dtype`` has
    mantissa bits (24 for float32, 32 for float64, 11 for float16), so no value rounds up
    to 1."""
    nbits = min(round(-math.log2(torch.finfo(dtype).eps)) + 1, 32)
    return (bits >> (32 - nbits)).to(dtype) * (1.0 / (1 << nbits))


def keyed_uniform(
    seed: int,
    example_ids: torch.Tensor,
    counter: int | torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) samples of shape ``(B, *shape)``, a pure function of its arguments."""
    numel = math.prod(shape)
    bits = keyed_bits(seed, example_ids, counter, numel, STREAM_UNIFORM)
    return _to_unit(bits, dtype).reshape(example_ids.shape[0], *shape)


def keyed_uniform_steps(
    seed: int,
    example_ids: torch.Tensor,
    counters: torch.Tensor,
    numel: int,
    dtype: torch.dtype = torch.float32,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`keyed_uniform` for T counters at once: shape ``(B, T, numel)``, ``[:, t]``
    bit-identical to ``keyed_uniform(seed, ids, counters[t], (numel,), dtype)`` (one batch of
    hash ops for a window of an attack's steps instead of T small ones); ``offsets`` (B,) as
    in :meth:`KeyedRandom.shifted`."""
    ids = example_ids.to(torch.int64).reshape(-1, 1)
    h = _key_state(seed, ids, _counter_table(counters, ids, offsets), STREAM_UNIFORM)
    return _to_unit(_element_bits(h.unsqueeze(-1), numel), dtype)  # (B, T, numel)


def keyed_normal(
    seed: int,
    example_ids: torch.Tensor,
    counter: int | torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal samples (Box-Muller) keyed like :func:`keyed_uniform`, from their own
    stream (so ``normal(c)`` and ``uniform(c)`` are unrelated)."""
    numel = math.prod(shape)
    bits = keyed_bits(seed, example_ids, counter, 2 * numel, STREAM_NORMAL)
    u = _to_unit(bits, torch.float64)
    u1, u2 = u[:, :numel], u[:, numel:]
    r = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]
    z = r * torch.cos(2 * torch.pi * u2)
    return z.to(dtype).reshape(example_ids.shape[0], *shape)


def _randint_span(low: int, high: int) -> int:
    """high − low + 1, checked."""
    if high < low:
        raise UnionRobustError(f"randint needs low <= high, got [{low}, {high}]")
    span = high - low + 1
    if span > 1 << 31:
        raise UnionRobustError(f"randint range [{low}, {high}] is wider than 2**31")
    return span


def keyed_randint(
    seed: int, example_ids: torch.Tensor, counter: int | torch.Tensor, low: int, high: int
) -> torch.Tensor:
    """One integer per example, uniform in ``[low, high]`` (inclusive), shape ``(B,)``.

    Drawn from its own stream by 64-bit multiply-shift of a 32-bit hash (bias < span/2**32).
    """
    low, high = int(low), int(high)
    span = _randint_span(low, high)
    bits = keyed_bits(seed, example_ids, counter, 1, STREAM_RANDINT).reshape(-1)
    return low + ((bits * span) >> 32)


def keyed_randint_window(
    seed: int,
    example_ids: torch.Tensor,
    start: int,
    count: int,
    low: int,
    high: int,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """``keyed_randint`` for the counters ``start .. start + count − 1`` at once: shape
    ``(B, count)``, column j bit-identical to ``keyed_randint(seed, ids, start + j, low, high)``
    (one batch of hash ops instead of ``count`` small ones); ``offsets`` (B,) moves row i's
    counters by ``offsets[i]`` (:meth:`KeyedRandom.shifted`)."""
    low, high = int(low), int(high)
    span = _randint_span(low, high)
    ids = example_ids.to(torch.int64).reshape(-1, 1)
    counters = torch.arange(start, start + count, device=ids.device, dtype=torch.int64)
    h = _key_state(seed, ids, _counter_table(counters, ids, offsets), STREAM_RANDINT)
    bits = _mix32(_mix32(h))  # keyed_bits' element 0: idx = 0 drops out of both mixes
    return low + ((bits * span) >> 32)


def default_ids(batch: int, device: torch.device | str) -> torch.Tensor:
    """The ids used when a caller gives none: 0..batch-1."""
    return torch.arange(batch, device=device, dtype=torch.int64)


class KeyedRandom:
    """Random draws for a batch, keyed by ``(seed, example id, counter)``.

    Pass one to threat models' ``random_init`` and ``step``; ``subset`` keeps the keys of the
    examples that remain when an attack shrinks its batch. ``with_window(start, count)`` gives
    the same keys with a window of step counters whose integer draws are computed all at once
    on first use (bit-identical to drawing them one by one; see :func:`keyed_randint_window`).
    ``shifted(offsets)`` adds a per-row offset to every counter: rows of several passes stacked
    side by side in one batch (the same example in each) draw what each pass draws alone.
    """

    def __init__(
        self,
        seed: int,
        ids: torch.Tensor,
        window: tuple[int, int] | None = None,
        offsets: torch.Tensor | None = None,
    ) -> None:
        self.seed = check_seed(seed)  # a seed >= 2**64 would wrap onto another's draws
        self.ids = ids.to(torch.int64)
        self.window = window
        self.offsets = None if offsets is None else offsets.to(self.ids.device, torch.int64)
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    @classmethod
    def for_batch(
        cls, seed: int, batch: int, device: torch.device | str, ids: torch.Tensor | None = None
    ) -> KeyedRandom:
        return cls(seed, default_ids(batch, device) if ids is None else ids.to(device))

    def subset(self, index: torch.Tensor) -> KeyedRandom:
        """Keys of ``ids[index]`` (a bool mask or an index tensor)."""
        offsets = None if self.offsets is None else self.offsets[index]
        return KeyedRandom(self.seed, self.ids[index], self.window, offsets)

    def with_window(self, start: int, count: int) -> KeyedRandom:
        """These keys, with ``randint`` over counters [start, start + count) drawn at once."""
        return KeyedRandom(self.seed, self.ids, (int(start), int(count)), self.offsets)

    def shifted(self, offsets: torch.Tensor) -> KeyedRandom:
        """These keys with every counter of row i moved by ``offsets[i]`` (int, shape (B,)):
        row i's draw for counter c is the draw of ``counter + offsets[i]`` of its example, so
        passes stacked in one batch (pass p's rows shifted by its counter step) draw exactly
        what they draw run one after another. Offsets add up; the window stays."""
        offsets = offsets.to(self.ids.device, torch.int64).reshape(-1)
        if offsets.shape[0] != self.ids.shape[0]:
            raise UnionRobustError(
                f"shifted needs one counter offset per row ({self.ids.shape[0]}), got "
                f"{offsets.shape[0]}"
            )
        if self.offsets is not None:
            offsets = offsets + self.offsets
        return KeyedRandom(self.seed, self.ids, self.window, offsets)

    def _counter(self, counter: int) -> int | torch.Tensor:
        """``counter``, or the (B, 1) column ``counter + offsets`` of a shifted batch."""
        if self.offsets is None:
            return counter
        return (self.offsets + int(counter)).reshape(-1, 1)

    def uniform(self, counter: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        return keyed_uniform(self.seed, self.ids, self._counter(counter), tuple(shape), dtype)

    def uniform_steps(
        self, counters: torch.Tensor, numel: int, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``uniform(counters[t], (numel,))`` for every t at once, shape (B, T, numel)
        (:func:`keyed_uniform_steps`)."""
        return keyed_uniform_steps(self.seed, self.ids, counters, numel, dtype, self.offsets)

    def normal(self, counter: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
        return keyed_normal(self.seed, self.ids, self._counter(counter), tuple(shape), dtype)

    def seeded_normal(
        self, counter: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Standard normal samples of shape ``(B, *shape)`` for large draws: per example a
        ``torch.Generator`` seeded by the keyed hash of (seed, id, counter), so an example's
        samples still do not depend on its batch, at the cost of one generator call per example
        instead of a hash per element (the hash costs ~40 integer ops per sample). The numbers
        differ between CPU and CUDA generators; one host sync for the seeds."""
        seeds = keyed_bits(self.seed, self.ids, self._counter(counter), 1, STREAM_NORMAL)
        seeds = seeds.reshape(-1).tolist()
        dev = self.ids.device
        out = torch.empty((len(seeds), *shape), dtype=dtype, device=dev)
        for i, s in enumerate(seeds):
            gen = torch.Generator(device=dev).manual_seed(int(s))
            out[i] = torch.randn(tuple(shape), generator=gen, dtype=dtype, device=dev)
        return out

    def randint(self, counter: int, low: int, high: int) -> torch.Tensor:
        if self.window is not None:
            start, count = self.window
            if start <= counter < start + count:
                key = (int(low), int(high))
                table = self._tables.get(key)
                if table is None:
                    table = keyed_randint_window(
                        self.seed, self.ids, start, count, *key, offsets=self.offsets
                    )
                    self._tables[key] = table
                return table[:, counter - start]
        return keyed_randint(self.seed, self.ids, self._counter(counter), low, high)
