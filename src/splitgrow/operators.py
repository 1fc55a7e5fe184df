"""Matrix-free splitting matrices: S_j v_j for every neuron of a site at once, never forming a d x d matrix.

For a site with inputs h_p (rows of H, P x d) and coefficients c[p, j], S_j v_j = H^T (c_j * (H v_j)); for all
neurons at once, with V the (n, d) matrix of directions,

    S V = ((H V^T) * C)^T H.

For a convolution, H V^T is the convolution of the site's input with the filters V, and (.)^T H is the gradient of
a convolution with respect to its weight: two convolutions, no unfolded H. A depthwise block after the site adds
J^T (c2 * (J v)), with J v = depthwise(phi1' s1 * (H v)) and J^T its adjoint (``conv2d_input``), both per-channel
convolutions. Memory: the cached inputs and coefficient fields of a sample of the data, plus O(n d) per product;
never n d^2.

A good start for the solver comes from the same structure: every S_j = H^T diag(c_j) H reads the same inputs, so
in a subspace Q (d x k) of the dominant input directions, shared by all neurons of the site, all the compressed
matrices Q^T S_j Q = (HQ)^T diag(c_j) (HQ) cost one pass over the k features HQ (``ritz_start``).
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


# Rows h_p (samples x positions) read to compress the matrices for LOBPCG's starting vectors: a 32 x 32 feature map
# of 1,024 images has a million, whose k^2 outer products would cost more than the solve they are meant to shorten.
START_ROWS = 2**15


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

    # ------------------------------------------------------------------ a shared input subspace (Rayleigh-Ritz)

    @property
    def _shares_inputs(self) -> bool:
        """Whether every neuron reads the same input rows h_p (not so in a grouped convolution)."""
        return isinstance(self.module, nn.Linear) or self.module.groups == 1

    def _conv_arguments(self) -> dict:
        module = self.module
        return {"stride": module.stride, "padding": numeric_padding(module), "dilation": module.dilation}

    def _features(self, batch: _Batch, basis: Tensor) -> Tensor:
        """H Q for one batch: (N, k) for a Linear, (N, k, H', W') for a convolution; ``basis`` is (d, k)."""
        rows = basis.t()
        weights, bias = (rows[:, :-1], rows[:, -1].contiguous()) if self.has_bias else (rows, None)
        if isinstance(self.module, nn.Linear):
            out = batch.inputs @ weights.t()
            return out if bias is None else out + bias
        filters = weights.reshape(basis.shape[1], *self.module.weight.shape[1:])
        return F.conv2d(batch.inputs, filters, bias, **self._conv_arguments())

    def _features_adjoint(self, batch: _Batch, features: Tensor) -> Tensor:
        """H^T Y for one batch, (d, k): the adjoint of :meth:`_features`."""
        if isinstance(self.module, nn.Linear):
            parts = [batch.inputs.t() @ features]
            if self.has_bias:
                parts.append(features.sum(0, keepdim=True))
            return torch.cat(parts, dim=0)
        shape = (features.shape[1], *self.module.weight.shape[1:])
        parts = [conv2d_weight(batch.inputs, shape, features, **self._conv_arguments()).flatten(1).t()]
        if self.has_bias:
            parts.append(features.sum((0, 2, 3)).unsqueeze(0))
        return torch.cat(parts, dim=0)

    def input_subspace(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        """An orthonormal basis (d, k) of the dominant subspace of the site's inputs (k = min(dim, d)).

        Randomised range finding on H^T H with ``power_iterations`` passes (two products with H and one with
        H^T each). The identity when d <= dim (then Rayleigh-Ritz is exact); None for a grouped convolution
        with d > dim, whose neurons do not share their inputs.
        """
        dtype, device = self.batches[0].inputs.dtype, self.device
        if self.neuron_dim <= dim:
            return torch.eye(self.neuron_dim, dtype=dtype, device=device)
        if not self._shares_inputs:
            return None
        basis = torch.randn((self.neuron_dim, dim), generator=generator, dtype=torch.float64).to(device, dtype)
        for _ in range(max(1, power_iterations)):
            gram = sum(self._features_adjoint(b, self._features(b, basis)) for b in self.batches)
            basis = torch.linalg.qr(gram)[0]
        return basis

    def compress(self, basis: Tensor, *, max_rows: int | None = None, max_temporary_elements: int = 2**25) -> Tensor:
        """Q^T S_j Q for every neuron j, (n, k, k), for an orthonormal ``basis`` Q (d, k).

        When all neurons share their inputs and no depthwise block follows, from the k features HQ alone:
        sum_p c_pj g_p g_p^T with g_p = Q^T h_p, in chunks of rows that keep the (rows, k^2) outer products within
        ``max_temporary_elements``. Otherwise (a depthwise block's term does not factor through the inputs; a
        grouped convolution's neurons read different inputs) by k products S (q_i, ..., q_i). With ``max_rows``,
        the fast path reads only the first rows h_p of the cached batches (at least part of one batch), an estimate
        that is enough for starting vectors and keeps their cost below that of one product on large inputs.
        """
        k = basis.shape[1]
        if self.depthwise is not None or not self._shares_inputs:
            columns = [self.matvec(basis[:, i].expand(self.num_neurons, -1).contiguous()) for i in range(k)]
            return basis.t().unsqueeze(0) @ torch.stack(columns, dim=2)  # (n, k, d) @ (n, d, k)
        total = basis.new_zeros((self.num_neurons, k * k))
        rows_per_chunk = max(1, max_temporary_elements // (k * k))
        rows_left = max_rows if max_rows is not None else float("inf")
        weight = 0.0
        for batch in self.batches:
            if rows_left <= 0:
                break
            features = self._features(batch, basis)
            coefficients = batch.coefficients
            if features.dim() == 4:  # (N, k, H', W') -> (P, k), coefficients alike
                features = features.permute(0, 2, 3, 1).reshape(-1, k)
                coefficients = coefficients.permute(0, 2, 3, 1).reshape(-1, self.num_neurons)
            rows = int(min(features.shape[0], rows_left))
            rows_left -= rows
            weight += batch.weight
            for start in range(0, rows, rows_per_chunk):
                stop = min(rows, start + rows_per_chunk)
                g = features[start:stop]
                outer = (g.unsqueeze(2) * g.unsqueeze(1)).reshape(g.shape[0], k * k)
                total += batch.weight * (coefficients[start:stop].t() @ outer)
        return (total / weight).reshape(self.num_neurons, k, k)

    def ritz_start(self, dim: int, generator: torch.Generator, power_iterations: int = 1) -> Tensor | None:
        """Starting directions (n, d): each neuron's lowest Ritz vector in the site's dominant input subspace of
        dimension ``dim``. None where d > dim and there is no cheap compression: a grouped convolution (no
        shared inputs), or a depthwise block's term, which would cost ``dim`` products (measured: as much as
        the rest of the solve, and starting from the input term alone led LOBPCG astray more often than random
        starts)."""
        if self.depthwise is not None and self.neuron_dim > dim:
            return None
        basis = self.input_subspace(dim, generator, power_iterations)
        if basis is None:
            return None
        compressed = self.compress(basis, max_rows=START_ROWS)
        _, vectors = torch.linalg.eigh(0.5 * (compressed + compressed.transpose(1, 2)))
        return vectors[:, :, 0] @ basis.t()

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
