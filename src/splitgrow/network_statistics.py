"""Splitting matrices, indexes and splitting gradients of every site of a network, from one pass over data.

Forward hooks record, for each site, the producer's input (unfolded into patches for a convolution, with the
constant 1 of the bias), the activation's input u and output a; one ``torch.autograd.grad`` call then gives
g = dL/da for every site at once, without touching the parameters' ``.grad``. With an eval-mode BatchNorm between
the producer and the activation (scale s = gamma / sqrt(running_var + eps)),

    S_j = sum_p c[p, j] h_p h_p^T,   c = g * phi''(u) * s^2                               (MATH.md)

accumulated over batches (each batch's loss is a mean, so batch b is weighted by its size over the total). For a
site feeding a depthwise block (producer -> BN -> phi1 -> depthwise conv k -> BN2 -> phi2), whose offspring pass
separately through phi2, the exact splitting matrix adds

    sum_q c2[q, j] J_q J_q^T,   c2 = g2 * phi2''(u2) * s2^2,   J = k_j * (phi1'(u1) s1 h)   (a depthwise conv)

The model is put in eval mode for the pass (BatchNorm with running statistics, dropout off) and restored after.
Memory: the hooks keep one batch of activations, as a training step does; the matrices are accumulated in chunks
of neurons so that no temporary exceeds ``max_temporary_elements``; the result holds n * d^2 numbers per site.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import activation_of_module
from .graph import ChannelGraph, Site
from .operators import SiteOperator, numeric_padding, pad_same
from .solvers import dense_eigenpairs, lobpcg_smallest, rayleigh_quotient_descent
from .statistics import DEFAULT_MAX_TEMPORARY_ELEMENTS, ridge_splitting_matrices

LossFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SiteSplitting:
    """Splitting indexes and gradients of one site.

    Attributes:
        site: the producer module's name.
        indexes: (n,) lambda_min of each output channel.
        directions: (n, d) unit splitting gradients; entries follow the flattened weight row, then the bias.
        exact: whether eps^2/2 * lambda is the exact second-order loss change (see ChannelGraph).
        surrogate: the phi'' surrogate used (ReLU networks), or None.
        matrices: the (n, d, d) splitting matrices when requested.
        converged: (n,) False for a neuron whose iterative solve did not meet the tolerance (never selected).
        solver: the solver that produced them; iterations and products: its work (iterative solvers).
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


def _batch_norm_scale(module: nn.Module | None, channels: int, like: Tensor) -> Tensor:
    if module is None:
        return torch.ones(channels, dtype=like.dtype, device=like.device)
    return (module.weight / torch.sqrt(module.running_var + module.eps)).detach().to(like)


def _broadcast(vector: Tensor, like: Tensor) -> Tensor:
    shape = [1, -1] + [1] * (like.dim() - 2)
    return vector.view(shape)


def conv_patches(module: nn.Conv2d, inputs: Tensor) -> Tensor:
    """Unfolded input patches of a Conv2d, shape (N, in_channels * kh * kw, L), L output positions."""
    return F.unfold(
        pad_same(module, inputs),
        module.kernel_size,
        dilation=module.dilation,
        padding=numeric_padding(module),
        stride=module.stride,
    )


def _with_bias_column(rows: Tensor, bias: bool) -> Tensor:
    if not bias:
        return rows
    return torch.cat([rows, torch.ones_like(rows[..., :1])], dim=-1)


def _per_position_rows(values: Tensor) -> Tensor:
    """(N, C, *spatial) -> (N * positions, C)."""
    if values.dim() == 2:
        return values
    return values.flatten(2).transpose(1, 2).reshape(-1, values.shape[1])


def _neuron_inputs(module: nn.Module, inputs: Tensor) -> list[tuple[slice, Tensor]]:
    """For each group of output channels sharing their inputs: (channel slice, (P, d) input rows)."""
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return [(slice(0, module.out_features), _with_bias_column(inputs, bias))]
    patches = conv_patches(module, inputs)  # (N, C_in * k, L)
    groups = module.groups
    per_group_in = module.in_channels // groups
    per_group_out = module.out_channels // groups
    kernel = module.kernel_size[0] * module.kernel_size[1]
    rows = []
    for group in range(groups):
        block = patches[:, group * per_group_in * kernel : (group + 1) * per_group_in * kernel]
        flat = block.transpose(1, 2).reshape(-1, per_group_in * kernel)
        rows.append((slice(group * per_group_out, (group + 1) * per_group_out), _with_bias_column(flat, bias)))
    return rows


