"""Matrix-free splitting matrices: S_j v_j for every neuron of a site at once, never forming a d x d matrix.

For a site with inputs h_p (rows of H, P x d) and coefficients c[p, j], S_j v_j = H^T (c_j * (H v_j)); for all
neurons at once, with V the (n, d) matrix of directions,

    S V = ((H V^T) * C)^T H.

For a convolution, H V^T is the convolution of the site's input with the filters V, and (.)^T H is the gradient of
a convolution with respect to its weight: two convolutions, no unfolded H. A depthwise block after the site adds
J^T (c2 * (J v)), with J v = depthwise(phi1' s1 * (H v)) and J^T its adjoint (``conv2d_input``), both per-channel
convolutions. Memory: the cached inputs and coefficient fields of a sample of the data, plus O(n d) per product;
never n d^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight


def numeric_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The padding a convolution applies itself once 'same' has been applied explicitly (see ``pad_same``)."""
    return (0, 0) if isinstance(module.padding, str) else tuple(module.padding)


def pad_same(module: nn.Conv2d, inputs: Tensor) -> Tensor:
    """Pad ``inputs`` as PyTorch does for padding='same' (the odd pixel at the end); unchanged otherwise."""
    if module.padding != "same":
        return inputs
    totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
    before = [t // 2 for t in totals]
    return F.pad(inputs, (before[1], totals[1] - before[1], before[0], totals[0] - before[0]))


@dataclass
class _Batch:
    inputs: Tensor  # producer input (N, in) or (N, C, H, W), padded for 'same' convolutions
    coefficients: Tensor  # c = g * phi''(u) * s^2, (N, n) or (N, n, H', W')
    weight: float  # batch size (the operator divides by the total)
    slope: Tensor | None = None  # phi1'(u1) * s1 for a depthwise block, (N, n, H1, W1)
    second_coefficients: Tensor | None = None  # g2 * phi2''(u2) * s2^2, (N, n, H2, W2)


@dataclass
class SiteOperator:
    """The splitting matrices of one site as a linear operator, built from cached batches.

    Attributes:
        module: the site's producer (Linear or Conv2d).
        depthwise: the depthwise conv of a depthwise block after the site, if any.
        num_neurons, neuron_dim: n and d.
    """

    module: nn.Module
    num_neurons: int
    neuron_dim: int
    depthwise: nn.Conv2d | None = None
    batches: list[_Batch] = field(default_factory=list)
    total_weight: float = 0.0
    matvecs: int = 0

    def add_batch(
        self,
        inputs: Tensor,
        coefficients: Tensor,
        weight: float,
        *,
        slope: Tensor | None = None,
        second_coefficients: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Cache one batch (``weight`` = its number of samples)."""
        dtype = dtype or inputs.dtype
        if isinstance(self.module, nn.Conv2d):
            inputs = pad_same(self.module, inputs)
        cast = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        self.batches.append(
            _Batch(cast(inputs), cast(coefficients), float(weight), cast(slope), cast(second_coefficients))
        )
        self.total_weight += float(weight)

    @property
    def device(self) -> torch.device:
        """Where the cached batches are, and where products are computed."""
        return self.batches[0].inputs.device if self.batches else self.module.weight.device

    @property
    def has_bias(self) -> bool:
        return self.module.bias is not None

    def _split(self, directions: Tensor) -> tuple[Tensor, Tensor | None]:
        """(weight part shaped like the module's weight, bias part or None)."""
        if self.has_bias:
            weights, bias = directions[:, :-1], directions[:, -1]
        else:
            weights, bias = directions, None
        return weights.reshape(self.module.weight.shape), bias

    def matvec(self, directions: Tensor) -> Tensor:
        """S_j v_j for every neuron j: (n, d) -> (n, d)."""
        if directions.shape != (self.num_neurons, self.neuron_dim):
            raise ValueError(f"expected directions of shape {(self.num_neurons, self.neuron_dim)}")
        if not self.batches:
            raise ValueError("the operator has no data; add batches first")
        self.matvecs += 1
        out = torch.zeros_like(directions)
        for batch in self.batches:
            v = directions.to(batch.inputs.dtype)
            out += batch.weight * self._batch_product(batch, v).to(out.dtype)
        return out / self.total_weight

    def matvec_batch(self, index: int, directions: Tensor) -> Tensor:
        """S_b V for one cached batch b alone: an unbiased estimate of S V (for stochastic solvers)."""
        self.matvecs += 1
        batch = self.batches[index]
        return self._batch_product(batch, directions.to(batch.inputs.dtype)).to(directions.dtype)

    def _batch_product(self, batch: _Batch, directions: Tensor) -> Tensor:
        weights, bias = self._split(directions)
        module = self.module
        if isinstance(module, nn.Linear):
            z = batch.inputs @ weights.t()
            if bias is not None:
                z = z + bias
            field_ = z * batch.coefficients
            out_weights = field_.t() @ batch.inputs
            parts = [out_weights]
            if bias is not None:
                parts.append(field_.sum(0, keepdim=True).t())
            return torch.cat(parts, dim=1)
        conv = {
            "stride": module.stride,
            "padding": numeric_padding(module),
            "dilation": module.dilation,
            "groups": module.groups,
        }
        z = F.conv2d(batch.inputs, weights, bias, **conv)
        field_ = z * batch.coefficients
        if self.depthwise is not None and batch.slope is not None:
            field_ = field_ + self._depthwise_term(batch, z)
        out_weights = conv2d_weight(batch.inputs, weights.shape, field_, **conv)
        parts = [out_weights.flatten(1)]
        if bias is not None:
            parts.append(field_.sum((0, 2, 3)).unsqueeze(1))
        return torch.cat(parts, dim=1)

    def _depthwise_term(self, batch: _Batch, z: Tensor) -> Tensor:
        """The field whose weight-gradient is J^T (c2 * (J v)), J v = depthwise(slope * (H v))."""
        depthwise = self.depthwise
        kernel = depthwise.weight.detach().to(z.dtype)
        signal = batch.slope * z
        padded = pad_same(depthwise, signal)
        conv = {
            "stride": depthwise.stride,
            "padding": numeric_padding(depthwise),
            "dilation": depthwise.dilation,
            "groups": depthwise.groups,
        }
        response = F.conv2d(padded, kernel, **conv) * batch.second_coefficients
        back = conv2d_input(padded.shape, kernel, response, **conv)
        if padded.shape != signal.shape:  # the adjoint of the explicit 'same' padding is a crop
            top = (depthwise.dilation[0] * (depthwise.kernel_size[0] - 1)) // 2
            left = (depthwise.dilation[1] * (depthwise.kernel_size[1] - 1)) // 2
            back = back[:, :, top : top + signal.shape[2], left : left + signal.shape[3]]
        return batch.slope * back

    def dense(self) -> Tensor:
        """The (n, d, d) matrices, by d products with the unit vectors (for checks on small sites)."""
        eye = torch.eye(self.neuron_dim, dtype=self.batches[0].inputs.dtype, device=self.device)
        columns = [self.matvec(eye[k].expand(self.num_neurons, -1).clone()) for k in range(self.neuron_dim)]
        return torch.stack(columns, dim=2)

    def memory_bytes(self) -> int:
        """Bytes held by the cached batches."""
        total = 0
        for batch in self.batches:
            for tensor in (batch.inputs, batch.coefficients, batch.slope, batch.second_coefficients):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
        return total
