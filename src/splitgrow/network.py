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

import contextlib
import inspect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_model_type
from .errors import ConfigError, SplitgrowError
from .graph import ChannelGraph, Site, check_excluded, inputs_like, model_fingerprint
from .modes import evaluating
from .selection import Selection, select_splits
from .statistics import LossClosure, LossFunction, SplittingResults, StatisticsError, splitting_eigenpairs
from .statistics.recording import batch_to_device, check_loss_contract, closure_from_loss
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
        check_model(model)
        check_example_inputs(example_inputs)
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
            inputs = self.example_inputs
            inputs = inputs_like(self.model, (inputs,) if isinstance(inputs, Tensor) else tuple(inputs))
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

        Raises:
            StatisticsError: a batch the model or the loss cannot take (its error is named), a loss that is not a
                finite scalar, no batches.
            ConfigError: an option that :func:`splitgrow.statistics.splitting_eigenpairs` does not have.
        """
        check_loss_contract(loss_function, closure)
        check_data(data, "data")
        unknown = sorted(set(options) - SPLITTING_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown option(s) of the splitting statistics: {', '.join(unknown)}; known: "
                f"{', '.join(sorted(SPLITTING_OPTIONS))}"
            )
        graph = self.graph
        tracked = TrackedData(data)
        parameter = next(self.model.parameters(), None)
        device = parameter.device.type if parameter is not None else "cpu"
        # statistics in the model's dtype whatever region the caller is in (autocast would round them to bf16)
        with torch.autocast(device, enabled=False), diagnosed(self.model, tracked, loss_function, closure):
            results = splitting_eigenpairs(
                self.model,
                graph,
                tracked,
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
        results.fingerprint = graph.fingerprint  # the selection refuses results of the model before a split
        return results

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


#: the keyword options :meth:`SplittableNetwork.splitting` passes on to ``splitting_eigenpairs``
SPLITTING_OPTIONS = frozenset(inspect.signature(splitting_eigenpairs).parameters) - {
    "model",
    "graph",
    "data",
    "loss_function",
    "closure",
    "reduction",
    "sites",
    "batches",
    "solver",
    "progress",
    "strict",
}


def check_model(model: Any) -> None:
    """Refuse what cannot be grown before anything is traced: not a module, or a module whose parameters hold no
    values (on the ``meta`` device).

    Raises:
        ConfigError: naming the problem and the fix.
    """
    check_model_type(model)
    meta = next((name for name, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ConfigError(
            f"the model's parameter '{meta}' is on the meta device (it has no values)",
            fix="materialise the model first (model.to_empty(device=...) and load its weights)",
        )


def check_example_inputs(example_inputs: Any) -> None:
    """An example batch is a tensor or a non-empty tuple or list of the model's positional inputs."""
    if isinstance(example_inputs, Tensor):
        return
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return
    raise ConfigError(
        f"example_inputs must be an input batch (a tensor, or a tuple of the model's positional inputs), got "
        f"{type(example_inputs).__name__ if not isinstance(example_inputs, (tuple, list)) else 'an empty sequence'}"
    )


def check_data(data: Any, name: str) -> None:
    """Statistics data must be iterable (a list of batches, a DataLoader, or a class with ``__getitem__`` that
    Python iterates by index; not called here: iterating a DataLoader starts its workers)."""
    iterable = isinstance(data, Iterable) or hasattr(type(data), "__getitem__")
    if data is None or isinstance(data, (str, bytes)) or not iterable:
        raise ConfigError(f"{name} must be an iterable of batches (a list, a DataLoader), got {type(data).__name__}")
    dataset = torch.utils.data
    if isinstance(data, dataset.Dataset) and not isinstance(data, dataset.IterableDataset):
        # its items are single samples: each would be taken for a batch, its first dimension for the samples
        raise ConfigError(
            f"{name} is a Dataset ({type(data).__name__}), whose items are single samples, not batches",
            fix=f"give DataLoader(dataset, batch_size=...) as {name} (batch_size=None for a Dataset whose items are "
            "batches already)",
        )


