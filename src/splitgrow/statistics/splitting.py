"""Splitting indexes and splitting gradients of every site, from one pass over (part of) the data.

The pass (:mod:`.recording`) feeds each site's engine: the closed form for ridge sites (:mod:`.ridge`) and
automatic differentiation for segment sites (:mod:`.segment`), either accumulating dense (n, d, d) matrices or
caching statistics for a matrix-free operator; the solvers (:mod:`splitgrow.solvers`) then give each neuron's
smallest eigenpair. Results list every layer that will not grow, with the reason, and indexes within numerical
noise of zero are reported as zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import is_count, is_number
from ..errors import ConfigError, SplitgrowWarning
from ..graph import ChannelGraph, GraphError, Site
from ..solvers import dense_eigenpairs, lobpcg_smallest, rayleigh_quotient_descent
from .chain import ChainOperator, chain_dense
from .closed_form import DEFAULT_MAX_TEMPORARY_ELEMENTS
from .loss_hessian import LossHessianOperator
from .recording import LossClosure, LossFunction, record_batches
from .ridge import RidgeOperator, ridge_dense
from .segment import SegmentOperator, segment_dense

SOLVERS = ("dense", "lobpcg", "rayleigh", "auto")
STARTS = ("subspace", "random")

#: "auto" uses the dense solver only for a site whose matrices fit in this many bytes (float64) ...
DEFAULT_DENSE_BYTES = 256 * 2**20
#: ... and whose neurons have at most this many parameters: accumulating n d x d matrices costs P n d^2 against
#: about 2 P n d per LOBPCG product; on a CPU (benchmarks/solver_choice.py, 1,024 images) LOBPCG was 3.3 times
#: faster at d = 72 (VGG19 at width 8) and the two tied at d = 36
AUTO_DENSE_DIM = 48
#: the same bound for sites without a closed-form (ridge) engine, whose dense matrices cost about d products
#: each (MobileNetV1 at width 8, d = 13 to 41: dense 128 s against LOBPCG 52 s)
AUTO_DENSE_DIM_OTHER = 8
#: the iterative solvers' default relative residual. An index's error is about the residual squared over the gap
#: to the next eigenvalue, so 1e-2 leaves errors far below the sampling noise of the statistics: on VGG19 and
#: MobileNetV1 (width 32, real Fashion-MNIST, 128 to 2,048 images) it selected the same top 10% as 1e-3 in every
#: draw, at 1.3 to 1.9 times less cost (benchmarks/adaptive_statistics.py, --tolerances)
ITERATIVE_TOLERANCE = 1e-2
#: dense indexes within this fraction of the site's largest matrix norm of zero are reported as 0
DENSE_NOISE = 1e-10

SiteOperator = RidgeOperator | ChainOperator | SegmentOperator | LossHessianOperator


@dataclass
class SiteSplitting:
    """Splitting indexes and gradients of one site.

    Attributes:
        site: the site's name (its first producer module).
        indexes: (n,) lambda_min of each neuron (0 where within ``noise_floor`` of zero).
        directions: (n, d) unit splitting gradients; entries follow each member's weight row flattened, then its
            bias, members in order (``members``).
        exact: whether eps^2/2 * lambda is the exact second-order loss change.
        surrogate: the phi'' surrogate used (piecewise-linear activations), or None.
        matrices: the (n, d, d) splitting matrices when requested.
        converged: (n,) False for a neuron whose iterative solve did not meet the tolerance (never selected).
        solver: the solver that produced them; iterations and products: its work (iterative solvers).
        members: the modules whose rows a neuron spans, in the order of the directions' entries.
        noise_floor: indexes with magnitude at or below it were reported as 0.
        largest_indexes, largest_directions: lambda_max and v_max of each neuron, when asked for
            (``largest=True``; signed splitting uses both ends of the spectrum).
        scheme: how a selected neuron splits (e.g. :class:`splitgrow.signed.SignedScheme`); None: theta +/- eps
            v_min with halved output weights.
    """

    site: str
    indexes: Tensor
    directions: Tensor
    exact: bool
    surrogate: str | None = None
    matrices: Tensor | None = None
    converged: Tensor | None = None
    solver: str = "dense"
    iterations: int = 0
    products: int = 0
    members: list[str] = field(default_factory=list)
    noise_floor: float = 0.0
    largest_indexes: Tensor | None = None
    largest_directions: Tensor | None = None
    scheme: Any = None


class SplittingResults(dict):
    """The :class:`SiteSplitting` of every computed site, by name, plus what was not computed.

    Attributes:
        skipped: every layer whose channels will not grow, with the reason (unsplittable sites, layers that are
            not sites).
        weight: the total weight of the data used (samples, or tokens for a per-token loss).
        batches: the number of batches used.
        adaptive: for adaptive statistics, how many batches and samples they drew and why they stopped.
        loss: the mean loss over the data used (the loss before a split).
        fingerprint: the shapes of the model the results are of (set by SplittableNetwork and Grower): a selection
            from results of the model before a split is refused, since its neuron numbers have moved.
    """

    def __init__(self, *args, skipped: dict[str, str] | None = None, weight: float = 0.0, batches: int = 0) -> None:
        super().__init__(*args)
        self.skipped = dict(skipped or {})
        self.weight = weight
        self.batches = batches
        self.adaptive: dict | None = None
        self.loss = float("nan")
        self.fingerprint: tuple | None = None


def report_skipped(graph: ChannelGraph, skipped: dict[str, str], *, strict: bool, what: str) -> None:
    """Warn about (or, with ``strict``, refuse) layers that will not grow, leaving out those that cannot by nature
    (their channels are the model's output; the forward never calls them, as an averaged copy kept beside the
    model), those the user excluded, and those that do grow, copied with a site they are coupled to."""
    quiet = ("model output", "excluded by the user", "it is never called", "copied exactly when site")
    notable = {name: reason for name, reason in skipped.items() if not any(part in reason for part in quiet)}
    if not notable:
        return
    listing = "; ".join(f"'{name}': {reason}" for name, reason in notable.items())
    if strict:
        raise GraphError(f"{what}: {len(notable)} layer(s) cannot grow: {listing}")
    warnings.warn(f"{what}: {len(notable)} layer(s) will not grow: {listing}", SplitgrowWarning, stacklevel=3)


def memory_estimate(graph: ChannelGraph, dtype: torch.dtype = torch.float64) -> dict[str, int]:
    """Bytes of the dense splitting matrices of each site (n * d^2 entries)."""
    size = torch.empty((), dtype=dtype).element_size()
    return {name: site.num_neurons * site.neuron_dim**2 * size for name, site in graph.sites.items()}


def _chosen(graph: ChannelGraph, sites: Sequence[str] | None) -> list[Site]:
    names = list(sites) if sites is not None else [s.name for s in graph.sites.values() if s.splittable]
    unknown = [name for name in names if name not in graph.sites]
    if unknown:
        known = ", ".join(graph.sites) or "none"
        note = f" ({graph.not_sites[unknown[0]]})" if unknown[0] in graph.not_sites else ""
        raise GraphError(f"'{unknown[0]}' is not a site{note}; sites: {known}")
    return [graph.sites[name] for name in names]


@dataclass
class _Pass:
    dense: dict[str, Tensor]
    operators: dict[str, SiteOperator]
    weight: float
    batches: int
    loss: float = float("nan")


class Accumulator:
    """Statistics of chosen sites accumulated batch by batch: dense matrices for ``dense_sites``, cached statistics
    (a matrix-free operator) for ``operator_sites``. ``result`` gives the mean matrices and the operators so far."""

    def __init__(
        self,
        graph: ChannelGraph,
        dense_sites: Sequence[Site] = (),
        operator_sites: Sequence[Site] = (),
        *,
        dtype: torch.dtype = torch.float64,
        operator_dtype: torch.dtype = torch.float32,
        max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
        max_positions: int | None = None,
        seed: int = 0,
    ) -> None:
        self.graph = graph
        self.dense_sites, self.operator_sites = list(dense_sites), list(operator_sites)
        self.dtype, self.max_temporary_elements = dtype, max_temporary_elements
        self.totals: dict[str, Tensor] = {}
        self.weight, self.batches, self.loss_sum = 0.0, 0, 0.0
        self._loss_operators: dict[str, LossHessianOperator] = {}
        self.operators: dict[str, SiteOperator] = {}
        positions = torch.Generator().manual_seed(seed)  # the grid offsets of subsampled positions
        for site in self.operator_sites:
            if site.engine == "ridge":
                self.operators[site.name] = RidgeOperator.for_site(
                    graph, site, operator_dtype, max_positions=max_positions, generator=positions
                )
            elif site.engine == "chain":
                self.operators[site.name] = ChainOperator(graph, site, operator_dtype)
            elif site.engine == "loss":
                self.operators[site.name] = LossHessianOperator(graph, site, operator_dtype)
            else:
                self.operators[site.name] = SegmentOperator.for_site(graph, site, operator_dtype)

    @property
    def sites(self) -> list[Site]:
        return [*self.dense_sites, *self.operator_sites]

    def add(self, record) -> None:
        """One batch's contribution."""
        graph = self.graph
        self.weight += record.weight
        self.batches += 1
        self.loss_sum += record.scale * record.loss
        for site in self.dense_sites:
            if site.engine == "ridge":
                matrices = ridge_dense(graph, site, record, self.dtype, self.max_temporary_elements)
            elif site.engine == "chain":
                matrices = chain_dense(graph, site, record, self.dtype, self.max_temporary_elements)
            elif site.engine == "loss":
                operator = self._loss_operators.get(site.name) or LossHessianOperator(graph, site, self.dtype)
                self._loss_operators[site.name] = operator
                operator.batches, operator.total_weight = [record], record.weight
                matrices = operator.dense() * record.weight / record.scale if record.scale else operator.dense()
            else:
                matrices = segment_dense(graph, site, record, self.dtype, self.max_temporary_elements)
            contribution = record.scale * matrices
            previous = self.totals.get(site.name)
            self.totals[site.name] = contribution if previous is None else previous + contribution
        for site in self.operator_sites:
            self.operators[site.name].add(record)

    def result(self, reduce: Callable[[Tensor], Tensor] | None = None) -> _Pass:
        """The mean dense matrices and the operators over the batches so far (summed over processes with
        ``reduce``)."""
        totals, weight, loss = self.totals, self.weight, self.loss_sum
        if reduce is not None:
            totals = {name: reduce(total.clone()) for name, total in totals.items()}
            weight = float(reduce(torch.tensor(weight, dtype=torch.float64)))
            loss = float(reduce(torch.tensor(loss, dtype=torch.float64)))
        mean = {name: total / weight for name, total in totals.items()}
        return _Pass(mean, self.operators, weight, self.batches, loss / weight if weight else float("nan"))


