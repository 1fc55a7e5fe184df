"""What each process of the distributed test runs (a module of its own, so that spawned processes can import it)."""

from __future__ import annotations

import copy
import datetime
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, 3)).double()


def data(rank: int | None, world: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eight batches; process ``rank`` gets every ``world``-th one (None: all of them)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(8):
        x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
        batches.append((x, torch.randint(0, 3, (6,), generator=generator)))
    return batches if rank is None else batches[rank::world]


def run(rank: int, world: int, address: str, out: str, solvers: list[str]) -> None:
    # a process left waiting in a reduction fails after a minute instead of hanging the test suite
    dist.init_process_group(
        "gloo", init_method=address, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        for solver in solvers:
            grow(rank, out, solver)
        unequal_shards(rank, out)
        dist.barrier()  # neither process tears the group down while the other may still talk to it
    finally:
        dist.destroy_process_group()


#: the batches of each process in the unequal-shard cases: 3 and 1, then 2 and none
UNEQUAL = {"unequal": ([0, 1, 2], [3]), "empty": ([0, 1], [])}


def unequal_shards(rank: int, out: str) -> None:
    """Shards of unequal length, with plain and adaptive statistics: what each process finds, warns and raises."""
    from splitgrow.errors import SplitgrowError
    from splitgrow.growth import Grower, GrowthPolicy
    from splitgrow.statistics.adaptive import AdaptiveStatistics

    found = {}
    for case, shards in UNEQUAL.items():
        for adaptive in (None, AdaptiveStatistics(min_batches=1, max_batches=None)):
            shard = [data(None)[k] for k in shards[rank]]
            policy = GrowthPolicy(count=1, statistics_batches=None, adaptive=adaptive)
            grower = Grower(network(), data(None)[0][0], shard, policy=policy, loss_function=F.cross_entropy)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    results = grower.statistics()
                    outcome = {"indexes": {name: result.indexes for name, result in results.items()}}
                    outcome["weight"] = results.weight
                except SplitgrowError as error:
                    outcome = {"error": str(error)}
            outcome["warnings"] = [str(w.message) for w in caught if "ran out of batches" in str(w.message)]
            found[case, adaptive is not None] = outcome
    torch.save(found, f"{out}/unequal-rank{rank}.pt")


def grow(rank: int, out: str, solver: str) -> None:
    from splitgrow.growth import Grower, GrowthPolicy

    model = network()
    policy = GrowthPolicy(first=1, every=1, count=3, epsilon=0.1, solver=solver, statistics_batches=None)
    grower = Grower(model, data(rank)[0][0], data(rank), policy=policy, loss_function=F.cross_entropy)
    results = grower.statistics()
    grower.grow()
    torch.save(
        {
            "indexes": {name: result.indexes for name, result in results.items()},
            "weight": results.weight,
            "state": model.state_dict(),
            "stage": grower.history[0].to_dict(),
            "in_step": in_step(rank, model),
        },
        f"{out}/{solver}-rank{rank}.pt",
    )


def in_step(rank: int, model: nn.Module) -> list[str]:
    """What :func:`splitgrow.parallel.check_in_step` says of the grown replicas, then after process 1 nudges one
    weight by 1e-12 (an empty string: no error)."""
    from splitgrow.errors import SplitgrowError
    from splitgrow.parallel import check_in_step

    model = copy.deepcopy(model)  # the caller saves the grown weights themselves
    said = []
    for nudge in (False, True):
        if nudge and rank == 1:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] += 1e-12
        try:
            check_in_step(model, "after the split")
            said.append("")
        except SplitgrowError as error:
            said.append(str(error))
    return said
