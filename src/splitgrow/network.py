"""Grow any PyTorch model in three calls: splitting statistics, selection, split.

    net = SplittableNetwork(model, example_inputs)
    results = net.splitting(loader, loss_function, batches=16)     # every site's indexes and directions
    requests = net.select(results, max_count=8, threshold=0.0)     # the most negative indexes
    report = net.split(requests, epsilon=0.01, optimizer=optimizer)  # model and optimiser state, in place

The graph of sites is rebuilt after every split; the model object, its parameters and the optimiser keep their
identity, so a training loop (and its learning-rate scheduler) simply continues.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .graph import ChannelGraph, Site
from .network_statistics import LossFunction, SiteSplitting, splitting_eigenpairs
from .surgery import SplitReport, SplitRequest, select_splits, split_network


class SplittableNetwork:
    """A model, its splittable sites, and the operations of Algorithm 1 on it.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace; changed in place by :meth:`split`.
        example_inputs: an input batch (any size) of the right shape, used to trace the model.
        exclude: module names (or name prefixes) never to split.
        relu_surrogate: treat ReLU activations as splittable with the phi'' of softplus(beta=relu_surrogate);
            the surrogate is named in every result (``SiteSplitting.surrogate``).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        *,
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
    ) -> None:
        self.model = model
        self.example_inputs = example_inputs
        self.exclude = tuple(exclude)
        self.relu_surrogate = relu_surrogate
        self._graph: ChannelGraph | None = None

    @property
    def graph(self) -> ChannelGraph:
        """The current :class:`ChannelGraph` (traced again after each split)."""
        if self._graph is None:
            parameter = next(self.model.parameters())
            inputs = self.example_inputs
            if isinstance(inputs, Tensor):
                inputs = inputs.to(device=parameter.device, dtype=parameter.dtype)
            else:
                inputs = tuple(t.to(device=parameter.device, dtype=parameter.dtype) for t in inputs)
            self._graph = ChannelGraph(self.model, inputs, exclude=self.exclude, relu_surrogate=self.relu_surrogate)
        return self._graph

    @property
    def sites(self) -> dict[str, Site]:
        return self.graph.sites

    def widths(self) -> dict[str, int]:
        """Output channels of every site."""
        return {name: site.num_neurons for name, site in self.sites.items()}

    def splitting(
        self,
        data: Iterable[tuple[Tensor, Tensor]],
        loss_function: LossFunction,
        *,
        sites: Sequence[str] | None = None,
        batches: int | None = None,
        solver: str = "dense",
        progress: bool = False,
        **options: Any,
    ) -> dict[str, SiteSplitting]:
        """Splitting indexes and gradients of every site: ``solver`` is ``"dense"``, ``"lobpcg"`` (matrix-free),
        ``"rayleigh"`` or ``"auto"``; ``options`` go to :func:`splitgrow.network_statistics.splitting_eigenpairs`
        (dtype, tolerance, max_iterations, warm_start, keep_matrices, ...)."""
        return splitting_eigenpairs(
            self.model,
            self.graph,
            data,
            loss_function,
            sites=sites,
            batches=batches,
            solver=solver,
            progress=progress,
            **options,
        )

    def select(
        self,
        results: dict[str, SiteSplitting],
        max_count: int,
        threshold: float = 0.0,
        *,
        allow_inexact: bool = False,
    ) -> list[SplitRequest]:
        """At most ``max_count`` channels with the most negative indexes below ``threshold``, skipping channels
        that cannot be split together (see :func:`splitgrow.surgery.select_splits`)."""
        return select_splits(results, max_count, threshold, graph=self.graph, allow_inexact=allow_inexact)

    def split(
        self,
        requests: Sequence[SplitRequest],
        epsilon: float,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        allow_inexact: bool = False,
    ) -> SplitReport:
        """Split the requested channels in place, carrying ``optimizer``'s state (see
        :func:`splitgrow.surgery.split_network`)."""
        report = split_network(
            self.model, self.graph, requests, epsilon, optimizer=optimizer, allow_inexact=allow_inexact
        )
        self._graph = None
        return report
