"""Statistics across the processes of a ``torch.distributed`` run (``torchrun``, DDP).

Each process records the statistics of its own shard of the data; their sums are all-reduced: the dense matrices'
weighted sums, the total weight, and every matrix-free product (each process applies its own cached statistics to
the same directions). Every process therefore solves the same problem and derives the same split; the grower also
broadcasts the selected splits from rank 0 so that floating-point ties cannot make the processes disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def active() -> bool:
    """Whether this process is one of several of an initialised ``torch.distributed`` group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over every process (a new tensor; this process's own is left unchanged)."""
    import torch.distributed as dist

    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def reducer() -> Callable[[Tensor], Tensor] | None:
    """:func:`all_reduce_sum` in a distributed run, None otherwise (the statistics' ``reduce`` argument)."""
    return all_reduce_sum if active() else None


def broadcast_object(value: object) -> object:
    """``value`` as rank 0 has it, on every process (unchanged outside a distributed run)."""
    if not active():
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def rank() -> int:
    """This process's rank (0 outside a distributed run)."""
    return torch.distributed.get_rank() if active() else 0
