"""``nn.Linear`` on (N, ..., features): its output features are neurons; the channel dimension is the last one.

On token tensors (N, T, D) every token is one more input row h of each neuron, exactly as every output position is
for a convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import PRODUCE, ChannelMap, NeuronHandler


class LinearHandler(NeuronHandler):
    types = (nn.Linear,)
    output_channel_dim = -1

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        return ChannelMap(PRODUCE, input_dim=len(input_shape) - 1, output_dim=len(output_shape) - 1)

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        if outputs is not None:
            module.out_features = outputs
        if inputs is not None:
            module.in_features = inputs

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        positions = 1
        for size in output_shape[1:-1]:
            positions *= size
        return 2 * positions * module.in_features * module.out_features

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        flat = inputs.reshape(-1, inputs.shape[-1])
        if self.has_bias(module):
            flat = torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)
        return flat.unsqueeze(1)

    def coefficient_rows(self, module: nn.Module, field: Tensor) -> Tensor:
        return field.reshape(-1, field.shape[-1])

    def apply(self, module: nn.Module, inputs: Tensor, directions: Tensor) -> Tensor:
        if self.has_bias(module):
            return inputs @ directions[:, :-1].t() + directions[:, -1]
        return inputs @ directions.t()

    def adjoint(self, module: nn.Module, inputs: Tensor, field: Tensor) -> Tensor:
        flat_field = field.reshape(-1, field.shape[-1])
        product = flat_field.t() @ inputs.reshape(-1, inputs.shape[-1])
        if self.has_bias(module):
            product = torch.cat([product, flat_field.sum(0)[:, None]], dim=1)
        return product
