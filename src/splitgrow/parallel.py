"""Data-parallel runs launched by ``torchrun``: one process per device, each training on its shard of every batch.

``torchrun --nproc_per_node=N`` starts N copies of a program and tells each its rank in environment variables;
:func:`launched` reads them and :func:`process_group` joins the group (NCCL between GPUs, gloo between CPU
processes). Inside it every process sees the same data order and takes rows ``rank, rank + N, ...`` of each global
batch (:func:`shard_rows`), so that the global batch, and with DDP's averaged gradients the optimisation, are
those of one process with the whole batch (BatchNorm aside: it normalises each process's rows, as DDP always does).
Rank 0 alone writes files; :func:`barrier` makes the others wait for what they must read back.

Growth keeps the processes in step by construction (summed statistics, rank 0's selection broadcast: see
:mod:`splitgrow.statistics.distributed`); :func:`check_in_step` verifies it after a split, so that a bug or a
non-deterministic kernel is a clear error rather than replicas that silently drift apart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import SplitgrowError
from .statistics.distributed import active, all_reduce_sum, rank


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a ``torchrun`` launch."""

    rank: int
    world_size: int
    local_rank: int


def launched() -> Launch | None:
    """The launch ``torchrun`` describes in this process's environment, or None for a plain single process."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        return Launch(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    except (KeyError, ValueError) as error:
        raise SplitgrowError(
            f"incomplete torchrun environment ({error})",
            "WORLD_SIZE, RANK, LOCAL_RANK",
            "launch with torchrun, which sets them, or unset WORLD_SIZE for a single process",
        ) from None


def local_device(device: str, launch: Launch | None) -> torch.device:
    """The device of this process: a bare ``cuda`` means this process's own GPU (``cuda:LOCAL_RANK``)."""
    if launch is not None and device == "cuda":
        return torch.device("cuda", launch.local_rank)
    return torch.device(device)


@contextlib.contextmanager
def process_group(launch: Launch, device: str) -> Iterator[torch.device]:
    """Join the launch's process group for the duration of the block; yields this process's device."""
    import torch.distributed as dist

    local = local_device(device, launch)
    if local.type == "cuda":
        if not torch.cuda.is_available() or local.index >= torch.cuda.device_count():
            raise SplitgrowError(
                f"process {launch.rank} needs GPU {local.index}, but torch sees {torch.cuda.device_count()}",
                f"--device {device}",
                "start at most one process per GPU (--nproc_per_node), or use --device cpu",
            )
        torch.cuda.set_device(local)
    backend = "nccl" if local.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as error:  # an unreachable rendezvous, a port in use, a bad address
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SplitgrowError(
            f"process {launch.rank} could not join the {backend} process group: {first_line}",
            "torchrun",
            "check torchrun's --rdzv/--master settings (--standalone for one machine)",
        ) from None
    try:
        yield local
        # after a clean run, no process tears the group down (with rank 0, under a plain tcp:// rendezvous, the
        # store) while another may still talk to it; after an error the others may be gone: no waiting for them
        dist.barrier()
    finally:
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, number of processes) of this process: (0, 1) outside a distributed run."""
    if not active():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (nothing outside a distributed run)."""
    if active():
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first(needed: bool = True) -> Iterator[None]:
    """Rank 0 runs the block before the other processes do (a download they then read); a plain block when not
    ``needed`` or outside a distributed run."""
    if not needed or not active():
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard_rows(batch_size: int) -> slice:
    """The rows of a global batch of ``batch_size`` this process takes: every N-th from its rank."""
    process, count = world()
    return slice(process, batch_size, count)


def wrap(model: nn.Module) -> nn.Module:
    """``model`` for training: under a DDP wrapper in a distributed run (which averages the gradients over the
    processes), itself otherwise. Wrap again after every split: the wrapper holds buffers of the old sizes."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics: each process updated its own in its last
    training batch, and evaluation and splitting statistics must see one model)."""
    if not active():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def mean(value: float) -> float:
    """The mean of each process's ``value`` (the value itself outside a distributed run)."""
    if not active():
        return value
    return float(all_reduce_sum(torch.tensor(value, dtype=torch.float64))) / world()[1]


def _digest(model: nn.Module) -> Tensor:
    """Per tensor, its sum and the sum of its squares (float64): replicas differing anywhere differ here."""
    values = []
    for tensor in [*model.parameters(), *model.buffers()]:
        data = tensor.detach().double()
        values += [data.sum(), (data * data).sum()]
    return torch.stack(values).cpu() if values else torch.zeros(0, dtype=torch.float64)


def check_in_step(model: nn.Module, where: str) -> None:
    """Raise unless every process holds the same tensors in ``model`` (same shapes and values)."""
    if not active():
        return
    import torch.distributed as dist

    shapes = [tuple(tensor.shape) for tensor in [*model.parameters(), *model.buffers()]]
    every: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(every, (shapes, _digest(model)))
    first_shapes, first_digest = every[0]
    for process, (process_shapes, process_digest) in enumerate(every):
        if process_shapes != first_shapes or not torch.equal(process_digest, first_digest):
            raise SplitgrowError(
                f"process {process} holds other weights than process 0",
                where,
                "the processes must run the same code on the same settings; report it as a bug if they do",
            )
