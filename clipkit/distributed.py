"""Process groups under `torchrun`: one way to join and one way to leave, shared by
training, the benchmark and the index builder.

`torchrun` describes the group in the environment (WORLD_SIZE, RANK, LOCAL_RANK, ...);
:func:`process_group` joins it (NCCL on GPUs, after pinning this rank's GPU; gloo on
CPU), yields a :class:`DistInfo`, and leaves it afterwards, only if it started it: a
group the caller made is the caller's to destroy. A plain process is rank 0 of 1.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "is_distributed", "process_group"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def world(self) -> int:
        return self.world_size


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _join() -> tuple[DistInfo, bool]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    started = False
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)  # before NCCL, or every rank would use cuda:0
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started = True
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device), started
    return DistInfo(0, 1, local_rank, device), started


@contextlib.contextmanager
def process_group() -> Iterator[DistInfo]:
    """Join the group torchrun describes for the duration, then leave it.

    On a normal exit the ranks meet first (a rank that exits while gloo still has a peer
    talking to it aborts the peer); on an error the group is torn down at once, since the
    other ranks may never reach a meeting point.
    """
    info, started = _join()
    ok = False
    try:
        yield info
        ok = True
    finally:
        if started and dist.is_initialized():
            if ok:
                dist.barrier()
            dist.destroy_process_group()