def one_pass(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    *,
    dense_sites: Sequence[Site] = (),
    operator_sites: Sequence[Site] = (),
    loss_function: LossFunction | None = None,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    batches: int | None = None,
    dtype: torch.dtype = torch.float64,
    operator_dtype: torch.dtype = torch.float32,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
    progress: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
    max_positions: int | None = None,
    seed: int = 0,
) -> _Pass:
    """One pass over the data: the mean dense matrices of ``dense_sites`` and the operators (cached statistics)
    of ``operator_sites`` (reading at most about ``max_positions`` positions of a convolution, grid offsets drawn
    from ``seed``: see :func:`splitting_eigenpairs`). ``reduce`` sums a tensor over the processes of a distributed
    run (see :mod:`splitgrow.statistics.distributed`)."""
    accumulator = Accumulator(
        graph,
        dense_sites,
        operator_sites,
        dtype=dtype,
        operator_dtype=operator_dtype,
        max_temporary_elements=max_temporary_elements,
        max_positions=max_positions,
        seed=seed,
    )
    if not accumulator.sites:  # nothing to compute: no pass over the data
        return accumulator.result()
    for record in record_batches(
        model,
        graph,
        data,
        accumulator.sites,
        loss_function=loss_function,
        closure=closure,
        reduction=reduction,
        batches=batches,
        progress=progress,
        reduce=reduce,
    ):
        accumulator.add(record)
    return accumulator.result(reduce)


