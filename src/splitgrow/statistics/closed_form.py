"""Splitting matrices from per-sample statistics.

A neuron is a parameter vector theta in R^d and a map sigma(theta, h). With g[p] = dL/da at every sample (and
position) p, taken for the loss exactly as it is minimised (so a mean over samples already carries its 1/N),
its splitting matrix is

    S = sum_p g[p] * Hessian_theta sigma(theta, h[p]).

Two ways to compute it, for all n neurons of a family at once:

* :func:`ridge_splitting_matrices` for sigma = phi(theta^T h): S_j = sum_p c[p, j] h[p] h[p]^T with
  c = g * phi''(z). This is the fast path used for Linear and Conv2d neurons.
* :func:`hessian_splitting_matrices` for any differentiable sigma: the Hessian of
  theta -> sum_p c[p, j] sigma(theta, h[p]) by ``torch.func`` (forward-over-reverse), vmapped over neurons.

Both accumulate over chunks so that the largest temporary tensor stays below ``max_temporary_elements``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import hessian, vmap

#: Default cap on the number of elements of the largest temporary tensor (2^25 elements: 256 MiB in float64).
DEFAULT_MAX_TEMPORARY_ELEMENTS = 2**25


def _check_pair(inputs: Tensor, coefficients: Tensor) -> None:
    if coefficients.dim() != 2:
        raise ValueError(f"coefficients must have shape (P, n), got {tuple(coefficients.shape)}")
    if inputs.shape[0] != coefficients.shape[0]:
        raise ValueError(
            f"inputs and coefficients disagree on the number of samples: {inputs.shape[0]} vs {coefficients.shape[0]}"
        )


def ridge_splitting_matrices(
    inputs: Tensor,
    coefficients: Tensor,
    *,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
) -> Tensor:
    """S_j = sum_p coefficients[p, j] * inputs[p] inputs[p]^T for every neuron j.

    Args:
        inputs: (P, d) inputs h of the neurons, one row per sample (and position); include the constant 1 for
            a bias.
        coefficients: (P, n) the weights c = g * phi''(z) of each row for each of the n neurons.
        max_temporary_elements: bound on the (chunk, P, d) temporary; neurons are processed in chunks that fit.

    Returns:
        (n, d, d) symmetric matrices, in the dtype of ``inputs``.
    """
    if inputs.dim() != 2:
        raise ValueError(f"inputs must have shape (P, d), got {tuple(inputs.shape)}")
    _check_pair(inputs, coefficients)
    num_samples, dim = inputs.shape
    num_neurons = coefficients.shape[1]
    coefficients = coefficients.to(inputs.dtype)
    out = inputs.new_empty((num_neurons, dim, dim))
    chunk = max(1, max_temporary_elements // max(1, num_samples * dim))
    inputs_t = inputs.t()
    for start in range(0, num_neurons, chunk):
        stop = min(num_neurons, start + chunk)
        # (chunk, d, P) @ (P, d): each neuron's inputs weighted by its coefficients, times the inputs.
        weighted = inputs_t.unsqueeze(0) * coefficients[:, start:stop].t().unsqueeze(1)
        out[start:stop] = weighted @ inputs
    return out


def hessian_splitting_matrices(
    sigma: Callable[[Tensor, Tensor], Tensor],
    theta: Tensor,
    inputs: Tensor,
    coefficients: Tensor,
    *,
    max_temporary_elements: int = DEFAULT_MAX_TEMPORARY_ELEMENTS,
) -> Tensor:
    """S_j = sum_p coefficients[p, j] * Hessian_theta sigma(theta_j, inputs[p]) by automatic differentiation.

    Args:
        sigma: ``sigma(theta, h) -> scalar`` for one neuron (theta of shape (d,)) and one input h (any shape);
            it must be written with torch operations that ``torch.func`` can transform.
        theta: (n, d) the parameters of the n neurons.
        inputs: (P, ...) the inputs, one per sample (and position).
        coefficients: (P, n) the weight g[p, j] of each input for each neuron.
        max_temporary_elements: bound used to choose how many inputs are differentiated at once.

    Returns:
        (n, d, d) matrices in the dtype of ``theta``.
    """
    if theta.dim() != 2:
        raise ValueError(f"theta must have shape (n, d), got {tuple(theta.shape)}")
    _check_pair(inputs, coefficients)
    if coefficients.shape[1] != theta.shape[0]:
        raise ValueError(f"coefficients have {coefficients.shape[1]} columns but there are {theta.shape[0]} neurons")
    num_neurons, dim = theta.shape
    theta = theta.detach()
    coefficients = coefficients.detach().to(theta.dtype)

    def weighted_sum(theta_j: Tensor, coefficients_j: Tensor, inputs_chunk: Tensor) -> Tensor:
        values = vmap(sigma, in_dims=(None, 0))(theta_j, inputs_chunk)
        return (values * coefficients_j).sum()

    per_neuron = vmap(hessian(weighted_sum, argnums=0), in_dims=(0, 1, None))
    # Forward-over-reverse keeps about d tangents of each per-input intermediate for every neuron.
    per_input = max(1, num_neurons * dim * max(1, inputs[0].numel()))
    chunk = max(1, max_temporary_elements // per_input)
    out = theta.new_zeros((num_neurons, dim, dim))
    for start in range(0, inputs.shape[0], chunk):
        stop = min(inputs.shape[0], start + chunk)
        out += per_neuron(theta, coefficients[start:stop], inputs[start:stop])
    return out