def _site_matrices(
    site: Site,
    module: nn.Module,
    producer_input: Tensor,
    coefficients: Tensor,
    dtype: torch.dtype,
    max_temporary_elements: int,
) -> Tensor:
    """sum_p c[p, j] h_p h_p^T for one batch, grouped convolutions handled group by group."""
    coefficient_rows = _per_position_rows(coefficients).to(dtype)
    out = torch.zeros((site.num_neurons, site.neuron_dim, site.neuron_dim), dtype=dtype, device=coefficients.device)
    if site.kind == "depthwise":
        patches = conv_patches(module, producer_input)  # (N, C * k, L)
        n, kernel = site.num_neurons, module.kernel_size[0] * module.kernel_size[1]
        rows = patches.view(patches.shape[0], n, kernel, -1).permute(0, 3, 1, 2).reshape(-1, n, kernel)
        rows = _with_bias_column(rows, module.bias is not None).to(dtype)  # (P, n, d)
        chunk = max(1, max_temporary_elements // max(1, rows.shape[0] * site.neuron_dim))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            part = rows[:, start:stop]
            weighted = part * coefficient_rows[:, start:stop, None]
            out[start:stop] = torch.einsum("pnd,pne->nde", weighted, part)
        return out
    for channels, rows in _neuron_inputs(module, producer_input):
        out[channels] = ridge_splitting_matrices(
            rows.to(dtype), coefficient_rows[:, channels], max_temporary_elements=max_temporary_elements
        )
    return out


def _depthwise_correction(
    module: nn.Module,
    producer_input: Tensor,
    first_slope: Tensor,
    depthwise: nn.Conv2d,
    second_coefficients: Tensor,
    dtype: torch.dtype,
    max_temporary_elements: int,
) -> Tensor:
    """sum_q c2[q, j] J_q J_q^T with J = depthwise_j * (phi1'(u1) s1 h) for every channel j of a site.

    ``first_slope`` is phi1'(u1) * s1 with shape (N, n, H1, W1); ``second_coefficients`` is
    g2 * phi2''(u2) * s2^2 with shape (N, n, H2, W2).
    """
    batch, n, height, width = first_slope.shape
    if isinstance(module, nn.Linear):
        raise AssertionError("a depthwise block follows convolutions only")
    field = conv_patches(module, producer_input).view(batch, -1, height, width)  # (N, d0, H1, W1)
    if module.bias is not None:
        field = torch.cat([field, torch.ones_like(field[:, :1])], dim=1)
    field = field.to(dtype)
    dim = field.shape[1]
    slope = first_slope.to(dtype)
    kernels = depthwise.weight.detach().to(dtype)  # (n, 1, kh, kw)
    coefficients = second_coefficients.to(dtype)
    out = torch.zeros((n, dim, dim), dtype=dtype, device=first_slope.device)
    positions = second_coefficients.shape[2] * second_coefficients.shape[3]
    chunk = max(1, max_temporary_elements // max(1, batch * dim * max(height * width, positions)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        size = stop - start
        signal = (slope[:, start:stop, None] * field[:, None]).reshape(batch, size * dim, height, width)
        weight = kernels[start:stop].repeat_interleave(dim, dim=0)  # (size * d, 1, kh, kw)
        jacobian = F.conv2d(
            signal,
            weight,
            stride=depthwise.stride,
            padding=depthwise.padding,
            dilation=depthwise.dilation,
            groups=size * dim,
        )  # (N, size * d, H2, W2)
        jacobian = jacobian.view(batch, size, dim, -1).permute(0, 3, 1, 2).reshape(-1, size, dim)  # (P2, size, d)
        weights = coefficients[:, start:stop].flatten(2).transpose(1, 2).reshape(-1, size)  # (P2, size)
        out[start:stop] = torch.einsum("pnd,pn,pne->nde", jacobian, weights, jacobian)
    return out


class _Recorder:
    """Forward hooks that keep the tensors the splitting matrices need, for one batch at a time."""

    def __init__(self, model: nn.Module, graph: ChannelGraph, sites: Sequence[Site]) -> None:
        self.values: dict[str, Tensor] = {}
        self.handles = []
        modules = dict(model.named_modules())
        wanted_inputs: set[str] = set()
        wanted_activations: set[str] = set()
        for site in sites:
            wanted_inputs.add(site.name)
            wanted_activations.add(site.activation_module)
            if site.depthwise_chain is not None:
                wanted_activations.add(site.depthwise_chain[2])
        for name in wanted_inputs:
            self.handles.append(modules[name].register_forward_hook(self._keep_input(name)))
        for name in wanted_activations:
            self.handles.append(modules[name].register_forward_hook(self._keep_activation(name)))

    def _keep_input(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.values[f"{name}:input"] = inputs[0].detach()

        return hook

    def _keep_activation(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.values[f"{name}:pre"] = inputs[0].detach()
            self.values[f"{name}:out"] = output

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.values.clear()


def _batches(data: Iterable, batches: int | None) -> Iterable:
    for count, batch in enumerate(data):
        if batches is not None and count >= batches:
            return
        yield batch


@dataclass
class BatchStatistics:
    """What one batch contributes to one site's splitting matrices.

    Attributes:
        inputs: the producer's input (N, in_features) or (N, C, H, W).
        coefficients: c = g * phi''(u) * s^2, shaped like the site's output.
        slope, second_coefficients: for a site feeding a depthwise block, phi1'(u1) * s1 and
            g2 * phi2''(u2) * s2^2 (see the module docstring); None otherwise.
    """

    inputs: Tensor
    coefficients: Tensor
    slope: Tensor | None = None
    second_coefficients: Tensor | None = None


def _site_statistics(
    site: Site, modules: dict[str, nn.Module], values: dict[str, Tensor], gradients: dict[str, Tensor | None]
) -> BatchStatistics:
    pre = values[f"{site.activation_module}:pre"]
    gradient = gradients[site.activation_module]
    if gradient is None:
        gradient = torch.zeros_like(pre)
    batch_norm = modules[site.batch_norm] if site.batch_norm else None
    scale = _broadcast(_batch_norm_scale(batch_norm, site.num_neurons, pre), pre)
    statistics = BatchStatistics(values[f"{site.name}:input"], gradient * site.activation.d2phi(pre) * scale**2)
    if site.depthwise_chain is not None:
        _, second_norm_name, second_activation_name = site.depthwise_chain
        second_activation = activation_of_module(modules[second_activation_name])
        second_pre = values[f"{second_activation_name}:pre"]
        second_gradient = gradients[second_activation_name]
        if second_gradient is None:
            second_gradient = torch.zeros_like(second_pre)
        second_norm = modules[second_norm_name] if second_norm_name else None
        second_scale = _broadcast(_batch_norm_scale(second_norm, site.num_neurons, second_pre), second_pre)
        statistics.second_coefficients = second_gradient * second_activation.d2phi(second_pre) * second_scale**2
        statistics.slope = site.activation.dphi(pre) * scale
    return statistics


def collect_statistics(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable[tuple[Tensor, Tensor]],
    loss_function: LossFunction,
    *,
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, dict[str, BatchStatistics]]]:
    """One pass over the data with hooks: yields (batch size, statistics of every chosen site) per batch.

    The model is in eval mode during the pass and restored after it, even when the consumer stops early.
    """
    chosen = [graph.sites[name] for name in (sites if sites is not None else graph.sites)]
    if not chosen:
        return
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    recorder = _Recorder(model, graph, chosen)
    was_training = model.training
    model.eval()
    iterator = _batches(data, batches)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=batches, desc="splitting statistics", unit="batch", leave=False)
    count = 0
    try:
        for inputs, targets in iterator:
            inputs, targets = inputs.to(device), targets.to(device)
            loss = loss_function(model(inputs), targets)
            activation_names = sorted({name.rsplit(":", 1)[0] for name in recorder.values if name.endswith(":out")})
            outputs = [recorder.values[f"{name}:out"] for name in activation_names]
            if any(not output.requires_grad for output in outputs):
                raise ValueError("an activation output does not require grad; are the model's parameters frozen?")
            gradients = dict(zip(activation_names, torch.autograd.grad(loss, outputs, allow_unused=True)))
            count += 1
            yield (
                inputs.shape[0],
                {site.name: _site_statistics(site, modules, recorder.values, gradients) for site in chosen},
            )
            recorder.values.clear()
    finally:
        recorder.close()
        model.train(was_training)
    if count == 0:
        raise ValueError("the data gave no batches")


def splitting_matrices(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable[tuple[Tensor, Tensor]],
    loss_function: LossFunction,
    *,
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    dtype: torch.dtype = torch.float64,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
    progress: bool = False,
) -> dict[str, Tensor]:
    """The dense (n, d, d) splitting matrix of every output channel of every site, over (a part of) a dataset.

    Args:
        model: the network the graph was built from.
        graph: its :class:`ChannelGraph`.
        data: an iterable of (inputs, targets) batches, e.g. a DataLoader.
        loss_function: ``loss_function(model(inputs), targets)``, a mean over the batch (the loss as trained).
        sites: names of the sites to compute (default: all).
        batches: use only the first this many batches.
        dtype: accumulation dtype (float64 by default).
        max_temporary_elements: memory bound on temporaries (see :mod:`splitgrow.statistics`).
        progress: show a progress bar.
    """
    chosen = list(sites if sites is not None else graph.sites)
    matrices, _ = _one_pass(
        model, graph, data, loss_function, chosen, [], batches, dtype, dtype, max_temporary_elements, progress
    )
    return matrices


def splitting_operators(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable[tuple[Tensor, Tensor]],
    loss_function: LossFunction,
    *,
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> dict[str, SiteOperator]:
    """Matrix-free splitting matrices (:class:`~splitgrow.operators.SiteOperator`) of every site, from the
    statistics of (a part of) a dataset cached in ``dtype``."""
    chosen = list(sites if sites is not None else graph.sites)
    _, operators = _one_pass(model, graph, data, loss_function, [], chosen, batches, torch.float64, dtype, 0, progress)
    return operators


def _one_pass(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable[tuple[Tensor, Tensor]],
    loss_function: LossFunction,
    dense_sites: Sequence[str],
    operator_sites: Sequence[str],
    batches: int | None,
    dtype: torch.dtype,
    operator_dtype: torch.dtype,
    max_temporary_elements: int,
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, SiteOperator]]:
    """One pass over the data: the mean dense matrices of ``dense_sites`` and the matrix-free operators (cached
    statistics) of ``operator_sites``."""
    modules = dict(model.named_modules())
    operators = {}
    for name in operator_sites:
        site = graph.sites[name]
        depthwise = modules[site.depthwise_chain[0]] if site.depthwise_chain is not None else None
        operators[name] = SiteOperator(modules[name], site.num_neurons, site.neuron_dim, depthwise)
    totals: dict[str, Tensor] = {}
    count = 0
    for size, statistics in collect_statistics(
        model, graph, data, loss_function, sites=[*dense_sites, *operator_sites], batches=batches, progress=progress
    ):
        count += size
        for name, batch in statistics.items():
            if name in operators:
                operators[name].add_batch(
                    batch.inputs,
                    batch.coefficients,
                    size,
                    slope=batch.slope,
                    second_coefficients=batch.second_coefficients,
                    dtype=operator_dtype,
                )
            else:
                contribution = size * _dense_contribution(
                    graph.sites[name], modules, batch, dtype, max_temporary_elements
                )
                totals[name] = totals[name] + contribution if name in totals else contribution
    return {name: total / count for name, total in totals.items()}, operators


def _dense_contribution(
    site: Site,
    modules: dict[str, nn.Module],
    batch: BatchStatistics,
    dtype: torch.dtype,
    max_temporary_elements: int,
) -> Tensor:
    module = modules[site.name]
    matrices = _site_matrices(site, module, batch.inputs, batch.coefficients, dtype, max_temporary_elements)
    if site.depthwise_chain is not None:
        matrices += _depthwise_correction(
            module,
            batch.inputs,
            batch.slope,
            modules[site.depthwise_chain[0]],
            batch.second_coefficients,
            dtype,
            max_temporary_elements,
        )
    return matrices


SOLVERS = ("dense", "lobpcg", "rayleigh", "auto")
STARTS = ("subspace", "random")

#: "auto" uses the dense solver for a site whose matrices fit in this many bytes (float64), LOBPCG otherwise
DEFAULT_DENSE_BYTES = 256 * 2**20


def splitting_eigenpairs(
    model: nn.Module,
    graph: ChannelGraph,
    data: Iterable[tuple[Tensor, Tensor]],
    loss_function: LossFunction,
    *,
    sites: Sequence[str] | None = None,
    batches: int | None = None,
    solver: str = "dense",
    dtype: torch.dtype = torch.float64,
    operator_dtype: torch.dtype = torch.float32,
    tolerance: float = 1e-3,
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
) -> dict[str, SiteSplitting]:
    """Splitting indexes and gradients of every site, from one pass over (a part of) the data.

    Args:
        model, graph, data, loss_function, sites, batches, progress: as for :func:`splitting_matrices`.
        solver: ``"dense"`` (form S, batched ``eigh``: exact, n d^2 memory), ``"lobpcg"`` (matrix-free
            :func:`~splitgrow.solvers.lobpcg_smallest` on the cached statistics, O(n d) memory per product),
            ``"rayleigh"`` (the energy-aware paper's stochastic Rayleigh-quotient descent) or ``"auto"`` (dense
            when a site's matrices fit in ``dense_bytes``, LOBPCG otherwise).
        dtype: accumulation dtype of the dense matrices.
        operator_dtype: dtype in which the matrix-free solvers cache statistics and compute products.
        tolerance, max_iterations: of the iterative solvers (relative residual; iteration cap).
        rayleigh_epochs, rayleigh_learning_rate: of the Rayleigh-quotient solver.
        warm_start: starting directions per site (e.g. the previous growth step's); they take precedence.
        start: how LOBPCG starts otherwise: ``"subspace"`` (each neuron's lowest Ritz pair in the site's dominant
            input subspace of dimension ``subspace_dim``, see :meth:`~splitgrow.operators.SiteOperator.ritz_start`;
            random where that is not cheap: grouped convolutions, sites followed by a depthwise block) or
            ``"random"``. A residual test cannot
            tell which eigenpair LOBPCG has converged to; from random starts it sometimes settles on one above
            lambda_min (up to 12% of the site's scale on 25 of 1,024 VGG19 neurons, measured), from the
            subspace start far less often. The Rayleigh-quotient solver always starts at random, as in its paper.
        keep_matrices: also return the dense matrices (dense solver only).
        seed: seed of the random starting directions.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {', '.join(STARTS)}, got {start!r}")
    chosen = list(sites if sites is not None else graph.sites)
    dense_memory = memory_estimate(graph)
    methods = {
        name: solver if solver != "auto" else ("dense" if dense_memory[name] <= dense_bytes else "lobpcg")
        for name in chosen
    }
    all_matrices, operators = _one_pass(
        model,
        graph,
        data,
        loss_function,
        [name for name in chosen if methods[name] == "dense"],
        [name for name in chosen if methods[name] != "dense"],
        batches,
        dtype,
        operator_dtype,
        max_temporary_elements,
        progress,
    )
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for name in chosen:
        site = graph.sites[name]
        common = {"site": name, "exact": site.exact, "surrogate": site.activation.surrogate, "solver": methods[name]}
        if name in all_matrices:
            matrices = all_matrices[name]
            eigenpairs = dense_eigenpairs(matrices)
            results[name] = SiteSplitting(
                indexes=eigenpairs.indexes,
                directions=eigenpairs.directions,
                converged=torch.ones(site.num_neurons, dtype=torch.bool, device=eigenpairs.indexes.device),
                matrices=matrices if keep_matrices else None,
                **common,
            )
            continue
        operator = operators[name]
        initial = None if warm_start is None else warm_start.get(name)
        if initial is None or initial.shape != (site.num_neurons, site.neuron_dim):
            initial = None
            if methods[name] == "lobpcg" and start == "subspace":
                initial = operator.ritz_start(subspace_dim, generator)
            if initial is None:
                initial = torch.randn((site.num_neurons, site.neuron_dim), generator=generator, dtype=torch.float64)
        initial = initial.to(device=operator.device, dtype=operator_dtype)
        if methods[name] == "lobpcg":
            found = lobpcg_smallest(operator.matvec, initial, tolerance=tolerance, max_iterations=max_iterations)
        else:
            found = rayleigh_quotient_descent(
                operator.matvec_batch,
                len(operator.batches),
                operator.matvec,
                initial,
                epochs=rayleigh_epochs,
                learning_rate=rayleigh_learning_rate,
                tolerance=tolerance,
            )
        results[name] = SiteSplitting(
            indexes=found.indexes.double(),
            directions=found.directions.double(),
            converged=found.converged,
            iterations=found.iterations,
            products=found.products,
            **common,
        )
    return results


def memory_estimate(graph: ChannelGraph, dtype: torch.dtype = torch.float64) -> dict[str, int]:
    """Bytes of the dense splitting matrices of each site (n * d^2 entries)."""
    size = torch.empty((), dtype=dtype).element_size()
    return {name: site.num_neurons * site.neuron_dim**2 * size for name, site in graph.sites.items()}