def splitting_matrices(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    loss_function: LossFunction | None = None,
    *,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    dtype: torch.dtype = torch.float64,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
    progress: bool = False,
) -> dict[str, Tensor]:
    """The dense (n, d, d) splitting matrix of every neuron of every site, over (part of) a dataset.

    Args:
        model: the network the graph was traced from.
        graph: its :class:`~splitgrow.graph.ChannelGraph` (GraphError if the model changed since).
        data: an iterable of batches (see :mod:`splitgrow.statistics.recording` for the contract).
        loss_function: ``loss_function(model(inputs), targets)`` for ``(inputs, targets)`` batches; or
        closure: ``closure(model, batch) -> (loss, weight)`` for any batch.
        reduction: ``"mean"``, ``"sum"`` or ``"auto"`` (a torch loss module's own ``reduction``, else mean).
        sites: names of the sites to compute (default: all splittable ones).
        batches: use only the first this many batches.
        dtype: accumulation dtype (float64 by default).
        max_temporary_elements: memory bound on temporaries.
        progress: show a progress bar.
    """
    chosen = _chosen(graph, sites)
    found = one_pass(
        model,
        graph,
        data,
        dense_sites=chosen,
        loss_function=loss_function,
        closure=closure,
        reduction=reduction,
        batches=batches,
        dtype=dtype,
        max_temporary_elements=max_temporary_elements,
        progress=progress,
    )
    return found.dense


