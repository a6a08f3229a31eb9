"""Whether this process is one rank of a ``torch.distributed`` job (e.g. launched by torchrun), and
the few collectives the driver needs so that every rank ends with the same model.

DDP keeps parameters equal (same initial broadcast, averaged gradients) but not buffers: with
``broadcast_buffers=False`` each rank's BatchNorm running statistics follow its own data shard,
and :func:`sync_buffers` makes them one estimate over all shards (the mean of the ranks' running
means and variances: each rank normalised its batches by exactly such local statistics).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from .errors import LaunchError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """A process group is initialised: DDP wrapping, synced masks, sharded data apply."""
    return dist.is_available() and dist.is_initialized()


def is_rank0() -> bool:
    """The process that writes files and prints: rank 0, or the only process."""
    return not is_distributed() or dist.get_rank() == 0


def check_launch() -> None:
    """:class:`LaunchError` unless torchrun's environment is set (call before any work)."""
    missing = [name for name in TORCHRUN_ENV if not os.environ.get(name)]
    if missing:
        raise LaunchError(f"--distributed needs torchrun's environment ({', '.join(missing)} not set): launch with "
                          "'torchrun --nproc_per_node=N -m npu_compress.cli prune ...', or drop --distributed")
    if not dist.is_available():
        raise LaunchError("--distributed: this torch build has no torch.distributed")


def init_from_env(backend: str = "gloo") -> None:
    """Join the job torchrun started (rank, world size and master address from the environment)."""
    check_launch()
    dist.init_process_group(backend)


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel without the per-forward buffer broadcast: each rank's
    BatchNorm statistics follow its own shard until :func:`sync_buffers` averages them."""
    import inspect

    DDP = nn.parallel.DistributedDataParallel
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:  # torch >= 2.13
        return DDP(module, forward_sync_buffers=False)
    return DDP(module, broadcast_buffers=False)


def broadcast_module(module: nn.Module) -> None:
    """Every tensor of ``module`` (parameters and buffers) to rank 0's values."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def sync_buffers(module: nn.Module) -> None:
    """BatchNorm running mean / variance averaged over ranks; then every buffer to rank 0's value,
    so that ranks agree bit for bit (counters, masks and any other buffer included)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    with torch.no_grad():
        for norm in module.modules():  # BatchNorm*d, InstanceNorm*d(track_running_stats=True), SyncBatchNorm
            for stat in (getattr(norm, "running_mean", None), getattr(norm, "running_var", None)):
                if isinstance(stat, torch.Tensor) and stat.is_floating_point():
                    dist.all_reduce(stat, op=dist.ReduceOp.SUM)
                    stat.div_(world)
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank gets the same answer); ``flag`` alone
    outside a job."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
