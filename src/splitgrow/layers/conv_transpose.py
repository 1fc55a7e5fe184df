"""``nn.ConvTranspose1d/2d/3d`` (decoders, U-Nets, upsampling audio nets, volumetric decoders): output channels are
neurons, as for a convolution, but the weight is laid out (in, out, *kernel): neuron j is ``weight[:, j]``
(flattened), then ``bias[j]``, and the layer consumes its input channels along the weight's first dimension.

A transposed convolution is an ordinary convolution, with stride 1 and the same dilation, of its input with
``stride - 1`` zeros inserted between neighbouring positions and ``dilation * (kernel - 1) - padding`` positions
padded on each side (plus ``output_padding`` after), by the kernel flipped along every spatial axis and with its two
channel dimensions swapped. :meth:`ConvTransposeHandler.prepare_inputs` builds that input once, so the statistics
read the layer as z_p = theta^T h_p like any convolution: the rows h_p are its patches, flipped to theta's kernel
order; the product H V^T is a convolution with the flipped directions as filters, its adjoint that convolution's
weight gradient. Groups other than 1 are refused; so is a call with ``output_size`` that changes the output's shape
from the one ``output_padding`` gives (the statistics would read another layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_weight, conv2d_weight, conv3d_weight

from .base import PRODUCE, ChannelMap, NeuronHandler
from .conv import tap_slices

#: the stride-1 convolution and its weight gradient, by the number of spatial dimensions
_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_WEIGHT_GRADIENTS = {1: conv1d_weight, 2: conv2d_weight, 3: conv3d_weight}


class ConvTransposeHandler(NeuronHandler):
    types = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    output_channel_dim = 1

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        name = type(module).__name__
        if module.groups != 1:
            return ChannelMap.refuse(
                f"{name} with groups={module.groups}: PyTorch needs channel counts divisible by groups "
                "(splitgrow grows "
                "groups=1 and depthwise convolutions; the layers around it still grow)"
            )
        if len(input_shape) != len(module.kernel_size) + 2:
            return ChannelMap.refuse(f"{name} on an input of shape {input_shape} reads it as one unbatched sample")
        expected = tuple(
            (size - 1) * s - 2 * p + d * (k - 1) + extra + 1
            for size, s, p, d, k, extra in zip(
                input_shape[2:],
                module.stride,
                module.padding,
                module.dilation,
                module.kernel_size,
                module.output_padding,
            )
        )
        if tuple(output_shape[2:]) != expected:
            return ChannelMap.refuse(
                f"{name} called with an output_size that gives {tuple(output_shape[2:])} where its output_padding "
                f"gives {expected}: set output_padding on the module instead"
            )
        return ChannelMap(PRODUCE, input_dim=1, output_dim=1)

    # ------------------------------------------------------------------ layout: weight (in, out, *kernel)

    def num_neurons(self, module: nn.Module) -> int:
        return int(module.weight.shape[1])

    def neuron_dim(self, module: nn.Module) -> int:
        return int(module.weight[:, 0].numel()) + int(self.has_bias(module))

    def theta(self, module: nn.Module) -> Tensor:
        rows = module.weight.detach().transpose(0, 1).flatten(1)
        if self.has_bias(module):
            rows = torch.cat([rows, module.bias.detach()[:, None]], dim=1)
        return rows

    def parameters_from_theta(self, module: nn.Module, theta: Tensor) -> dict[str, Tensor]:
        """The weight in the module's own layout (in, k, *kernel) for k rows of theta, and the bias."""
        entries = module.weight[:, 0].numel()
        rows = theta[:, :entries].reshape(theta.shape[0], module.weight.shape[0], *module.weight.shape[2:])
        found = {"weight": rows.transpose(0, 1)}
        if self.has_bias(module):
            found["bias"] = theta[:, entries]
        return found

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("weight", 1)] + ([("bias", 0)] if self.has_bias(module) else [])

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("weight", 0)]

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        if outputs is not None:
            module.out_channels = outputs
        if inputs is not None:
            module.in_channels = inputs

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        # every input position meets every filter tap of every output channel once
        return 2 * math.prod(input_shape[2:]) * module.weight.numel()

    # ------------------------------------------------------------------ statistics: the equivalent convolution

    @staticmethod
    def _padding(module: nn.Module) -> list[int]:
        """The equivalent convolution's padding as F.pad takes it (last dimension first; negative: a crop)."""
        pairs = [
            (d * (k - 1) - p, d * (k - 1) - p + extra)
            for k, d, p, extra in zip(module.kernel_size, module.dilation, module.padding, module.output_padding)
        ]
        return [side for pair in reversed(pairs) for side in pair]

    def prepare_inputs(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """The input of the equivalent stride-1 convolution: zeros inserted between positions, then padded."""
        if any(s > 1 for s in module.stride):
            spread = inputs.new_zeros(
                (*inputs.shape[:2], *((size - 1) * s + 1 for size, s in zip(inputs.shape[2:], module.stride)))
            )
            spread[(slice(None), slice(None), *(slice(None, None, s) for s in module.stride))] = inputs
            inputs = spread
        return F.pad(inputs, self._padding(module))

    def unprepare(self, module: nn.Module, prepared: Tensor) -> Tensor:
        """The adjoint of :meth:`prepare_inputs`: the padding undone, then every stride-th position."""
        cropped = F.pad(prepared, [-side for side in self._padding(module)])
        return cropped[(slice(None), slice(None), *(slice(None, None, s) for s in module.stride))]

    def _flipped(self, module: nn.Module, weights: Tensor) -> Tensor:
        """Directions' weights (k, in, *kernel) in theta's kernel order <-> the equivalent convolution's filters."""
        return weights.flip(tuple(range(2, weights.dim())))

    def _split_directions(self, module: nn.Module, directions: Tensor) -> tuple[Tensor, Tensor | None]:
        weights = directions[:, :-1] if self.has_bias(module) else directions
        bias = directions[:, -1].contiguous() if self.has_bias(module) else None
        return weights.reshape(directions.shape[0], module.weight.shape[0], *module.weight.shape[2:]), bias

    def _convolve(self, module: nn.Module, prepared: Tensor, filters: Tensor, bias: Tensor | None) -> Tensor:
        convolution = _CONVOLUTIONS[prepared.dim() - 2]
        return convolution(prepared, filters, bias, stride=1, padding=0, dilation=module.dilation)

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """(P, 1, d): the equivalent convolution's patches, in theta's (unflipped) kernel order."""
        prepared = self.prepare_inputs(module, inputs)
        kernel, dilation = tuple(module.kernel_size), tuple(module.dilation)
        if prepared.dim() == 5:  # three-dimensional: no unfold in torch, so the rows are gathered tap by tap
            out = tuple(size - d * (k - 1) for size, k, d in zip(prepared.shape[2:], kernel, dilation))
            slices = tap_slices(kernel, (1,) * 3, dilation, out)
            patches = torch.stack([prepared[(slice(None), slice(None), *at)] for _, at in slices], dim=2)
            patches = patches.flatten(3).flatten(1, 2)  # (N, in * taps, P), channel-major as unfold's
        else:
            if prepared.dim() == 3:  # one-dimensional: a height-1 image
                prepared, kernel, dilation = prepared.unsqueeze(2), (1, *kernel), (1, *dilation)
            patches = F.unfold(prepared, kernel, dilation=dilation)  # (N, in * taps, P)
        batch, _, positions = patches.shape
        spatial = tuple(range(2, 2 + len(kernel)))
        patches = patches.reshape(batch, module.weight.shape[0], *kernel, positions).flip(spatial)
        rows = patches.reshape(batch, -1, positions).transpose(1, 2).reshape(batch * positions, 1, -1)
        if self.has_bias(module):
            rows = torch.cat([rows, torch.ones_like(rows[..., :1])], dim=2)
        return rows

    def coefficient_rows(self, module: nn.Module, field: Tensor) -> Tensor:
        return field.flatten(2).transpose(1, 2).reshape(-1, field.shape[1])

    def apply(self, module: nn.Module, inputs: Tensor, directions: Tensor) -> Tensor:
        weights, bias = self._split_directions(module, directions)
        return self._convolve(module, inputs, self._flipped(module, weights), bias)

    def adjoint(self, module: nn.Module, inputs: Tensor, field: Tensor) -> Tensor:
        count = field.shape[1]
        shape = (count, module.weight.shape[0], *module.weight.shape[2:])
        gradient = _WEIGHT_GRADIENTS[inputs.dim() - 2]
        filters = gradient(inputs, shape, field, stride=1, padding=0, dilation=module.dilation)
        parts = [self._flipped(module, filters).flatten(1)]
        if self.has_bias(module):
            parts.append(field.sum(dim=(0, *range(2, field.dim())))[:, None])
        return torch.cat(parts, dim=1)
