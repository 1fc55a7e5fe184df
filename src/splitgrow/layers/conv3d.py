"""``nn.Conv3d`` (video and volumetric networks): the :class:`~splitgrow.layers.conv.Conv2dHandler` with the
three-dimensional operations, so any kernel, stride, dilation, padding (padding mode included) and the depthwise
case come for free. torch has no three-dimensional ``unfold``: the input rows are gathered tap by tap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv3d_input, conv3d_weight

from .conv import Conv2dHandler, _output_size, tap_slices


class Conv3dHandler(Conv2dHandler):
    types = (nn.Conv3d,)

    _convolution = staticmethod(F.conv3d)
    _weight_gradient = staticmethod(conv3d_weight)
    _input_gradient = staticmethod(conv3d_input)

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        padded = self.prepare_inputs(module, inputs)
        out = _output_size(padded.shape[2:], module)
        taps = [
            padded[(slice(None), slice(None), *slices)]
            for _, slices in tap_slices(module.kernel_size, module.stride, module.dilation, out)
        ]
        # (N, C, taps, positions): unfold's layout, channel-major within a patch as the weight (C, kD, kH, kW)
        patches = torch.stack(taps, dim=2).flatten(3).flatten(1, 2)
        return self._patch_rows(module, patches)
