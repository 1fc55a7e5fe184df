"""Statistics of a *loss* site: S as the Hessian of the whole loss in the split itself.

The definition of the splitting matrix, for any neuron and any loss: duplicate every neuron of the site exactly
(eps = 0, output weights halved: the function does not change), move the two offspring of neuron j to theta_j +
delta_j and theta_j - delta_j, and differentiate the loss twice in the deltas at 0. The split is symmetric, so the
loss is even in every delta_j and the first derivative vanishes; by Theorem 2.4 the Hessian has no block between two
neurons; its block j is S_j. This engine computes exactly that, with Hessian-vector products through the whole
model on each batch, so it needs nothing of the site but its handler: a custom neuron layer whose outputs reach the
loss through terms that couple the samples of a batch (the prototype network's "distance to the nearest image")
declares ``whole_loss = True`` and gets exact statistics. It costs a forward and two backward passes of the whole
model per product, against a few convolutions for the closed forms.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..surgery import spread_columns
from .operator import CachedBatchOperator
from .recording import BatchRecord


class _Functional(nn.Module):
    """The twin model with some parameters replaced, called as the model itself (for a loss closure)."""

    def __init__(self, model: nn.Module, parameters: dict[str, Tensor]) -> None:
        super().__init__()
        self.model = model
        self.replaced = parameters

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.replaced, args, kwargs)


@dataclass
class LossHessianOperator(CachedBatchOperator):
    """The splitting matrices of a loss site as a linear operator (Hessian-vector products of the loss)."""

    #: directions per batched second backward pass (memory: that many copies of the model's activations)
    directions_at_once: int = 8

    def __post_init__(self) -> None:
        from ..surgery import SplitRequest, split_network

        super().__post_init__()
        site = self.site
        self.twin = copy.deepcopy(self.graph.model).to(self.dtype).eval()
        twin_graph = self.graph.for_copy(self.twin)
        requests = [SplitRequest(site.name, j) for j in range(site.num_neurons)]
        report = split_network(self.twin, twin_graph, requests, 0.0, allow_inexact=True)
        # for each member (in order): the module and the rows of the +delta and -delta offspring of every neuron
        self.rows: list[tuple[str, Tensor, Tensor, slice]] = []
        for index, (member, columns) in enumerate(site.member_slices()):
            plus = torch.tensor([placed[index][1] for placed in report.offspring])
            minus = torch.tensor([placed[index][2] for placed in report.offspring])
            self.rows.append((member.module, plus, minus, columns))
        self.modules = dict(self.twin.named_modules())
        self.originals = dict(self.graph.model.named_modules())
        self.handlers = {member.module: member.handler for member in site.members}
        # a member that also reads the site's channels (a broadcast residual) has grown inputs in the twin: its
        # rows' deltas are mapped onto them as the split maps a direction (duplicated columns share it)
        self.column_maps = {name: report.column_maps[name] for name in self.handlers if name in report.column_maps}

    def _cache(self, record: BatchRecord) -> BatchRecord:
        return record  # the products rerun the model on the batch itself

    @property
    def device(self) -> torch.device:
        return next(self.twin.parameters()).device

    def _parameters(self, delta: Tensor) -> dict[str, Tensor]:
        """The twin's parameters with every neuron's offspring moved by +delta and -delta."""
        replaced: dict[str, Tensor] = {}
        for module_name, plus, minus, columns in self.rows:
            handler, grown = self.handlers[module_name], self.modules[module_name]
            # the rows in the module's own layout, as the original module has them (its inputs before the split)
            rows = handler.parameters_from_theta(self.originals[module_name], delta[:, columns])
            output_dims, input_dims = dict(handler.output_tensors(grown)), dict(handler.input_tensors(grown))
            for attribute, value in rows.items():
                if module_name in self.column_maps and attribute in input_dims:
                    value = spread_columns(value, input_dims[attribute], *self.column_maps[module_name])
                key = f"{module_name}.{attribute}" if module_name else attribute
                dim = output_dims[attribute]
                base = replaced.get(key, getattr(grown, attribute).detach().to(delta)).movedim(dim, 0)
                moved = value.movedim(dim, 0)
                base = base.index_add(0, plus.to(delta.device), moved).index_add(0, minus.to(delta.device), -moved)
                replaced[key] = base.movedim(0, dim)
        return replaced

    def _products(self, record: BatchRecord, directions: Tensor) -> Tensor:
        """H V for a stack of directions (k, n, d)."""
        delta = torch.zeros((self.num_neurons, self.neuron_dim), dtype=self.dtype, device=self.device)
        delta.requires_grad_(True)
        with torch.enable_grad():
            model = _Functional(self.twin, self._parameters(delta))
            returned = record.closure(model, _cast(record.batch, self.dtype))
            loss = returned[0] if isinstance(returned, tuple) else returned
            (gradient,) = torch.autograd.grad(loss, delta, create_graph=True)
            if not gradient.requires_grad:
                return torch.zeros_like(directions)
            # the second pass is batched over directions, a few at a time: each one holds the model's activations
            products = []
            for start in range(0, directions.shape[0], self.directions_at_once):
                part = directions[start : start + self.directions_at_once]
                last = start + self.directions_at_once >= directions.shape[0]
                (product,) = torch.autograd.grad(
                    gradient, delta, grad_outputs=part, retain_graph=not last, is_grads_batched=True
                )
                products.append(product.detach())
        return torch.cat(products)

    def _product(self, cached: BatchRecord, directions: Tensor) -> Tensor:
        return self._products(cached, directions.unsqueeze(0))[0]

    def dense(self) -> Tensor:
        """The (n, d, d) matrices, all d unit directions batched in each batch's second backward pass."""
        eye = torch.eye(self.neuron_dim, dtype=self.dtype, device=self.device)
        directions = eye[:, None, :].expand(self.neuron_dim, self.num_neurons, self.neuron_dim).contiguous()
        total = torch.zeros((self.num_neurons, self.neuron_dim, self.neuron_dim), dtype=self.dtype, device=self.device)
        for record in self.batches:
            total += record.scale * self._products(record, directions).permute(1, 2, 0)
        return total / self.total_weight

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.twin.parameters())

    def ritz_start(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        return None


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)({key: _cast(item, dtype) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(item, dtype) for item in value)
    return value
