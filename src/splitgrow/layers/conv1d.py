"""``nn.Conv1d`` (audio and sequence networks): the :class:`~splitgrow.layers.conv.Conv2dHandler` with the
one-dimensional operations, so any kernel, stride, dilation, padding (padding mode included) and the depthwise
case come for free."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_input, conv1d_weight

from .conv import Conv2dHandler


class Conv1dHandler(Conv2dHandler):
    types = (nn.Conv1d,)

    _convolution = staticmethod(F.conv1d)
    _weight_gradient = staticmethod(conv1d_weight)
    _input_gradient = staticmethod(conv1d_input)

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        padded = self.prepare_inputs(module, inputs).unsqueeze(2)  # a height-1 image
        patches = F.unfold(
            padded, (1, module.kernel_size[0]), dilation=(1, module.dilation[0]), stride=(1, module.stride[0])
        )
        return self._patch_rows(module, patches)