def splitting_operators(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    loss_function: LossFunction | None = None,
    *,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    max_positions: int | None = None,
    seed: int = 0,
) -> dict[str, SiteOperator]:
    """Matrix-free splitting matrices of every site (``matvec``: (n, d) -> (n, d)), from statistics of (part of)
    a dataset cached in ``dtype`` (``max_positions``, ``seed``: as for :func:`splitting_eigenpairs`)."""
    chosen = _chosen(graph, sites)
    found = one_pass(
        model,
        graph,
        data,
        operator_sites=chosen,
        loss_function=loss_function,
        closure=closure,
        reduction=reduction,
        batches=batches,
        operator_dtype=dtype,
        progress=progress,
        max_positions=max_positions,
        seed=seed,
    )
    return found.operators


def splitting_eigenpairs(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable,
    loss_function: LossFunction | None = None,
    *,
    closure: LossClosure | None = None,
    reduction: str = "auto",
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    solver: str = "dense",
    dtype: torch.dtype = torch.float64,
    operator_dtype: torch.dtype = torch.float32,
    tolerance: float = ITERATIVE_TOLERANCE,
    max_iterations: int = 300,
    rayleigh_epochs: int = 10,
    rayleigh_learning_rate: float = 0.01,
    warm_start: dict[str, Tensor] | None = None,
    start: str = "subspace",
    subspace_dim: int = 32,
    dense_bytes: int = DEFAULT_DENSE_BYTES,
    keep_matrices: bool = False,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
    seed: int = 0,
    progress: bool = False,
    strict: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
    largest: bool = False,
    max_positions: int | None = None,
) -> SplittingResults:
    """Splitting indexes and gradients of every splittable site, from one pass over (part of) the data.

    Args:
        model, graph, data, loss_function, closure, reduction, sites, batches, progress: as for
            :func:`splitting_matrices`.
        solver: ``"dense"`` (form S, batched ``eigh``: exact, n d^2 memory), ``"lobpcg"`` (matrix-free
            :func:`~splitgrow.solvers.lobpcg_smallest` on the cached statistics), ``"rayleigh"`` (the energy-aware
            paper's stochastic Rayleigh-quotient descent) or ``"auto"`` (dense where it is the cheaper: small
            neurons, ``AUTO_DENSE_DIM``, whose matrices fit in ``dense_bytes``; LOBPCG elsewhere).
        dtype: accumulation dtype of the dense matrices.
        operator_dtype: dtype in which the matrix-free solvers cache statistics and compute products.
        tolerance, max_iterations: of the iterative solvers (relative residual; iteration cap).
        rayleigh_epochs, rayleigh_learning_rate: of the Rayleigh-quotient solver.
        warm_start: starting directions per site (e.g. the previous growth step's); they take precedence, except
            in rows of zeros, which start as without one (give zeros where the previous index was not negative:
            its direction then spans the null space of a semidefinite S, which often stays an exact eigenvector
            of the next S with eigenvalue 0, where LOBPCG would stop at once above a negative lambda_min).
        start: how LOBPCG starts otherwise: ``"subspace"`` (each neuron's lowest Ritz pair in the site's dominant
            input subspace of dimension ``subspace_dim``, where the neurons share their inputs; random elsewhere)
            or ``"random"``. A residual test cannot tell which eigenpair LOBPCG converged to; from the subspace
            start it settles above lambda_min far less often than from random starts.
        keep_matrices: also return the dense matrices (dense solver only).
        seed: seed of the random starting directions.
        strict: raise GraphError instead of warning when a layer will not grow.
        reduce: sum over processes (distributed statistics; see :mod:`splitgrow.statistics.distributed`).
        largest: also compute lambda_max and v_max (for signed splitting; dense or lobpcg solver).
        max_positions: the matrix-free statistics of a convolution read about this many output positions per
            sample at most, on a regular grid with a random offset per batch (an unbiased estimate of S at a
            fraction of the cost: :class:`~splitgrow.statistics.ridge.RidgeOperator`); None reads them all.
            Dense statistics and sites of the other engines read every position.

    Returns:
        :class:`SplittingResults`: a dict of :class:`SiteSplitting` by site, with ``skipped``.
    """
    options = SolverOptions(
        solver=solver,
        dtype=dtype,
        operator_dtype=operator_dtype,
        tolerance=tolerance,
        max_iterations=max_iterations,
        rayleigh_epochs=rayleigh_epochs,
        rayleigh_learning_rate=rayleigh_learning_rate,
        start=start,
        subspace_dim=subspace_dim,
        dense_bytes=dense_bytes,
        keep_matrices=keep_matrices,
        max_temporary_elements=max_temporary_elements,
        seed=seed,
        largest=largest,
        max_positions=max_positions,
    )
    graph.check_current()
    chosen = _chosen(graph, sites)
    skipped = graph.skipped()
    report_skipped(graph, skipped, strict=strict, what="splitting statistics")
    accumulator = options.accumulator(graph, chosen)
    if chosen:
        for record in record_batches(
            model,
            graph,
            data,
            chosen,
            loss_function=loss_function,
            closure=closure,
            reduction=reduction,
            batches=batches,
            progress=progress,
            reduce=reduce,
        ):
            accumulator.add(record)
    return solve(accumulator, options, skipped=skipped, warm_start=warm_start, reduce=reduce)