_NO_BATCH = object()


class TrackedData:
    """Statistics data that remembers the last batch each pass gave, so that an error raised while the statistics
    use it can be traced to that batch (see :func:`diagnosed`)."""

    def __init__(self, data: Iterable, keep_bytes: int = 0) -> None:
        self.data = data
        self.last: Any = _NO_BATCH
        self.given = 0
        self.keep_bytes = keep_bytes
        #: the batches the last pass gave, while their tensors take at most ``keep_bytes`` (None beyond that): a
        #: loss measured again on them is measured on the same samples, whatever order the data shuffles into
        self.kept: list[Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        self.last, self.given = _NO_BATCH, 0
        self.kept, size, storages = ([] if self.keep_bytes > 0 else None), 0, set()
        for batch in self.data:
            self.last, self.given = batch, self.given + 1
            if self.kept is not None:
                tensors = list(_tensors(batch))
                size += sum(t.nbytes for t in tensors)
                places = {(t.data_ptr(), t.device) for t in tensors if t.numel()}
                # not kept: batches whose tensors splitgrow cannot see (their size is unknown), and a loader that
                # refills one buffer (the kept batches would all be its last one)
                if tensors and size <= self.keep_bytes and not places & storages:
                    self.kept.append(batch)
                    storages |= places
                else:
                    self.kept = None
            yield batch

    def __len__(self) -> int:
        """The data's own length (a progress bar's total); a TypeError where it has none, as for the data."""
        return len(self.data)  # type: ignore[arg-type]


@contextlib.contextmanager
def diagnosed(
    model: nn.Module, tracked: TrackedData, loss_function: LossFunction | None, closure: LossClosure | None
) -> Iterator[None]:
    """Turn an error from deep inside torch while the statistics run on ``tracked`` into a
    :class:`~splitgrow.statistics.StatisticsError` naming the batch, when the last batch given also fails through the
    plain model and loss (the user's data, model or loss); any other error is splitgrow's own and keeps its type."""
    try:
        yield
    except SplitgrowError:
        raise
    except Exception as error:
        memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
        if isinstance(error, memory) or tracked.last is _NO_BATCH:
            raise
        if isinstance(error, AssertionError) and "has been specialized to have value" in str(error):
            # torch.fx's guard on an argument the example input left out (traced with its default)
            raise StatisticsError(
                f"the loss closure calls the model with an input that its example input left out ({error}): the "
                "model was traced as the example calls it, that argument at its default",
                fix="give the example every input the closure passes, in the same order (example=(x, labels))",
            ) from error
        fault = batch_fault(model, tracked.last, loss_function, closure)
        if fault is None:
            raise
        raise StatisticsError(
            f"batch {tracked.given - 1} of the statistics data does not run through the model and the loss ({fault})",
            fix="give batches as in training: "
            + (
                "(inputs, targets) with inputs the model accepts and targets its loss accepts"
                if closure is None
                else "ones the closure can run, returning the loss or (loss, weight)"
            ),
        ) from error


def batch_fault(
    model: nn.Module, batch: Any, loss_function: LossFunction | None, closure: LossClosure | None
) -> str | None:
    """What goes wrong when ``batch`` runs through the plain ``model`` and its loss as the statistics run it (eval
    mode, on the model's device, outside autocast); None when nothing does."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    run = closure if closure is not None else closure_from_loss(loss_function)
    try:
        with evaluating(model), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            run(model, batch_to_device(batch, device))
    except Exception as error:
        fault = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        floats = sorted({str(t.dtype) for t in _tensors(batch) if t.is_floating_point()})
        if parameter is not None and floats and floats != [str(parameter.dtype)]:
            # the usual cause: data of one precision for a model of another (a stage runs outside autocast)
            fault += (
                f"; its floating-point tensors are {', '.join(floats)}, the model's parameters {parameter.dtype} (a "
                "stage runs in the model's dtype, outside autocast)"
            )
        return fault
    return None


def _tensors(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _tensors(value)
