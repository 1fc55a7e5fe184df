"""One-hidden-layer networks f(x) = sum_k w_k sigma(theta_k, h(x)) and their regression problem.

:class:`ShallowNetwork` is the model; :class:`ShallowRegression` binds it to data and a loss and implements the
:class:`~splitgrow.growth.GrowableProblem` protocol, so that Algorithm 1 and every baseline can grow it.

Splitting neuron j into theta_j +/- eps v keeps the ``+`` offspring at position j and appends the ``-`` offspring
at the end; both carry half of the output weight w_j, so with eps = 0 the function is unchanged. A general split
(signed splitting: any number of offspring, output-weight shares of either sign) follows the same rule: the first
offspring takes the parent's place, the others are appended.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..surgery import Offspring
from .gradient_descent import closed_form_applies, descend
from .neurons import Neuron
from .training import OptimizerFactory, TrainingTrace, train_rows

LossFunction = Callable[[Tensor, Tensor], Tensor]


def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """mean over samples of (y - f)^2, with no factor 1/2 (the paper's convention)."""
    return ((prediction - target) ** 2).mean()


def _as_2d(x: Tensor) -> Tensor:
    return x.unsqueeze(-1) if x.dim() == 1 else x


class ShallowNetwork(nn.Module):
    """f(x) = sum_k w_k sigma(theta_k, h(x)) with h(x) = [x, 1] (or x when ``append_bias`` is False).

    Args:
        neuron: the neuron family, e.g. ``RidgeNeuron("gaussian")``.
        theta: (m, d) hidden parameters, one row per neuron.
        output_weights: (m,) for a scalar output or (m, k) for k outputs.
        append_bias: append a constant 1 to every input, so that the last entry of theta is a bias.
    """

    def __init__(self, neuron: Neuron, theta: Tensor, output_weights: Tensor, *, append_bias: bool = True) -> None:
        super().__init__()
        if theta.dim() != 2:
            raise ValueError(f"theta must have shape (m, d), got {tuple(theta.shape)}")
        if output_weights.shape[0] != theta.shape[0]:
            raise ValueError("theta and output_weights must have one row per neuron each")
        self.neuron = neuron
        self.append_bias = append_bias
        self.theta = nn.Parameter(theta.detach().clone())
        self.output_weights = nn.Parameter(output_weights.detach().clone())

    @property
    def size(self) -> int:
        """The number of hidden neurons."""
        return int(self.theta.shape[0])

    def features(self, x: Tensor) -> Tensor:
        """The neurons' common input h(x), shape (N, d)."""
        x = _as_2d(x).to(self.theta.dtype)
        if self.append_bias:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        return x

    def hidden(self, features: Tensor) -> Tensor:
        """Neuron outputs a[n, k] = sigma(theta_k, h_n), shape (N, m)."""
        return self.neuron(self.theta, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.hidden(self.features(x)) @ self.output_weights

    @torch.no_grad()
    def split_(self, positions: Tensor, directions: Tensor, epsilon: float) -> Tensor:
        """Split the neurons at ``positions`` into theta +/- epsilon * direction, each with half the output weight.

        Args:
            positions: (s,) distinct neuron positions.
            directions: (s, d) the splitting directions (the caller normalises them).
            epsilon: the step size, >= 0.

        Returns:
            The positions of the appended offspring (theta - epsilon * direction), in the order of ``positions``.
        """
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if positions.unique().numel() != positions.numel():
            raise ValueError("a neuron can be split only once per step")
        directions = directions.to(self.theta).reshape(positions.numel(), self.theta.shape[1])
        theta = self.theta.detach().clone()
        weights = self.output_weights.detach().clone()
        parents = theta[positions]
        theta[positions] = parents + epsilon * directions
        weights[positions] = 0.5 * weights[positions]
        new_theta = torch.cat([theta, parents - epsilon * directions])
        new_weights = torch.cat([weights, weights[positions]])
        return self._replace(new_theta, new_weights, positions.numel())

    @torch.no_grad()
    def split_offspring_(self, positions: Tensor, offspring: Sequence[Sequence[Offspring]], epsilon: float) -> Tensor:
        """Replace each neuron at ``positions`` by its offspring theta + epsilon * shift_i with output weights
        share_i * w (:class:`~splitgrow.surgery.Offspring`; a shift of None is the parent's theta).

        Args:
            positions: (s,) distinct neuron positions.
            offspring: per position, its offspring (shares summing to 1 keep the function at epsilon = 0).
            epsilon: the step size, >= 0.

        Returns:
            The positions of the appended offspring (all but each parent's first), parent by parent.
        """
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if positions.unique().numel() != positions.numel():
            raise ValueError("a neuron can be split only once per step")
        if len(offspring) != positions.numel() or any(len(children) < 1 for children in offspring):
            raise ValueError("give at least one offspring for every position")
        theta = self.theta.detach().clone()
        weights = self.output_weights.detach().clone()
        appended_theta, appended_weights = [], []
        for position, children in zip(positions.tolist(), offspring):
            parent_theta, parent_weight = theta[position].clone(), weights[position].clone()
            placed = [
                parent_theta if child.shift is None else parent_theta + epsilon * child.shift.to(theta)
                for child in children
            ]
            theta[position] = placed[0]
            weights[position] = children[0].weight * parent_weight
            appended_theta.extend(placed[1:])
            appended_weights.extend(child.weight * parent_weight for child in children[1:])
        if not appended_theta:  # one offspring each: the parents moved in place
            return self._replace(theta, weights, 0)
        new_theta = torch.cat([theta, torch.stack(appended_theta)])
        new_weights = torch.cat([weights, torch.stack(appended_weights)])
        return self._replace(new_theta, new_weights, len(appended_theta))

    @torch.no_grad()
    def add_(self, theta: Tensor, output_weights: Tensor) -> Tensor:
        """Append new neurons; returns their positions."""
        new_theta = torch.cat([self.theta.detach(), theta.to(self.theta.dtype)])
        new_weights = torch.cat([self.output_weights.detach(), output_weights.to(self.output_weights.dtype)])
        return self._replace(new_theta, new_weights, theta.shape[0])

    def _replace(self, theta: Tensor, weights: Tensor, added: int) -> Tensor:
        old_size = self.size
        self.theta = nn.Parameter(theta)
        self.output_weights = nn.Parameter(weights)
        return torch.arange(old_size, old_size + added)


class ShallowRegression:
    """A :class:`ShallowNetwork` fitted to fixed data (x, y) by full-batch training.

    Args:
        network: the model; it is owned (and modified) by the problem.
        x, y: the training inputs and targets.
        learning_rate: step size of the default optimiser, full-batch gradient descent.
        init_std, init_weight_std: new neurons (new initialisation, gradient boosting) get
            theta ~ N(0, init_std^2 I) and w ~ N(0, init_weight_std^2).
        loss_function: the loss as minimised, ``mean_squared_error`` by default.
        optimizer_factory: overrides the optimiser (built afresh at every call to :meth:`train`).

    With ridge neurons, the mean squared error and the default optimiser, :meth:`train` takes its steps with the
    gradient in closed form (:mod:`splitgrow.shallow.gradient_descent`), several times faster than autograd.
    """

    def __init__(
        self,
        network: ShallowNetwork,
        x: Tensor,
        y: Tensor,
        *,
        learning_rate: float = 0.1,
        init_std: float = 1.0,
        init_weight_std: float = 1.0,
        loss_function: LossFunction = mean_squared_error,
        optimizer_factory: OptimizerFactory | None = None,
    ) -> None:
        self.network = network
        self.x = x
        self.y = y.to(network.theta.dtype)
        self.learning_rate = learning_rate
        self.init_std = init_std
        self.init_weight_std = init_weight_std
        self.loss_function = loss_function
        self.optimizer_factory = optimizer_factory or self._gradient_descent
        self._features = network.features(x)

    def _gradient_descent(self, parameters: Sequence[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=self.learning_rate)

    @property
    def uses_default_optimizer(self) -> bool:
        """Whether training is plain full-batch gradient descent at ``learning_rate`` (no other optimiser given)."""
        return self.optimizer_factory == self._gradient_descent

    @property
    def features(self) -> Tensor:
        """The neurons' common input h(x) at every training sample, shape (N, d)."""
        return self._features

    @property
    def size(self) -> int:
        return self.network.size

    @property
    def parameter_dim(self) -> int:
        return int(self.network.theta.shape[1])

    def _loss_tensor(self) -> Tensor:
        prediction = self.network.hidden(self._features) @ self.network.output_weights
        return self.loss_function(prediction, self.y)

    def loss(self) -> float:
        with torch.no_grad():
            return float(self._loss_tensor())

    def output_gradients(self) -> Tensor:
        """g[n, k] = dL/da[n, k], the loss gradient with respect to each neuron's output at each sample."""
        with torch.no_grad():
            hidden = self.network.hidden(self._features)
        hidden.requires_grad_(True)
        loss = self.loss_function(hidden @ self.network.output_weights.detach(), self.y)
        (gradient,) = torch.autograd.grad(loss, hidden)
        return gradient

    def splitting_matrices(self) -> Tensor:
        return self.network.neuron.splitting_matrices(
            self.network.theta.detach(), self._features, self.output_gradients()
        )

    def split(self, positions: Tensor, directions: Tensor, epsilon: float) -> Tensor:
        return self.network.split_(positions, directions, epsilon)

    def split_offspring(self, positions: Tensor, offspring: Sequence[Sequence[Offspring]], epsilon: float) -> Tensor:
        return self.network.split_offspring_(positions, offspring, epsilon)

    def random_parameters(self, count: int, generator: torch.Generator) -> Tensor:
        """(count, d) hidden parameters of new neurons, theta ~ N(0, init_std^2 I)."""
        theta = self.network.theta
        return self.init_std * torch.randn(
            (count, theta.shape[1]), generator=generator, dtype=theta.dtype, device=theta.device
        )

    def add_random(self, count: int, generator: torch.Generator) -> Tensor:
        new_theta = self.random_parameters(count, generator)
        weights = self.network.output_weights
        new_weights = self.init_weight_std * torch.randn(
            (count, *weights.shape[1:]), generator=generator, dtype=weights.dtype, device=weights.device
        )
        return self.network.add_(new_theta, new_weights)

    def add(self, parameters: Tensor, output_weights: Tensor) -> Tensor:
        return self.network.add_(parameters, output_weights)

    def new_neuron_gradients(self, parameters: Tensor) -> Tensor:
        """g[j] = dL/dw_j at w_j = 0 for new neurons with hidden parameters ``parameters`` (k, d), shape (k,) or
        (k, outputs): sum_n dL/df(x_n) sigma(theta_j, h_n). Differentiable with respect to ``parameters``."""
        with torch.no_grad():
            prediction = self.network.hidden(self._features) @ self.network.output_weights
        prediction.requires_grad_(True)
        with torch.enable_grad():
            (residual,) = torch.autograd.grad(self.loss_function(prediction, self.y), prediction)
        hidden = self.network.neuron(parameters.to(self._features), self._features)  # (N, k)
        return hidden.t() @ residual

    def train(
        self,
        iterations: int,
        *,
        trainable: Tensor | None = None,
        record_every: int = 1,
        on_progress: Callable[[int], None] | None = None,
        on_record: Callable[[int, float], None] | None = None,
    ) -> TrainingTrace:
        if closed_form_applies(self):
            (trace,) = descend(
                [self],
                iterations,
                trainable=trainable,
                record_every=record_every,
                on_progress=on_progress,
                on_record=on_record,
            )
            return trace
        return train_rows(
            [self.network.theta, self.network.output_weights],
            self._loss_tensor,
            self.optimizer_factory,
            iterations,
            trainable=trainable,
            record_every=record_every,
            on_progress=on_progress,
            on_record=on_record,
        )

    def clone(self) -> ShallowRegression:
        return copy.deepcopy(self)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.network(x)
