"""The ranks of a data-parallel job: which process this is, and what the processes share.

`Team` is what the training loops (`rewardmodel.lib.train`, `training.lib.dpo`) need: their
share of each micro-batch, the sum of gradients and logged figures over the ranks, a barrier,
rank 0's weights. `join` sets up torch.distributed from torchrun's environment; the launcher and
the worker it starts live in `training.lib.distributed`, which says how the pieces fit.
"""
from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch

#: Gradients travel in buckets of at most this many bytes (one all-reduce each).
BUCKET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Team:
    """This process's place among the ranks of a data-parallel job (one rank: no communication)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def solo(self) -> bool:
        return self.size == 1

    def share(self, idx: Sequence[int]) -> list[int]:
        """This rank's part of a global micro-batch: contiguous, sizes differ by at most one (may be empty)."""
        n, k = len(idx), self.size
        start = self.rank * (n // k) + min(self.rank, n % k)
        return list(idx[start:start + n // k + (self.rank < n % k)])

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks, in place (a rank without one adds zeros)."""
        if self.solo:
            return
        bucket: list[torch.nn.Parameter] = []
        size = 0
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            bucket.append(p)
            size += p.grad.numel() * p.grad.element_size()
            if size >= BUCKET_BYTES:
                _all_reduce_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_bucket(bucket)

    def sum_values(self, values: Mapping[str, float], device: torch.device) -> dict[str, float]:
        """The figures summed over the ranks (float64; every rank gets the sums)."""
        if self.solo:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist(), strict=True))

    def most(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' values (every rank gets it)."""
        if self.solo:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def broadcast(self, tensors: Iterable[torch.Tensor]) -> None:
        """Rank 0's values of ``tensors`` on every rank: the trained weights start equal whatever each
        rank's random state did (frozen weights, loaded from the same files, are equal already)."""
        if self.solo:
            return
        with torch.no_grad():
            for tensor in tensors:
                torch.distributed.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if not self.solo:
            torch.distributed.barrier()


SOLO = Team()


def _all_reduce_bucket(params: list[torch.nn.Parameter]) -> None:
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n


def current_team() -> Team:
    """The team of this process: from the initialised process group, else one rank alone."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return SOLO
    return Team(rank=torch.distributed.get_rank(), size=torch.distributed.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def join(device: str = "auto", *, timeout_s: float = 1800.0) -> Team:
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    NCCL with one GPU per rank (``cuda:LOCAL_RANK`` becomes this process's "cuda") when the job
    trains on CUDA; gloo on the CPU. Without torchrun's environment: one rank alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return SOLO
    if not torch.distributed.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_cuda:
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"rank with LOCAL_RANK={local_rank} has no GPU: this host sees "
                                   f"{torch.cuda.device_count()}; lower world_size")
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group("nccl" if on_cuda else "gloo",
                                             timeout=datetime.timedelta(seconds=timeout_s))
    return current_team()


def leave() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End this process with ``code``; the command-line entry points torchrun starts end here.

    A rank of a multi-process job flushes its output and leaves through ``os._exit``, skipping the
    interpreter's finalization: gloo's worker threads can still hold tensors then, and tearing
    Python down under them aborts the process ("terminate called without an active exception",
    SIGABRT) after the job's work is done, which torchrun reports as the job failing. Call it only
    after every rank met at a barrier and `leave` ran. One process alone exits normally.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise SystemExit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
