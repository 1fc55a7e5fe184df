"""Grow any PyTorch model in three calls: splitting statistics, selection, split.

    net = SplittableNetwork(model, example_inputs)
    results = net.splitting(loader, loss_function, batches=16)     # every site's indexes and directions
    requests = net.select(results, max_count=8, threshold=0.0)     # the most negative indexes
    report = net.split(requests, epsilon=0.01, optimizer=optimizer)  # model and optimiser state, in place

The graph of sites is traced again whenever the model's shapes changed (after every split); the model object, its
parameters and the optimiser keep their identity, so a training loop (and its learning-rate scheduler) simply
continues. A model compiled with ``torch.compile`` may be given as it is: the splits reach the module it compiled,
whose parameters it shares, and the compiled model recompiles for the new shapes at its next call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .graph import ChannelGraph, Site, check_excluded, model_fingerprint
from .selection import Selection, select_splits
from .statistics import LossClosure, LossFunction, SplittingResults, splitting_eigenpairs
from .statistics.splitting import report_skipped
from .surgery import NewNeuron, SplitReport, SplitRequest, split_network


class SplittableNetwork:
    """A model, its splittable sites, and the operations of Algorithm 1 on it.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace, or that module compiled (``torch.compile``: its
            ``_orig_mod`` is traced and split); changed in place by :meth:`split`.
        example_inputs: a small input batch of the right shape (a tuple for several positional inputs, which may
            include some without a batch dimension, such as a (T, T) attention mask), used to trace the model.
        exclude: module names (or name prefixes) never to split.
        relu_surrogate: give piecewise-linear activations (ReLU, ...) the curvature of softplus(beta=relu_surrogate)
            at their kinks; the surrogate is named in every result (``SiteSplitting.surrogate``).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Tensor | Sequence[Tensor],
        *,
        exclude: Sequence[str] = (),
        relu_surrogate: float | None = None,
    ) -> None:
        # torch.compile's wrapper shares the module's parameters and guards on their shapes: grow the module itself
        compiled = getattr(model, "_orig_mod", None)
        self.model = compiled if isinstance(compiled, nn.Module) else model
        self.example_inputs = example_inputs
        self.exclude = check_excluded(self.model, exclude)
        self.relu_surrogate = relu_surrogate
        self._graph: ChannelGraph | None = None

    @property
    def graph(self) -> ChannelGraph:
        """The current :class:`ChannelGraph`, traced again whenever the model's shapes changed."""
        if self._graph is None or self._graph.fingerprint != model_fingerprint(self.model):
            parameter = next(self.model.parameters(), None)

            def move(tensor: Tensor) -> Tensor:
                if parameter is None or not isinstance(tensor, Tensor):
                    return tensor
                if tensor.is_floating_point():
                    return tensor.to(parameter.device, parameter.dtype)
                return tensor.to(parameter.device)

            inputs = self.example_inputs
            inputs = move(inputs) if isinstance(inputs, Tensor) else tuple(move(t) for t in inputs)
            self._graph = ChannelGraph(self.model, inputs, exclude=self.exclude, relu_surrogate=self.relu_surrogate)
        return self._graph

    @property
    def sites(self) -> dict[str, Site]:
        return self.graph.sites

    def widths(self) -> dict[str, int]:
        """Neurons (coupling groups) of every site."""
        return {name: site.num_neurons for name, site in self.sites.items()}

    def neurons(self, *, splittable_only: bool = True) -> int:
        """The number of neurons (coupling groups) of the (splittable) sites: what growth ratios count."""
        return sum(s.num_neurons for s in self.sites.values() if s.splittable or not splittable_only)

    def splitting(
        self,
        data: Iterable,
        loss_function: LossFunction | None = None,
        *,
        closure: LossClosure | None = None,
        reduction: str = "auto",
        sites: Sequence[str] | None = None,
        batches: int | None = None,
        solver: str = "dense",
        progress: bool = False,
        strict: bool = False,
        **options: Any,
    ) -> SplittingResults:
        """Splitting indexes and gradients of every splittable site.

        ``data`` yields ``(inputs, targets)`` batches for ``loss_function(outputs, targets)``, or any batches for
        ``closure(model, batch) -> (loss, weight)``; ``reduction`` says whether the loss is a mean (the default,
        or a torch loss module's own setting) or a sum. ``solver`` is ``"dense"``, ``"lobpcg"`` (matrix-free),
        ``"rayleigh"`` or ``"auto"``; ``options`` go to :func:`splitgrow.statistics.splitting_eigenpairs`
        (dtype, tolerance, max_iterations, warm_start, keep_matrices, ...). Layers that will not grow are listed in
        the result's ``skipped`` and in a warning (an error with ``strict``).
        """
        return splitting_eigenpairs(
            self.model,
            self.graph,
            data,
            loss_function,
            closure=closure,
            reduction=reduction,
            sites=sites,
            batches=batches,
            solver=solver,
            progress=progress,
            strict=strict,
            **options,
        )

    def select(
        self,
        results: dict,
        max_count: int,
        threshold: float = 0.0,
        *,
        allow_inexact: bool = False,
        strict: bool = False,
        max_added: int | None = None,
    ) -> Selection:
        """At most ``max_count`` neurons with the most negative indexes below ``threshold``, or splits adding at
        most ``max_added`` neurons (signed splits add up to three; see :func:`splitgrow.selection.select_splits`);
        sites left out are listed in the result's ``skipped`` and in a warning (an error with ``strict``)."""
        selection = select_splits(
            results, max_count, threshold, graph=self.graph, allow_inexact=allow_inexact, max_added=max_added
        )
        report_skipped(self.graph, selection.skipped, strict=strict, what="selection")
        return selection

    def split(
        self,
        requests: Sequence[SplitRequest | NewNeuron],
        epsilon: float,
        *,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        allow_inexact: bool = False,
    ) -> SplitReport:
        """Split the requested neurons (and add any :class:`~splitgrow.surgery.NewNeuron`) in place, carrying the
        state of ``optimizer`` (one, or a sequence of several; see :func:`splitgrow.surgery.split_network`)."""
        report = split_network(
            self.model, self.graph, requests, epsilon, optimizer=optimizer, allow_inexact=allow_inexact
        )
        self._graph = None
        return report
