"""Distributed statistics: two CPU processes (gloo), each with its own half of the data, find the indexes of one
process with all of it, and grow identically."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from distributed_worker import UNEQUAL, data, network, run

from splitgrow.growth import Grower, GrowthPolicy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SOLVERS = ["dense", "lobpcg"]


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Both solvers in one pair of processes (starting processes costs more than the statistics)."""
    folder = tmp_path_factory.mktemp("ranks")
    address = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(run, args=(2, address, str(folder), SOLVERS), nprocs=2, join=True, start_method="spawn")
    return folder


@pytest.mark.parametrize("solver", SOLVERS)
def test_two_processes_find_the_single_process_indexes_and_grow_identically(processes, solver):
    ranks = [torch.load(processes / f"{solver}-rank{rank}.pt", weights_only=True) for rank in range(2)]
    model = network()
    policy = GrowthPolicy(first=1, every=1, count=3, epsilon=0.1, solver=solver, statistics_batches=None)
    single = Grower(model, data(None)[0][0], data(None), policy=policy, loss_function=F.cross_entropy)
    expected = single.statistics()
    single.grow()
    tolerance = 1e-10 if solver == "dense" else 1e-5  # LOBPCG works in float32
    for found in ranks:
        assert found["weight"] == expected.weight == 48
        for name, result in expected.items():
            torch.testing.assert_close(found["indexes"][name], result.indexes, rtol=tolerance, atol=tolerance)
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name  # the same growth on every process
        if solver == "dense":
            torch.testing.assert_close(tensor, model.state_dict()[name], rtol=1e-10, atol=1e-12)
    assert ranks[0]["stage"]["splits"] == ranks[1]["stage"]["splits"]
    for found in ranks:  # the in-step check passes on the grown replicas and catches a 1e-12 difference
        assert found["in_step"][0] == ""
        assert "process 1 holds other weights than process 0 (after the split)" in found["in_step"][1]


@pytest.mark.parametrize("adaptive", [False, True], ids=["plain", "adaptive"])
def test_shards_of_unequal_length_stop_together_instead_of_waiting_forever(processes, adaptive):
    """Shards of 3 and 1 batches: both processes stop after one batch each (process 0 warns), with the indexes of
    those two batches; an empty shard: both processes raise at once. (Before, the longer shard's process waited
    forever in the next reduction.)"""
    ranks = [torch.load(processes / f"unequal-rank{rank}.pt", weights_only=False) for rank in range(2)]
    first_each = [data(None)[shard[0]] for shard in UNEQUAL["unequal"]]
    policy = GrowthPolicy(count=1, statistics_batches=None)
    expected = Grower(
        network(), first_each[0][0], first_each, policy=policy, loss_function=F.cross_entropy
    ).statistics()
    for found in ranks:
        unequal = found["unequal", adaptive]
        assert unequal["weight"] == 12  # two batches of 6, one from each process
        for name, result in expected.items():
            torch.testing.assert_close(unequal["indexes"][name], result.indexes, rtol=1e-10, atol=1e-12)
        assert "the data gave no batches" in found["empty", adaptive]["error"]
    warned = [found["unequal", adaptive]["warnings"] for found in ranks]
    assert len(warned[0]) == 1 and warned[1] == []  # process 0 alone warns, once
    assert "1 of 2 processes ran out of batches after 1; every process stops there" in warned[0][0]