@dataclass(frozen=True)
class SolverOptions:
    """How the indexes are computed from the statistics (see :func:`splitting_eigenpairs` for each field)."""

    solver: str = "dense"
    dtype: torch.dtype = torch.float64
    operator_dtype: torch.dtype = torch.float32
    tolerance: float = ITERATIVE_TOLERANCE
    max_iterations: int = 300
    rayleigh_epochs: int = 10
    rayleigh_learning_rate: float = 0.01
    start: str = "subspace"
    subspace_dim: int = 32
    dense_bytes: int = DEFAULT_DENSE_BYTES
    keep_matrices: bool = False
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS
    seed: int = 0
    largest: bool = False
    max_positions: int | None = None

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.largest and self.solver == "rayleigh":
            raise ConfigError("the largest eigenpairs (signed splitting) need the dense or the lobpcg solver")
        if self.start not in STARTS:
            raise ConfigError(f"start must be one of {', '.join(STARTS)}, got {self.start!r}")
        if self.max_positions is not None and not is_count(self.max_positions, 1):
            raise ConfigError(
                f"max_positions must be an integer >= 1 (or None: every position), got {self.max_positions!r}"
            )
        for name in ("dtype", "operator_dtype"):
            value = getattr(self, name)
            if not (isinstance(value, torch.dtype) and value.is_floating_point):
                raise ConfigError(f"{name} must be a floating-point torch.dtype (torch.float64, ...), got {value!r}")
        counts = {"max_iterations": 1, "rayleigh_epochs": 1, "subspace_dim": 0, "seed": 0, "dense_bytes": 0}
        for name, least in {**counts, "max_temporary_elements": 1}.items():
            if not is_count(getattr(self, name), least):
                raise ConfigError(f"{name} must be an integer >= {least}, got {getattr(self, name)!r}")
        for name in ("tolerance", "rayleigh_learning_rate"):
            if not (is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        resolution = 4 * torch.finfo(self.operator_dtype).eps  # what products in that precision resolve
        if self.solver in ("lobpcg", "auto") and self.tolerance < resolution:
            warnings.warn(
                f"tolerance {self.tolerance:g} is below what an operator in {self.operator_dtype} resolves (about "
                f"{resolution:.0e}): LOBPCG will run max_iterations without converging; pass "
                "operator_dtype=torch.float64 for tolerances this small",
                SplitgrowWarning,
                stacklevel=3,
            )

    def method(self, graph: ChannelGraph, site: Site) -> str:
        """The solver of one site ("auto": dense for small neurons whose matrices fit in ``dense_bytes``)."""
        if self.solver != "auto":
            return self.solver
        largest = AUTO_DENSE_DIM if site.engine == "ridge" else AUTO_DENSE_DIM_OTHER
        fits = memory_estimate(graph)[site.name] <= self.dense_bytes
        return "dense" if fits and site.neuron_dim <= largest else "lobpcg"

    def accumulator(self, graph: ChannelGraph, sites: Sequence[Site]) -> Accumulator:
        methods = {site.name: self.method(graph, site) for site in sites}
        return Accumulator(
            graph,
            [s for s in sites if methods[s.name] == "dense"],
            [s for s in sites if methods[s.name] != "dense"],
            dtype=self.dtype,
            operator_dtype=self.operator_dtype,
            max_temporary_elements=self.max_temporary_elements,
            max_positions=self.max_positions,
            seed=self.seed,
        )


#: how much of the fresh start a warm start keeps (relative norm): enough to move LOBPCG off a warm direction that
#: is an exact eigenvector of the new S for an eigenvalue above lambda_min, where it would stop at once
WARM_START_MIX = 0.1


def _warm(warm: Tensor, fresh: Tensor) -> Tensor:
    """Starting vectors from warm starts (unit rows) with a little of the fresh start; rows of zeros start fresh."""
    unit = fresh / fresh.norm(dim=1, keepdim=True).clamp_min(torch.finfo(fresh.dtype).tiny)
    given = warm.norm(dim=1, keepdim=True)
    mixed = warm / given.clamp_min(torch.finfo(warm.dtype).tiny) + WARM_START_MIX * unit
    return torch.where(given > 0, mixed, fresh)


def solve(
    accumulator: Accumulator,
    options: SolverOptions,
    *,
    skipped: dict[str, str] | None = None,
    warm_start: dict[str, Tensor] | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> SplittingResults:
    """Every site's smallest eigenpairs from the statistics accumulated so far."""
    if reduce is not None and options.solver == "rayleigh":
        raise ValueError("the Rayleigh-quotient solver is stochastic per batch: use dense or lobpcg across processes")
    found = accumulator.result(reduce)
    generator = torch.Generator().manual_seed(options.seed)
    results = SplittingResults(skipped=skipped, weight=found.weight, batches=found.batches)
    results.loss = found.loss
    graph = accumulator.graph
    for site in accumulator.sites:
        method = "dense" if site.name in found.dense else options.method(graph, site)
        common = {
            "site": site.name,
            "exact": site.exact,
            "surrogate": site.surrogate,
            "solver": method,
            "members": [m.module for m in site.members],
        }
        if site.name in found.dense:
            matrices = found.dense[site.name]
            eigenpairs = dense_eigenpairs(matrices)
            scale = float(torch.linalg.matrix_norm(matrices).max()) if matrices.numel() else 0.0
            floor = DENSE_NOISE * scale
            if options.largest:
                largest = dense_eigenpairs(-matrices)
                common["largest_indexes"] = _zero_within(-largest.indexes, floor)
                common["largest_directions"] = largest.directions
            results[site.name] = SiteSplitting(
                indexes=_zero_within(eigenpairs.indexes, floor),
                directions=eigenpairs.directions,
                converged=torch.ones(site.num_neurons, dtype=torch.bool, device=eigenpairs.indexes.device),
                matrices=matrices if options.keep_matrices else None,
                noise_floor=floor,
                **common,
            )
            continue
        operator = found.operators[site.name]
        if method == "lobpcg" and operator.device.type == "cuda":
            # fewer, larger kernels: a GPU's win; on a CPU merging made a VGG19 phase slower in a trial (the
            # stochastic solver needs the batches as they came anyway)
            operator.consolidate()
        if reduce is not None:
            operator = _Reduced(operator, reduce)
        warm = None if warm_start is None else warm_start.get(site.name)
        if warm is not None and warm.shape != (site.num_neurons, site.neuron_dim):
            warm = None
        initial = None
        if method == "lobpcg" and options.start == "subspace":
            initial = operator.ritz_start(options.subspace_dim, generator)
        if initial is None:
            initial = torch.randn((site.num_neurons, site.neuron_dim), generator=generator, dtype=torch.float64)
        if warm is not None:
            initial = _warm(warm.to(initial), initial)
        initial = initial.to(device=operator.device, dtype=options.operator_dtype)
        converged = None
        if method == "lobpcg":
            solved = lobpcg_smallest(
                operator.matvec, initial, tolerance=options.tolerance, max_iterations=options.max_iterations
            )
            if options.largest:
                # lambda_max of S is -lambda_min of -S: the same solver on the negated products
                top = lobpcg_smallest(
                    lambda directions, operator=operator: -operator.matvec(directions),
                    torch.randn(initial.shape, generator=generator, dtype=torch.float64).to(initial),
                    tolerance=options.tolerance,
                    max_iterations=options.max_iterations,
                )
                top_indexes = -top.indexes.double()
                top_floor = options.tolerance * float(top_indexes.abs().max()) if top_indexes.numel() else 0.0
                common["largest_indexes"] = _zero_within(top_indexes, top_floor)
                common["largest_directions"] = top.directions.double()
                converged = solved.converged & top.converged
        else:
            solved = rayleigh_quotient_descent(
                operator.matvec_batch,
                operator.num_batches,
                operator.matvec,
                initial,
                epochs=options.rayleigh_epochs,
                learning_rate=options.rayleigh_learning_rate,
                tolerance=options.tolerance,
            )
        indexes = solved.indexes.double()
        floor = options.tolerance * float(indexes.abs().max()) if indexes.numel() else 0.0
        results[site.name] = SiteSplitting(
            indexes=_zero_within(indexes, floor),
            directions=solved.directions.double(),
            converged=solved.converged if converged is None else converged,
            iterations=solved.iterations,
            products=solved.products,
            noise_floor=floor,
            **common,
        )
    return results


def _zero_within(indexes: Tensor, floor: float) -> Tensor:
    return torch.where(indexes.abs() <= floor, torch.zeros_like(indexes), indexes)


class _Reduced:
    """An operator whose products are summed over the processes of a distributed run (weights included)."""

    def __init__(self, operator: SiteOperator, reduce: Callable[[Tensor], Tensor]) -> None:
        self.operator = operator
        self.reduce = reduce
        self.total = float(reduce(torch.tensor(operator.total_weight, dtype=torch.float64)))
        self.num_batches = operator.num_batches
        self.device = operator.device

    def matvec(self, directions: Tensor) -> Tensor:
        local = self.operator.matvec(directions) * self.operator.total_weight
        return self.reduce(local) / self.total

    def matvec_batch(self, index: int, directions: Tensor) -> Tensor:
        return self.operator.matvec_batch(index, directions)

    def ritz_start(self, dim: int, generator: torch.Generator) -> Tensor | None:
        return None  # the subspace would differ between processes; start at random (the same seed everywhere)
