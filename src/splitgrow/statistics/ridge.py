"""Closed-form statistics of a *ridge* site: producer -> [BatchNorm] -> activation (MATH.md), or several producers,
each through its BatchNorm, summed into one activation (a ResNet block with a convolution shortcut).

With h_p the producer's input rows, u the activation's input, g = dL/da its output gradient and s the BatchNorm
scale (1 without one),

    S_j = sum_p c[p, j] h_p h_p^T,    c = g * phi''(u) * s^2.

With several producers the neuron is their rows together and h_p is their input rows side by side, each scaled by
its own branch's BatchNorm: S_j = D_j (sum_p c[p, j] h_p h_p^T) D_j with c = g * phi''(u) and D_j the scales.

Dense matrices are accumulated from the handler's rows (:func:`grouped_ridge_matrices`); the matrix-free operator
applies S V = ((H V^T) * C)^T H with the handler's forward pass and its adjoint, never forming H or S. A good
start for an iterative solver comes from the same structure: every S_j reads the same rows h_p, so in a subspace Q
(d x k) of the dominant input directions all the compressed matrices Q^T S_j Q = (HQ)^T diag(c_j) (HQ) cost one
pass over the k features HQ (:meth:`RidgeOperator.ritz_start`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import ChannelGraph, Site
from ..layers.normalization import batch_norm_scale
from .closed_form import DEFAULT_MAX_TEMPORARY_ELEMENTS
from .operator import CachedBatchOperator
from .recording import BatchRecord, recorded_inputs


def _along(vector: Tensor, like: Tensor, dim: int) -> Tensor:
    """``vector`` shaped to broadcast along dimension ``dim`` of ``like``."""
    shape = [1] * like.dim()
    shape[dim] = -1
    return vector.reshape(shape).to(like)


@dataclass
class RidgeFields:
    """One batch of a ridge site: each branch's (prepared) input, c = g * phi''(u), and each branch's scale (a
    per-channel BatchNorm scale broadcastable over the output, or None)."""

    inputs: list[Tensor]
    coefficients: Tensor
    scales: list[Tensor | None]
    scale: float = 1.0
    weight: float = 1.0


def ridge_fields(graph: ChannelGraph, site: Site, record: BatchRecord, dtype: torch.dtype | None = None) -> RidgeFields:
    """The fields of one batch (cast to ``dtype`` when given)."""
    names = recorded_inputs(graph, site)
    pre = record.values[names[-1]]
    coefficients = record.gradients[site.activation_node] * site.activation.d2phi(pre)
    dim = site.members[0].handler.output_channel_dim % pre.dim()
    inputs, scales = [], []
    for member, (_, batch_norm), name in zip(site.members, site.branches, names[:-1]):
        module = graph.modules[member.module]
        value = record.values[name] if dtype is None else record.values[name].to(dtype)
        inputs.append(member.handler.prepare_inputs(module, value))
        scale = None if batch_norm is None else _along(batch_norm_scale(graph.modules[batch_norm]), pre, dim)
        scales.append(scale if scale is None or dtype is None else scale.to(dtype))
    if dtype is not None:
        coefficients = coefficients.to(dtype)
    return RidgeFields(inputs, coefficients, scales, record.scale, record.weight)


def grouped_ridge_matrices(
    rows: Tensor, coefficients: Tensor, *, max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS
) -> Tensor:
    """S_j = sum_p c[p, j] r[p, g(j)] r[p, g(j)]^T for rows (P, G, d) shared by G equal groups of the n neurons
    (neuron j in group j // (n / G)) and coefficients (P, n); (n, d, d) in the dtype of ``rows``. Neurons are
    processed in chunks whose (chunk, P, d) temporary stays below ``max_temporary_elements``."""
    samples, groups, dim = rows.shape
    neurons = coefficients.shape[1]
    per_group = neurons // groups
    coefficients = coefficients.to(rows.dtype)
    out = rows.new_empty((neurons, dim, dim))
    chunk = max(1, max_temporary_elements // max(1, samples * dim))
    for group in range(groups):
        shared = rows[:, group]  # (P, d)
        for start in range(0, per_group, chunk):
            stop = min(per_group, start + chunk)
            first = group * per_group
            weights = coefficients[:, first + start : first + stop].t().unsqueeze(1)  # (chunk, 1, P)
            out[first + start : first + stop] = (shared.t().unsqueeze(0) * weights) @ shared
    return out


def ridge_dense(
    graph: ChannelGraph, site: Site, record: BatchRecord, dtype: torch.dtype, max_temporary_elements: int
) -> Tensor:
    """One batch's (n, d, d) matrices, not yet weighted."""
    fields = ridge_fields(graph, site, record)
    names = recorded_inputs(graph, site)
    rows, neuron_scales = [], []
    for member, name, scale in zip(site.members, names, fields.scales):
        module = graph.modules[member.module]
        rows.append(member.handler.rows(module, record.values[name]).to(dtype))
        vector = torch.ones(site.num_neurons, dtype=dtype) if scale is None else scale.reshape(-1).to(dtype)
        neuron_scales.append(vector.to(rows[-1].device)[:, None].expand(-1, member.neuron_dim))
    first = site.members[0]
    coefficient_rows = first.handler.coefficient_rows(graph.modules[first.module], fields.coefficients)
    matrices = grouped_ridge_matrices(
        torch.cat(rows, dim=2), coefficient_rows, max_temporary_elements=max_temporary_elements
    )
    scales = torch.cat(neuron_scales, dim=1)  # (n, d): each entry's branch scale
    return matrices * scales[:, :, None] * scales[:, None, :]


def grid_steps(grid: Sequence[int], max_positions: int) -> tuple[int, ...]:
    """Steps along the axes of ``grid`` that keep at most ``max_positions`` of its positions: the smallest step s
    common to all axes that is enough, or an axis's own length where that is shorter (an offset below the step
    then always falls inside the axis)."""
    step = 1
    while math.prod(-(-size // step) for size in grid) > max_positions:
        step += 1
    return tuple(min(step, size) for size in grid)


# Rows h_p (samples x positions) read to compress the matrices for LOBPCG's starting vectors: a 32 x 32 feature map
# of 1,024 images has a million, whose k^2 outer products would cost more than the solve they are meant to shorten.
START_ROWS = 2**15


@dataclass
class RidgeOperator(CachedBatchOperator):
    """The splitting matrices of a ridge site as a linear operator on (n, d) directions, from cached batches.

    With ``max_positions``, a convolution site keeps at most that many output positions per sample: every s-th
    position along each spatial axis (:func:`grid_steps`), from offsets drawn per batch with ``generator``, their
    coefficients weighted by the product of the steps. Each batch's S_b is then an unbiased estimate of the one
    over all positions, and a product costs about as much less as there are fewer positions; neighbouring
    positions of a feature map carry much the same information, so the estimate's extra variance is small next
    to that of the sample of images (benchmarks/adaptive_statistics.py measures the selection it gives).
    """

    max_positions: int | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_positions is not None and self.max_positions < 1:
            raise ValueError(f"max_positions must be at least 1, got {self.max_positions}")
        self.modules = [self.graph.modules[m.module] for m in self.site.members]
        self.handlers = [m.handler for m in self.site.members]
        self.slices = [columns for _, columns in self.site.member_slices()]
        #: the grid steps of subsampled positions, one per spatial axis (() or ones: every position), fixed by the
        #: first batch
        self.position_steps: tuple[int, ...] | None = None if self.max_positions is not None else ()
        self._layer_modules = self.modules

    @classmethod
    def for_site(
        cls,
        graph: ChannelGraph,
        site: Site,
        dtype: torch.dtype = torch.float32,
        *,
        max_positions: int | None = None,
        generator: torch.Generator | None = None,
    ) -> RidgeOperator:
        return cls(graph, site, dtype, max_positions=max_positions, generator=generator)

    def _cache(self, record: BatchRecord) -> RidgeFields:
        fields = ridge_fields(self.graph, self.site, record, self.dtype)
        if self.position_steps is None:
            self._choose_steps(fields)
        if not self.subsamples_positions:
            return fields
        offsets = tuple(int(torch.randint(step, (1,), generator=self.generator)) for step in self.position_steps)
        return self.on_grid(fields, offsets)

    @property
    def subsamples_positions(self) -> bool:
        return any(step > 1 for step in self.position_steps or ())

    def _choose_steps(self, fields: RidgeFields) -> None:
        """The grid steps for this site's output grid, and the layers' stand-ins that compute on them."""
        self.position_steps = ()
        if self.site.members[0].handler.output_channel_dim != 1:  # channels last: no grid after them
            return
        steps = grid_steps(fields.coefficients.shape[2:], self.max_positions)
        if all(step == 1 for step in steps):
            return
        views = [handler.on_position_grid(module, steps) for handler, module in zip(self.handlers, self.modules)]
        if all(view is not None for view in views):
            self.position_steps, self.modules = steps, views

    def on_grid(self, fields: RidgeFields, offsets: tuple[int, ...]) -> RidgeFields:
        """One batch's fields on the grid of every ``position_steps[i]``-th position along axis i from ``offsets``,
        weighted so that their mean over all offsets is the batch's own."""
        steps = self.position_steps
        grid = (slice(offset, None, step) for offset, step in zip(offsets, steps))
        coefficients = fields.coefficients[(slice(None), slice(None), *grid)] * math.prod(steps)
        inputs = [  # compact copies: every product reads them, and the full inputs can go
            handler.crop_to_grid(module, prepared, offsets).contiguous()
            for handler, module, prepared in zip(self.handlers, self._layer_modules, fields.inputs)
        ]
        return RidgeFields(inputs, coefficients, fields.scales, fields.scale, fields.weight)

    merges = True

    def _merge(self, cached: list[RidgeFields]) -> RidgeFields:
        inputs = [torch.cat(branch) for branch in zip(*(fields.inputs for fields in cached))]
        coefficients = torch.cat([fields.coefficients for fields in cached])
        weight = sum(fields.weight for fields in cached)
        return RidgeFields(inputs, coefficients, cached[0].scales, cached[0].scale, weight)

    @staticmethod
    def _samples(cached: RidgeFields) -> int:
        return cached.coefficients.shape[0]

    @staticmethod
    def _merge_key(cached: RidgeFields) -> tuple:
        # batches on grids of different offsets can differ in size by a position
        return cached.scale, cached.coefficients.shape[2:], tuple(x.shape[2:] for x in cached.inputs)

    @property
    def device(self) -> torch.device:
        return self.batches[0].coefficients.device if self.batches else self.modules[0].weight.device

    def _product(self, fields: RidgeFields, directions: Tensor) -> Tensor:
        parts = zip(self.handlers, self.modules, fields.inputs, fields.scales, self.slices)
        z = None
        for handler, module, inputs, scale, columns in parts:
            out = handler.apply(module, inputs, directions[:, columns])
            out = out if scale is None else out * scale
            z = out if z is None else z + out
        field_ = z * fields.coefficients
        products = []
        for handler, module, inputs, scale in zip(self.handlers, self.modules, fields.inputs, fields.scales):
            products.append(handler.adjoint(module, inputs, field_ if scale is None else field_ * scale))
        return torch.cat(products, dim=1)

    def memory_bytes(self) -> int:
        """Bytes held by the cached batches."""
        return sum(t.numel() * t.element_size() for f in self.batches for t in (*f.inputs, f.coefficients))

    # ------------------------------------------------------------------ a shared input subspace (Rayleigh-Ritz)

    @property
    def _single(self) -> bool:
        return len(self.modules) == 1

    def _features(self, fields: RidgeFields, basis: Tensor) -> Tensor:
        """s * (H Q) for one batch as (P, k) rows... for one branch; ``basis`` is (d, k)."""
        handler, module = self.handlers[0], self.modules[0]
        output = handler.apply(module, fields.inputs[0], basis.t().contiguous())
        return handler.coefficient_rows(module, output)

    def _effective_coefficients(self, fields: RidgeFields) -> Tensor:
        scale = fields.scales[0]
        coefficients = fields.coefficients if scale is None else fields.coefficients * scale * scale
        return self.handlers[0].coefficient_rows(self.modules[0], coefficients)

    def input_subspace(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        """An orthonormal basis (d, k) of the dominant subspace of the site's input rows (k = min(dim, d)), by
        randomised range finding on H^T H over the first batches that hold ``START_ROWS`` rows; the identity when
        d <= dim (Rayleigh-Ritz is then exact); None when the neurons do not share their inputs (a depthwise
        convolution) or the site sums several producers."""
        dtype, device = self.dtype, self.device
        if self.neuron_dim <= dim:
            return torch.eye(self.neuron_dim, dtype=dtype, device=device)
        if not self._single or not self.handlers[0].shares_inputs(self.modules[0]):
            return None
        handler, module = self.handlers[0], self.modules[0]
        basis = torch.randn((self.neuron_dim, dim), generator=generator, dtype=torch.float64).to(device, dtype)
        # a start needs the dominant directions only: the batches that hold START_ROWS rows are enough
        batches, rows = [], 0
        for fields in self.batches:
            if rows >= START_ROWS:
                break
            batches.append(fields)
            rows += fields.coefficients.numel() // fields.coefficients.shape[1]
        for _ in range(max(1, power_iterations)):
            gram = sum(
                handler.adjoint(module, f.inputs[0], handler.apply(module, f.inputs[0], basis.t().contiguous())).t()
                for f in batches
            )
            basis = torch.linalg.qr(gram)[0]
        return basis

    def compress(self, basis: Tensor, *, max_rows: int | None = None, max_temporary_elements: int = 2**25) -> Tensor:
        """Q^T S_j Q for every neuron j, (n, k, k), for an orthonormal ``basis`` Q (d, k): from the k features HQ
        alone when the neurons share their inputs (reading at most ``max_rows`` rows h_p, an estimate good enough
        for starting vectors), otherwise by k products."""
        k = basis.shape[1]
        if not self._single or not self.handlers[0].shares_inputs(self.modules[0]):
            columns = [self.matvec(basis[:, i].expand(self.num_neurons, -1).contiguous()) for i in range(k)]
            return basis.t().unsqueeze(0) @ torch.stack(columns, dim=2)
        total = basis.new_zeros((self.num_neurons, k * k))
        rows_per_chunk = max(1, max_temporary_elements // (k * k))
        rows_left = max_rows if max_rows is not None else float("inf")
        weight = 0.0
        for fields in self.batches:
            if rows_left <= 0:
                break
            features = self._features(fields, basis)
            coefficients = self._effective_coefficients(fields)
            rows = int(min(features.shape[0], rows_left))
            rows_left -= rows
            weight += fields.weight * rows / features.shape[0]
            for start in range(0, rows, rows_per_chunk):
                stop = min(rows, start + rows_per_chunk)
                g = features[start:stop]
                outer = (g.unsqueeze(2) * g.unsqueeze(1)).reshape(g.shape[0], k * k)
                total += fields.scale * (coefficients[start:stop].t() @ outer)
        return (total / weight).reshape(self.num_neurons, k, k)

    def ritz_start(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        """Starting directions (n, d): each neuron's lowest Ritz vector in the site's dominant input subspace of
        dimension ``dim``; None where there is no cheap compression."""
        basis = self.input_subspace(dim, generator, power_iterations)
        if basis is None:
            return None
        compressed = self.compress(basis, max_rows=START_ROWS)
        _, vectors = torch.linalg.eigh(0.5 * (compressed + compressed.transpose(1, 2)))
        return vectors[:, :, 0] @ basis.t()
