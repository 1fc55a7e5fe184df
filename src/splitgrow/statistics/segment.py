"""Statistics of any *segment* site by automatic differentiation: S V as a Hessian-vector product.

A segment site's neuron j is the rows j of its members (a pointwise filter and the depthwise filter it feeds; the
two halves of a gated unit; several producers summed), and its output is whatever the segment's last per-channel
nonlinearities compute from them. With the recorded segment inputs and the loss gradients g_f at the segment's
frontier f held fixed,

    F(theta) = sum_f <g_f, value_f(theta)>,    S_j = Hessian of F in theta_j.

Every operation of the segment acts per channel, so F's Hessian in all the neurons' parameters at once is block
diagonal with the blocks S_j: one Hessian-vector product with V = (v_1, ..., v_n) gives every S_j v_j, and d of
them (with the unit vectors) every dense S_j. Activations from the activation table are evaluated through their
own phi, phi' and phi'' (a surrogate included), so both engines use exactly the same curvature.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor
from torch.func import functional_call

from ..activations import Activation
from ..graph import ChannelGraph, Site
from .closed_form import DEFAULT_MAX_TEMPORARY_ELEMENTS
from .operator import CachedBatchOperator
from .recording import BatchRecord, recorded_inputs


class _Curvature(torch.autograd.Function):
    """phi'(z) whose derivative is the activation's phi'' (twice differentiable as the table says)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, activation: Activation) -> Tensor:
        ctx.save_for_backward(z)
        ctx.activation = activation
        return activation.dphi(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad * ctx.activation.d2phi(z), None


class _Activation(torch.autograd.Function):
    """phi(z) with derivative phi' (through :class:`_Curvature`, so that its second derivative is phi'')."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, activation: Activation) -> Tensor:
        ctx.save_for_backward(z)
        ctx.activation = activation
        return activation.phi(z)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (z,) = ctx.saved_tensors
        return grad * _Curvature.apply(z, ctx.activation), None


_OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul}


class SegmentProgram:
    """A site's segment as a function of its neurons' parameters theta (n, d)."""

    def __init__(self, graph: ChannelGraph, site: Site, dtype: torch.dtype) -> None:
        self.graph = graph
        self.site = site
        self.dtype = dtype
        self.nodes = [graph.nodes[name] for name in site.segment]
        self.inputs = recorded_inputs(graph, site)
        self.activations = {name: graph._activation_of(name) for name in site.segment}
        self.members: dict[str, list[tuple[int, slice]]] = {}
        for member, columns in site.member_slices():
            self.members.setdefault(member.module, []).append((member.offset, columns))
        # every module of the segment runs on its own tensors cast to the statistics' dtype
        self.tensors: dict[str, dict[str, Tensor]] = {}
        for node in self.nodes:
            if node.op == "call_module" and node.target not in self.tensors:
                module = graph.modules[node.target]
                named = [*module.named_parameters(), *module.named_buffers()]
                self.tensors[node.target] = {
                    name: tensor.detach().to(dtype) if tensor.is_floating_point() else tensor for name, tensor in named
                }

    def theta(self) -> Tensor:
        """(n, d): the current parameters of every neuron, the members' rows concatenated."""
        parts = []
        for member, _ in self.site.member_slices():
            rows = member.handler.theta(self.graph.modules[member.module])
            parts.append(rows[member.offset : member.offset + self.site.num_neurons])
        return torch.cat(parts, dim=1)

    def _parameters(self, module_name: str, theta: Tensor) -> dict[str, Tensor]:
        module = self.graph.modules[module_name]
        handler = self.site.members[0].handler
        for member in self.site.members:
            if member.module == module_name:
                handler = member.handler
        rows = handler.theta(module).to(theta)
        for offset, columns in self.members[module_name]:
            positions = torch.arange(offset, offset + self.site.num_neurons, device=theta.device)
            rows = rows.index_copy(0, positions, theta[:, columns])
        return handler.parameters_from_theta(module, rows)

    def value(self, theta: Tensor, record: BatchRecord) -> Tensor:
        """F(theta) = sum over the frontier of <g, value> for one batch."""
        env: dict[str, Any] = {name: record.values[name] for name in self.inputs}

        def load(argument: Any) -> Any:
            return fx.node.map_arg(argument, lambda node: env[node.name])

        for node in self.nodes:
            args, kwargs = load(node.args), load(node.kwargs)
            activation = self.activations.get(node.name)
            if activation is not None:
                result = _Activation.apply(args[0], activation)
            elif node.op == "call_module":
                tensors = dict(self.tensors[node.target])
                if node.target in self.members:
                    tensors.update(self._parameters(node.target, theta))
                result = functional_call(self.graph.modules[node.target], tensors, args, kwargs)
            elif node.op == "call_method":
                method = (
                    node.target[:-1] if node.target.endswith("_") and not node.target.startswith("_") else node.target
                )
                result = getattr(args[0], method)(*args[1:], **kwargs)
            else:
                result = _OUT_OF_PLACE.get(node.target, node.target)(*args, **kwargs)
            env[node.name] = result
        total = theta.new_zeros(())
        for name in self.site.frontier:
            total = total + (env[name] * record.gradients[self.site.gradient_key(name)].to(env[name])).sum()
        return total


@dataclass
class SegmentOperator(CachedBatchOperator):
    """The splitting matrices of a segment site as a linear operator (Hessian-vector products on cached batches)."""

    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS

    def __post_init__(self) -> None:
        super().__post_init__()
        self.program = SegmentProgram(self.graph, self.site, self.dtype)

    @classmethod
    def for_site(cls, graph: ChannelGraph, site: Site, dtype: torch.dtype) -> SegmentOperator:
        return cls(graph, site, dtype)

    def _cache(self, record: BatchRecord) -> BatchRecord:
        cast = {name: value.to(self.dtype) for name, value in record.values.items() if name in self.program.inputs}
        keys = [self.program.site.gradient_key(name) for name in self.program.site.frontier]
        gradients = {key: record.gradients[key].to(self.dtype) for key in keys}
        return BatchRecord(record.weight, record.scale, cast, gradients)

    @property
    def device(self) -> torch.device:
        return self.program.theta().device

    def _product(self, cached: BatchRecord, directions: Tensor) -> Tensor:
        return self._hessian_products(cached, directions.unsqueeze(0))[0]

    def _hessian_products(self, record: BatchRecord, directions: Tensor) -> Tensor:
        """H V for a stack of directions (k, n, d) at once (the first derivative's graph is built once and the
        second pass is batched over the k directions), (k, n, d)."""
        theta = self.program.theta().to(self.dtype).detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.program.value(theta, record)
            (gradient,) = torch.autograd.grad(value, theta, create_graph=True)
            if not gradient.requires_grad:  # F is linear in theta here: no curvature at all
                return torch.zeros_like(directions)
            chunk = max(1, self.max_temporary_elements // max(1, 4 * self._largest(record)))
            products = []
            for start in range(0, directions.shape[0], chunk):
                part = directions[start : start + chunk]
                last = start + chunk >= directions.shape[0]
                (product,) = torch.autograd.grad(
                    gradient, theta, grad_outputs=part, retain_graph=not last, is_grads_batched=True
                )
                products.append(product.detach())
        return torch.cat(products)

    @staticmethod
    def _largest(record: BatchRecord) -> int:
        return max(t.numel() for t in [*record.values.values(), *record.gradients.values()])

    def dense(self) -> Tensor:
        """The (n, d, d) matrices by d Hessian-vector products per batch (the graph of the first derivative is
        built once per batch and reused)."""
        eye = torch.eye(self.neuron_dim, dtype=self.dtype, device=self.device)
        directions = eye[:, None, :].expand(self.neuron_dim, self.num_neurons, self.neuron_dim).contiguous()
        total = torch.zeros((self.num_neurons, self.neuron_dim, self.neuron_dim), dtype=self.dtype, device=self.device)
        for batch in self.batches:
            columns = self._hessian_products(batch, directions)  # (d, n, d): column k of every S_j
            total += batch.scale * columns.permute(1, 2, 0)
        return total / self.total_weight

    def memory_bytes(self) -> int:
        tensors = [t for b in self.batches for t in (*b.values.values(), *b.gradients.values())]
        return sum(t.numel() * t.element_size() for t in tensors)

    def ritz_start(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        """No cheap compression for a segment: LOBPCG starts at random."""
        return None


def segment_dense(
    graph: ChannelGraph, site: Site, record: BatchRecord, dtype: torch.dtype, max_temporary_elements: int
) -> Tensor:
    """One batch's (n, d, d) matrices of a segment site, not yet weighted."""
    operator_ = SegmentOperator.for_site(graph, site, dtype)
    operator_.max_temporary_elements = max_temporary_elements
    operator_.add(BatchRecord(1.0, 1.0, record.values, record.gradients))
    return operator_.dense()
