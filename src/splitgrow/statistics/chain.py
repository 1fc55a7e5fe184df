"""Closed-form statistics of a depthwise-separable *chain* site: P -> [BN1] -> phi1 -> D -> [BN2] -> phi2.

MobileNet and DS-CNN are made of these: a convolution P (the pointwise layer, or the stem) feeds a depthwise
convolution D channel by channel, so P's filter j and D's filter j are one neuron theta = (theta_A, theta_B) whose
output is a2 = phi2(s2 z2 + t2), z2_q = sum_k theta_B[k] a1[q+k] (+ bias), a1 = phi1(s1 theta_A^T h + t1). With
c2 = g2 phi2''(u2) s2^2, w = dL/dz2 = g2 phi2'(u2) s2, m = phi1'(u1) s1, g1 = dL/da1 and c1 = g1 phi1''(u1) s1^2,

    S = sum_q c2_q G_q G_q^T  +  [[sum_p c1_p h_p h_p^T,  X], [X^T, 0]],

with G_q = (J_q, r_q): J_q = sum_k theta_B[k] m[q+k] h[q+k] (how z2_q moves with theta_A), r_q the patch of a1 that
D reads at q (how it moves with theta_B), and X[:, k] = sum_q w_q m[q+k] h[q+k]. Every term is a convolution of
fields the statistics pass recorded, so the dense matrices cost P n d^2 and a matrix-free product a few
convolutions, as for a ridge site; the segment engine (automatic differentiation) gives the same numbers at d times
the cost and is their reference in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..graph import ChannelGraph, Site
from ..layers.normalization import batch_norm_scale
from .closed_form import DEFAULT_MAX_TEMPORARY_ELEMENTS
from .operator import CachedBatchOperator
from .recording import BatchRecord, recorded_inputs


@dataclass
class ChainFields:
    """One batch's fields of a chain site (every tensor has the neurons in dimension 1).

    h: P's prepared input; c1, m: on P's output grid; a1: D's prepared input; c2, w: on D's output grid.
    """

    h: Tensor
    c1: Tensor
    m: Tensor
    a1: Tensor
    c2: Tensor
    w: Tensor
    scale: float = 1.0


def _per_channel(vector: Tensor, like: Tensor) -> Tensor:
    return vector.reshape(1, -1, *([1] * (like.dim() - 2))).to(like)


def chain_fields(graph: ChannelGraph, site: Site, record: BatchRecord, dtype: torch.dtype) -> ChainFields:
    """The fields of one batch, in ``dtype``."""
    first, second = site.members
    producer, depthwise = graph.modules[first.module], graph.modules[second.module]
    h_name, u1_name, a1_name, u2_name = recorded_inputs(graph, site)
    chain = site.chain
    first_activation, second_activation = chain.first_activation, chain.second_activation
    h = first.handler.prepare_inputs(producer, record.values[h_name].to(dtype))
    u1, a1, u2 = (record.values[name].to(dtype) for name in (u1_name, a1_name, u2_name))
    g2 = record.gradients[site.frontier[0]].to(dtype)
    s1 = _per_channel(batch_norm_scale(graph.modules[site.batch_norm]), u1) if site.batch_norm else 1.0
    norm2 = chain.second_batch_norm
    s2 = _per_channel(batch_norm_scale(graph.modules[norm2]), u2) if norm2 else 1.0
    w = g2 * second_activation.dphi(u2) * s2
    c2 = g2 * second_activation.d2phi(u2) * s2 * s2
    padded_a1 = second.handler.prepare_inputs(depthwise, a1)
    kernels = second.handler.theta(depthwise).to(dtype)
    g1 = second.handler.unprepare(depthwise, second.handler.input_adjoint(depthwise, w, kernels, padded_a1.shape))
    m = first_activation.dphi(u1) * s1
    c1 = g1 * first_activation.d2phi(u1) * s1 * s1
    return ChainFields(h, c1, m, padded_a1, c2, w, record.scale)


def _h_field(site: Site, graph: ChannelGraph, fields: ChainFields) -> Tensor:
    """P's input rows laid out on P's output grid: (N, dA, *grid)."""
    first = site.members[0]
    producer = graph.modules[first.module]
    rows = first.handler.rows(producer, first.handler.unprepare(producer, fields.h))[:, 0]  # (P1, dA)
    grid = fields.m.shape[2:]
    return rows.reshape(fields.m.shape[0], *grid, rows.shape[-1]).movedim(-1, 1)


def chain_dense(
    graph: ChannelGraph,
    site: Site,
    record: BatchRecord,
    dtype: torch.dtype,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
) -> Tensor:
    """One batch's (n, d, d) matrices of a chain site, not yet weighted."""
    from .ridge import grouped_ridge_matrices

    first, second = site.members
    producer, depthwise = graph.modules[first.module], graph.modules[second.module]
    fields = chain_fields(graph, site, record, dtype)
    n, d_a, d_b = site.num_neurons, first.neuron_dim, second.neuron_dim
    out = torch.zeros((n, d_a + d_b, d_a + d_b), dtype=dtype, device=fields.h.device)
    rows = first.handler.rows(producer, first.handler.unprepare(producer, fields.h)).to(dtype)
    c1_rows = first.handler.coefficient_rows(producer, fields.c1)
    out[:, :d_a, :d_a] = grouped_ridge_matrices(rows, c1_rows, max_temporary_elements=max_temporary_elements)
    h_field = _h_field(site, graph, fields)  # (N, dA, *grid1)
    kernels = second.handler.theta(depthwise).to(dtype)
    kernel_entries = depthwise.weight[0].numel()
    r = second.handler.rows(depthwise, second.handler.unprepare(depthwise, fields.a1)).to(dtype)  # (P2, n, dB)
    c2_rows = second.handler.coefficient_rows(depthwise, fields.c2)  # (P2, n)
    w_field = fields.w
    batch = fields.m.shape[0]
    grid1 = fields.m.shape[2:]
    per_neuron = batch * d_a * max(int(torch.tensor(grid1).prod()), int(torch.tensor(fields.c2.shape[2:]).prod()))
    chunk = max(1, max_temporary_elements // max(1, 3 * per_neuron))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        size = stop - start
        # J: the depthwise filters applied to m * h, for every entry of h (a grouped convolution)
        signal = (fields.m[:, start:stop, None] * h_field[:, None]).reshape(batch, size * d_a, *grid1)
        signal = second.handler.prepare_inputs(depthwise, signal)
        taps = kernels[start:stop, :kernel_entries].repeat_interleave(d_a, dim=0)  # (size * dA, k)
        if second.handler.has_bias(depthwise):
            taps = torch.cat([taps, torch.zeros_like(taps[:, :1])], dim=1)
        jacobian = second.handler.apply(depthwise, signal, taps)  # (N, size*dA, *grid2)
        jacobian = jacobian.reshape(batch, size, d_a, -1).permute(0, 3, 1, 2).reshape(-1, size, d_a)
        stacked = torch.cat([jacobian, r[:, start:stop]], dim=2)  # (P2, size, d)
        out[start:stop] += torch.einsum("pnd,pn,pne->nde", stacked, c2_rows[:, start:stop].to(dtype), stacked)
        # X: how the depthwise filter's taps move sum_q w_q m h through theta_A
        repeated = w_field[:, start:stop, None].expand(-1, -1, d_a, *w_field.shape[2:])
        repeated = repeated.reshape(batch, size * d_a, *w_field.shape[2:])
        cross = second.handler.adjoint(depthwise, signal, repeated)[:, :kernel_entries]
        cross = cross.reshape(size, d_a, kernel_entries)
        out[start:stop, :d_a, d_a : d_a + kernel_entries] += cross
        out[start:stop, d_a : d_a + kernel_entries, :d_a] += cross.transpose(1, 2)
    return out


@dataclass
class ChainOperator(CachedBatchOperator):
    """The splitting matrices of a chain site as a linear operator on (n, dA + dB) directions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.first, self.second = self.site.members
        self.producer = self.graph.modules[self.first.module]
        self.depthwise = self.graph.modules[self.second.module]

    def _cache(self, record: BatchRecord) -> ChainFields:
        return chain_fields(self.graph, self.site, record, self.dtype)

    merges = True

    def _merge(self, cached: list[ChainFields]) -> ChainFields:
        names = ("h", "c1", "m", "a1", "c2", "w")
        tensors = {name: torch.cat([getattr(fields, name) for fields in cached]) for name in names}
        return ChainFields(**tensors, scale=cached[0].scale)

    @staticmethod
    def _samples(cached: ChainFields) -> int:
        return cached.h.shape[0]

    @property
    def device(self) -> torch.device:
        return self.batches[0].h.device if self.batches else self.depthwise.weight.device

    def _product(self, fields: ChainFields, directions: Tensor) -> Tensor:
        first, second = self.first.handler, self.second.handler
        d_a = self.first.neuron_dim
        kernel_entries = self.depthwise.weight[0].numel()
        along_a, along_b = directions[:, :d_a], directions[:, d_a:]
        kernels = second.theta(self.depthwise).to(directions)
        kernels_only = torch.cat([kernels[:, :kernel_entries], torch.zeros_like(kernels[:, kernel_entries:])], 1)
        z_a = first.apply(self.producer, fields.h, along_a)
        x1 = second.prepare_inputs(self.depthwise, fields.m * z_a)
        y = second.apply(self.depthwise, x1, kernels_only) + second.apply(self.depthwise, fields.a1, along_b)
        t = fields.c2 * y
        out_b = second.adjoint(self.depthwise, fields.a1, t)
        taps_b = torch.cat([along_b[:, :kernel_entries], torch.zeros_like(along_b[:, kernel_entries:])], 1)
        back = second.input_adjoint(self.depthwise, t, kernels_only, x1.shape)
        back = back + second.input_adjoint(self.depthwise, fields.w, taps_b, x1.shape)
        back = second.unprepare(self.depthwise, back)
        out_a = first.adjoint(self.producer, fields.h, fields.m * back + fields.c1 * z_a)
        cross = second.adjoint(self.depthwise, x1, fields.w)
        cross[:, kernel_entries:] = 0.0  # the depthwise bias does not multiply a1
        return torch.cat([out_a, out_b + cross], dim=1)

    def memory_bytes(self) -> int:
        tensors = [t for f in self.batches for t in (f.h, f.c1, f.m, f.a1, f.c2, f.w)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def ritz_start(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        return None
