"""Distributed data parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

The trainer works on the *global* batch: every rank computes the same permutation for an epoch
(a function of seed and epoch), cuts the same global batch and keeps its contiguous slice
(:func:`shard`). Each rank's loss is rescaled by ``n_local * world / n_global`` so that DDP's
gradient average equals the gradient of the global batch mean even for uneven slices. Per-epoch
evaluation is sharded by example and merged with ``all_gather`` (accuracies weighted by shard
size are exact for clean, per-threat, union and average accuracy). Only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from unionrobust.errors import UnionRobustError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world``, its device, whether it writes files."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable default

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` = CUDA (this rank's GPU) if available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UnionRobustError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    try:
        return torch.device(name)
    except RuntimeError:
        raise UnionRobustError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (or run alone)."""
    world = env_world_size()
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world=world, local_rank=local_rank, device=dev)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a single-machine process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_local_cpu(rank: int, world: int, port: int) -> DistContext:
    """Join a single-machine gloo group as ``rank`` of ``world`` without torchrun (e.g. from
    ``torch.multiprocessing.spawn``), with one intra-op thread per process."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    return init_distributed("cpu")


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous slice of a global batch of indices (sizes differ by at most 1)."""
    if not ctx.distributed:
        return index
    return torch.tensor_split(index, ctx.world)[ctx.rank]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a float64 tensor over ranks (identity when alone)."""
    if not ctx.distributed:
        return values
    out = values.to(ctx.device, torch.float64).clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def all_gather_rows(values: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Every rank's copy of a same-shape tensor, in rank order."""
    if not ctx.distributed:
        return [values]
    local = values.to(ctx.device, torch.float64).contiguous()
    bufs = [torch.empty_like(local) for _ in range(ctx.world)]
    dist.all_gather(bufs, local)
    return [b.cpu() for b in bufs]


def merge_metrics(local: dict[str, float], n_local: int, ctx: DistContext) -> dict[str, float]:
    """Example-weighted mean of accuracy metrics over ranks (exact for accuracies)."""
    keys = sorted(local)
    vec = torch.tensor([n_local] + [float(local[k]) * n_local for k in keys], dtype=torch.float64)
    rows = all_gather_rows(vec, ctx)
    total = torch.stack(rows).sum(0)
    n = float(total[0])
    return {k: (float(total[i + 1]) / n if n else float("nan")) for i, k in enumerate(keys)}


def wrap_model(model: torch.nn.Module, ctx: DistContext, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel wrapper (SyncBatchNorm first if asked); identity when alone."""
    if not ctx.distributed:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel)
        else model
    )
