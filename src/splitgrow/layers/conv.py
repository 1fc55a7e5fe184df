"""``nn.Conv2d``: output channels are neurons (one filter each, shared over positions); channel dimension 1.

* ``groups=1``: every filter reads every input channel; the layer consumes its input's channels.
* depthwise (``groups = in_channels = out_channels``): channel j in is channel j out, and filter j is a neuron of
  channel j's coupling group (it is split with it).
* other groups: refused (PyTorch needs channel counts divisible by the groups, so channels cannot grow one by one).

The statistics read a convolution as z_p = theta^T h_p at every output position p, with h_p the input patch. The
layer's padding (numeric or 'same', any padding mode) is applied explicitly once (:meth:`prepare_inputs`), so that
unfolding, the product H V^T (a convolution with the directions as filters) and its adjoint (the convolution's
weight gradient) all read the same padded input.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight

from .base import PER_CHANNEL, PRODUCE, ChannelMap, NeuronHandler


def explicit_padding(module: nn.Module) -> list[int]:
    """The padding of a convolution as F.pad takes it (last dimension first), 'same' included."""
    spatial = len(module.kernel_size)
    if module.padding == "same":
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        pairs = [(total // 2, total - total // 2) for total in totals]
    elif module.padding == "valid":
        pairs = [(0, 0)] * spatial
    else:
        pairs = [(p, p) for p in module.padding]
    return [side for pair in reversed(pairs) for side in pair]


def pad_inputs(module: nn.Module, inputs: Tensor) -> Tensor:
    """``inputs`` padded as the convolution pads them itself."""
    padding = explicit_padding(module)
    if not any(padding):
        return inputs
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(inputs, padding, mode=mode)


def tap_slices(
    kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], out: tuple[int, ...]
) -> list[tuple[int, tuple[slice, ...]]]:
    """For each kernel tap (flat index), the slice of the padded input that it multiplies, over the output grid."""
    taps = []
    for flat, offsets in enumerate(itertools.product(*(range(k) for k in kernel))):
        taps.append(
            (
                flat,
                tuple(
                    slice(d * o, d * o + s * (size - 1) + 1, s) for o, s, d, size in zip(offsets, stride, dilation, out)
                ),
            )
        )
    return taps


def depthwise_forward(padded: Tensor, kernels: Tensor, module: nn.Module) -> Tensor:
    """One filter per channel (kernels (C, k)) over an explicitly padded input (N, C, *grid), by adding the
    shifted inputs tap by tap: on the CPU faster than PyTorch's grouped convolution for 1-D and dilated kernels
    (:func:`grouped_convolution_pays`)."""
    out = _output_size(padded.shape[2:], module)
    result = padded.new_zeros((padded.shape[0], padded.shape[1], *out))
    shape = (1, -1) + (1,) * len(out)
    for flat, slices in tap_slices(module.kernel_size, module.stride, module.dilation, out):
        result += padded[(slice(None), slice(None), *slices)] * kernels[:, flat].reshape(shape)
    return result


def depthwise_weight_adjoint(padded: Tensor, field: Tensor, module: nn.Module) -> Tensor:
    """(C, k): the gradient of <field, depthwise_forward(padded, K)> in K."""
    out = field.shape[2:]
    dims = (0, *range(2, field.dim()))
    columns = [
        (padded[(slice(None), slice(None), *slices)] * field).sum(dims)
        for _, slices in tap_slices(module.kernel_size, module.stride, module.dilation, out)
    ]
    return torch.stack(columns, dim=1)


def depthwise_input_adjoint(field: Tensor, kernels: Tensor, padded_shape: torch.Size, module: nn.Module) -> Tensor:
    """The gradient of <field, depthwise_forward(x, K)> in the padded input x."""
    out = field.shape[2:]
    result = field.new_zeros(padded_shape)
    shape = (1, -1) + (1,) * len(out)
    for flat, slices in tap_slices(module.kernel_size, module.stride, module.dilation, out):
        result[(slice(None), slice(None), *slices)] += field * kernels[:, flat].reshape(shape)
    return result


def _output_size(padded: tuple[int, ...], module: nn.Module) -> tuple[int, ...]:
    return tuple(
        (size - d * (k - 1) - 1) // s + 1
        for size, k, s, d in zip(padded, module.kernel_size, module.stride, module.dilation)
    )


def grouped_convolution_pays(module: nn.Module, tensor: Tensor) -> bool:
    """Whether PyTorch's grouped convolution beats the tap loops above for a depthwise layer: always on a GPU (one
    kernel instead of one per tap), and on the CPU for undilated 2-D kernels (in float32 and float64 alike;
    benchmarks/depthwise_products.py); for 1-D or dilated kernels the CPU's grouped convolution is often the
    slower."""
    return tensor.is_cuda or (len(module.kernel_size) == 2 and all(d == 1 for d in module.dilation))


def is_depthwise(module: nn.Module) -> bool:
    return module.groups > 1 and module.groups == module.in_channels == module.out_channels


class Conv2dHandler(NeuronHandler):
    types = (nn.Conv2d,)
    output_channel_dim = 1

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        if module.groups == 1:
            return ChannelMap(PRODUCE, input_dim=1, output_dim=1)
        if is_depthwise(module):
            return ChannelMap(PER_CHANNEL, input_dim=1, output_dim=1, neurons=True)
        return ChannelMap.refuse(
            f"{type(module).__name__} with groups={module.groups}: PyTorch needs channel counts divisible by groups "
            "(splitgrow grows "
            "groups=1 and depthwise convolutions; the layers around it still grow)"
        )

    def shares_inputs(self, module: nn.Module) -> bool:
        return module.groups == 1

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        if is_depthwise(module):
            size = outputs if outputs is not None else inputs
            module.in_channels = module.out_channels = module.groups = size
            return
        if outputs is not None:
            module.out_channels = outputs
        if inputs is not None:
            module.in_channels = inputs

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        # a depthwise filter is indexed by its one channel: it grows with the outputs, not along dim 1
        return [] if is_depthwise(module) else [("weight", 1)]

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        positions = 1
        for size in output_shape[2:]:
            positions *= size
        per_output = module.weight[0].numel()
        return 2 * positions * module.out_channels * per_output

    # ------------------------------------------------------------------ statistics

    def _conv_arguments(self, module: nn.Module, groups: int) -> dict:
        # padding is explicit (prepare_inputs); a shared-input layer applies any number of directions at once
        return {"stride": module.stride, "padding": 0, "dilation": module.dilation, "groups": groups}

    def prepare_inputs(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return pad_inputs(module, inputs)

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """(P, groups, d): the padded input patches of each group of filters, P = samples x positions."""
        padded = self.prepare_inputs(module, inputs)
        patches = F.unfold(padded, module.kernel_size, dilation=module.dilation, stride=module.stride)
        return self._patch_rows(module, patches)

    def unprepare(self, module: nn.Module, padded: Tensor) -> Tensor:
        """The adjoint of zero padding: the prepared (padded) tensor cropped back to the layer's input size."""
        padding = explicit_padding(module)
        slices = [slice(None), slice(None)]
        pairs = list(zip(padding[0::2], padding[1::2]))[::-1]  # first spatial dimension first
        for size, (before, after) in zip(padded.shape[2:], pairs):
            slices.append(slice(before, size - after))
        return padded[tuple(slices)]

    def _patch_rows(self, module: nn.Module, patches: Tensor) -> Tensor:
        batch, entries, positions = patches.shape
        groups = module.groups
        rows = patches.view(batch, groups, entries // groups, positions).permute(0, 3, 1, 2)
        rows = rows.reshape(batch * positions, groups, entries // groups)
        if self.has_bias(module):
            rows = torch.cat([rows, torch.ones_like(rows[..., :1])], dim=2)
        return rows

    def coefficient_rows(self, module: nn.Module, field: Tensor) -> Tensor:
        return field.flatten(2).transpose(1, 2).reshape(-1, field.shape[1])

    def _split_directions(self, module: nn.Module, directions: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.has_bias(module):
            weights, bias = directions[:, :-1], directions[:, -1].contiguous()
        else:
            weights, bias = directions, None
        return weights.reshape(directions.shape[0], *module.weight.shape[1:]), bias

    def apply(self, module: nn.Module, inputs: Tensor, directions: Tensor) -> Tensor:
        weights, bias = self._split_directions(module, directions)
        if module.groups > 1:  # one filter per channel
            if grouped_convolution_pays(module, inputs):
                return self._convolution(inputs, weights, bias, **self._conv_arguments(module, inputs.shape[1]))
            out = depthwise_forward(inputs, weights.flatten(1), module)
            return out if bias is None else out + bias.reshape(1, -1, *([1] * (out.dim() - 2)))
        return self._convolution(inputs, weights, bias, **self._conv_arguments(module, 1))

    def adjoint(self, module: nn.Module, inputs: Tensor, field: Tensor) -> Tensor:
        count = field.shape[1]
        shape = (count, *module.weight.shape[1:])
        if module.groups > 1:
            if grouped_convolution_pays(module, inputs):
                weights = self._weight_gradient(inputs, shape, field, **self._conv_arguments(module, count))
            else:
                weights = depthwise_weight_adjoint(inputs, field, module)
            return self._with_bias_gradient(module, weights, field)
        if all(k == 1 for k in module.kernel_size) and all(s == 1 for s in module.stride):
            # a pointwise layer's weight gradient is one matrix product, 2 to 3 times faster than the convolution's
            # backward on the CPU
            flat_field = field.transpose(0, 1).reshape(count, -1)
            weights = (flat_field @ inputs.transpose(0, 1).reshape(inputs.shape[1], -1).t()).reshape(shape)
        else:
            weights = self._weight_gradient(inputs, shape, field, **self._conv_arguments(module, 1))
        return self._with_bias_gradient(module, weights, field)

    def input_adjoint(self, module: nn.Module, field: Tensor, directions: Tensor, input_shape: torch.Size) -> Tensor:
        """The adjoint of :meth:`apply` in its (prepared) input: the gradient of <field, apply(x, V)> in x, for the
        weights of ``directions`` (bias entries ignored), shaped like the prepared input ``input_shape``."""
        weights, _ = self._split_directions(module, directions)
        if module.groups > 1:
            if grouped_convolution_pays(module, field):
                return self._input_gradient(input_shape, weights, field, **self._conv_arguments(module, field.shape[1]))
            return depthwise_input_adjoint(field, weights.flatten(1), input_shape, module)
        return self._input_gradient(input_shape, weights, field, **self._conv_arguments(module, 1))

    def on_position_grid(self, module: nn.Module, steps: tuple[int, ...]) -> nn.Module:
        # output position o' of a convolution with stride s * step over the input cropped by offset * s is output
        # position offset + step * o' of the layer; a shallow copy shares the parameters
        view = copy.copy(module)
        view.stride = tuple(stride * step for stride, step in zip(module.stride, steps))
        return view

    def crop_to_grid(self, module: nn.Module, prepared: Tensor, offsets: tuple[int, ...]) -> Tensor:
        crop = tuple(slice(offset * stride, None) for offset, stride in zip(offsets, module.stride))
        return prepared[(slice(None), slice(None), *crop)]

    # the dimension-specific operations (Conv1d overrides them)
    _convolution = staticmethod(F.conv2d)
    _weight_gradient = staticmethod(conv2d_weight)
    _input_gradient = staticmethod(conv2d_input)

    def _with_bias_gradient(self, module: nn.Module, weights: Tensor, field: Tensor) -> Tensor:
        parts = [weights.flatten(1)]
        if self.has_bias(module):
            parts.append(field.sum(dim=(0, *range(2, field.dim())))[:, None])
        return torch.cat(parts, dim=1)
