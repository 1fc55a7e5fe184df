"""Families of neurons sigma(theta, h) and their splitting matrices.

A family holds the functional form shared by n neurons; their parameters are the rows of a (n, d) tensor. Two
kinds cover every case of the paper:

* :class:`RidgeNeuron`: sigma = phi(theta^T h) for an activation phi from :mod:`splitgrow.activations`. Its
  splitting matrix has the closed form sum c h h^T.
* :class:`FunctionalNeuron`: any differentiable sigma(theta, h); its splitting matrix comes from ``torch.func``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from torch import Tensor
from torch.func import vmap

from ..activations import Activation, get_activation
from ..statistics.closed_form import hessian_splitting_matrices, ridge_splitting_matrices


class Neuron(ABC):
    """The shared form of a family of neurons."""

    @abstractmethod
    def __call__(self, theta: Tensor, inputs: Tensor) -> Tensor:
        """Outputs a[p, j] = sigma(theta[j], inputs[p]) as a (P, n) tensor."""

    @abstractmethod
    def splitting_matrices(self, theta: Tensor, inputs: Tensor, output_gradients: Tensor) -> Tensor:
        """(n, d, d) splitting matrices, given g[p, j] = dL/da[p, j] at every input p."""

    def hessian_splitting_matrices(self, theta: Tensor, inputs: Tensor, output_gradients: Tensor) -> Tensor:
        """The same matrices by automatic differentiation of sigma, whatever the family (a reference)."""
        return hessian_splitting_matrices(self.single, theta, inputs, output_gradients)

    @abstractmethod
    def single(self, theta: Tensor, h: Tensor) -> Tensor:
        """sigma for one neuron (theta of shape (d,)) and one input h, as a scalar tensor."""


class RidgeNeuron(Neuron):
    """sigma(theta, h) = phi(theta^T h)."""

    def __init__(self, activation: Activation | str) -> None:
        self.activation = get_activation(activation) if isinstance(activation, str) else activation

    def __repr__(self) -> str:
        return f"RidgeNeuron({self.activation.name})"

    def __call__(self, theta: Tensor, inputs: Tensor) -> Tensor:
        return self.activation.phi(inputs @ theta.t())

    def single(self, theta: Tensor, h: Tensor) -> Tensor:
        return self.activation.phi(h @ theta)

    def splitting_matrices(self, theta: Tensor, inputs: Tensor, output_gradients: Tensor) -> Tensor:
        pre_activations = inputs @ theta.detach().t()
        coefficients = output_gradients.detach() * self.activation.d2phi(pre_activations)
        return ridge_splitting_matrices(inputs.detach(), coefficients)


class FunctionalNeuron(Neuron):
    """Any neuron given as a function ``sigma(theta, h) -> scalar`` written with torch operations."""

    def __init__(self, sigma: Callable[[Tensor, Tensor], Tensor], name: str | None = None) -> None:
        self.sigma = sigma
        self.name = name or getattr(sigma, "__name__", "sigma")

    def __repr__(self) -> str:
        return f"FunctionalNeuron({self.name})"

    def __call__(self, theta: Tensor, inputs: Tensor) -> Tensor:
        per_input = vmap(self.sigma, in_dims=(0, None))  # over neurons
        return vmap(per_input, in_dims=(None, 0))(theta, inputs)  # over inputs

    def single(self, theta: Tensor, h: Tensor) -> Tensor:
        return self.sigma(theta, h)

    def splitting_matrices(self, theta: Tensor, inputs: Tensor, output_gradients: Tensor) -> Tensor:
        return self.hessian_splitting_matrices(theta, inputs, output_gradients)
