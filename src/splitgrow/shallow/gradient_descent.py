"""Full-batch gradient descent of ridge networks under the mean squared error, with the gradient in closed form.

For f(x) = sum_k w_k phi(theta_k^T h(x)) and L = mean over the N samples and K outputs of (f - y)^2, with
g = 2 (f - y) / (N K) the gradient of L with respect to f:

    dL/dw_k = sum_n phi(z_nk) g_n,        dL/dtheta_k = sum_n (w_k^T g_n) phi'(z_nk) h_n,        z_nk = theta_k^T h_n

The toy experiments train such networks for hundreds of thousands of steps on tensors of a few thousand entries,
where autograd and the optimiser's bookkeeping cost several times the arithmetic. These formulas take the same
steps as :func:`~splitgrow.shallow.training.train_rows` with plain SGD (equal up to rounding) in a dozen tensor
operations. Several networks of one size on the same data can also train together as one stack of B networks,
(B, m, d) parameters in one batched tensor program: each takes the steps it would take alone, up to rounding (BLAS
may sum in another order for another shape or memory alignment), whatever the others in the stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .neurons import RidgeNeuron
from .training import TrainingTrace, _record_checked

if TYPE_CHECKING:
    from ..activations import Activation
    from .network import ShallowRegression

#: phi' from z and phi(z), for activations where that spares evaluating phi a second time (an exp or a tanh per
#: entry, the dearest part of a step); each is checked against the activation's own phi' before use
_DERIVATIVE_FROM_VALUE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gaussian": lambda z, value: -z * value,
    "tanh": lambda z, value: 1.0 - value * value,
    "sigmoid": lambda z, value: value * (1.0 - value),
}


def _derivative(activation: Activation) -> Callable[[Tensor, Tensor], Tensor]:
    """phi'(z) as a function of z and phi(z)."""
    shortcut = _DERIVATIVE_FROM_VALUE.get(activation.name)
    if shortcut is not None:
        z = torch.linspace(-4.0, 4.0, 33, dtype=torch.float64)
        if torch.allclose(shortcut(z, activation.phi(z)), activation.dphi(z), rtol=1e-12, atol=1e-14):
            return shortcut
    return lambda z, value: activation.dphi(z)


def closed_form_applies(problem: ShallowRegression) -> bool:
    """Whether ``problem`` trains by plain gradient descent on the mean squared error of ridge neurons, the case
    the closed-form gradient covers (any other loss, neuron family or optimiser trains through autograd)."""
    from .network import mean_squared_error

    return (
        isinstance(problem.network.neuron, RidgeNeuron)
        and problem.loss_function is mean_squared_error
        and problem.uses_default_optimizer
    )


class _Stack:
    """B ridge networks of one size on one data set, as (B, m, d) hidden parameters and (B, m, K) output weights."""

    def __init__(self, problems: Sequence[ShallowRegression]) -> None:
        first = problems[0]
        for problem in problems:
            if not closed_form_applies(problem):
                raise ValueError("closed-form training needs ridge neurons, the mean squared error and plain SGD")
            if problem.size != first.size or problem.network.output_weights.shape != first.network.output_weights.shape:
                raise ValueError("networks trained together must have the same size and output shape")
            same_data = problem.x is first.x or torch.equal(problem.x, first.x)
            if not same_data or not torch.equal(problem.y, first.y):
                raise ValueError("networks trained together must be fitted to the same data")
            if problem.network.neuron.activation.name != first.network.neuron.activation.name:
                raise ValueError("networks trained together must use the same activation")
            if problem.learning_rate != first.learning_rate:
                raise ValueError("networks trained together must use the same learning rate")
        self.problems = list(problems)
        self.activation = first.network.neuron.activation
        self.derivative = _derivative(self.activation)
        self.learning_rate = first.learning_rate
        self.features = first.features
        self.features_t = self.features.t().contiguous()
        self.output_shape = first.network.output_weights.shape[1:]  # () for one output, (K,) for K
        self.targets = first.y.reshape(first.y.shape[0], -1)  # (N, K)
        self.theta = torch.stack([p.network.theta.detach() for p in problems])  # (B, m, d)
        self.weights = torch.stack([p.network.output_weights.detach().reshape(p.size, -1) for p in problems])

    def forward(self) -> tuple[Tensor, Tensor, Tensor]:
        """Pre-activations z (B, m, N), hidden outputs phi(z) (B, m, N) and residuals f - y (B, N, K)."""
        pre_activations = self.theta @ self.features_t
        hidden = self.activation.phi(pre_activations)
        residuals = hidden.transpose(-1, -2) @ self.weights - self.targets
        return pre_activations, hidden, residuals

    def descend(self, pre_activations: Tensor, hidden: Tensor, residuals: Tensor, frozen: Tensor | None) -> None:
        """One gradient-descent step of every network, from the forward pass at the current parameters."""
        output_gradients = residuals * (2.0 / residuals[0].numel())  # dL/df, (B, N, K)
        weight_gradients = hidden @ output_gradients  # (B, m, K)
        hidden_gradients = self.weights @ output_gradients.transpose(-1, -2)  # dL/da, (B, m, N)
        pre_gradients = hidden_gradients * self.derivative(pre_activations, hidden)
        theta_gradients = pre_gradients @ self.features  # (B, m, d)
        if frozen is not None:
            theta_gradients.masked_fill_(frozen.view(1, -1, 1), 0.0)
            weight_gradients.masked_fill_(frozen.view(1, -1, 1), 0.0)
        self.theta.add_(theta_gradients, alpha=-self.learning_rate)
        self.weights.add_(weight_gradients, alpha=-self.learning_rate)

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stack's parameters into the problems' networks."""
        for problem, theta, weights in zip(self.problems, self.theta, self.weights):
            problem.network.theta.copy_(theta)
            problem.network.output_weights.copy_(weights.reshape(problem.size, *self.output_shape))


@torch.no_grad()
def descend(
    problems: Sequence[ShallowRegression],
    iterations: int,
    *,
    trainable: Tensor | None = None,
    record_every: int = 1,
    on_progress: Callable[[int], None] | None = None,
    on_record: Callable[[int, float], None] | None = None,
) -> list[TrainingTrace]:
    """Train ``problems`` (ridge networks of one size on the same data, see :func:`closed_form_applies`) together
    for ``iterations`` gradient-descent steps at their learning rate; the same contract as
    :func:`~splitgrow.shallow.training.train_rows` for each of them.

    Args:
        problems: the networks to train, in place.
        iterations: gradient-descent steps.
        trainable: positions of the neurons allowed to move (the same in every network); None trains all.
        record_every: record the losses every this many iterations; the losses before the first step and after
            the last are always recorded.
        on_progress: called with the number of iterations done since its previous call.
        on_record: called with (iteration, loss) at every recorded iteration, before that iteration's step, with
            the problem's parameters up to date; only when a single problem trains.

    Returns:
        Each problem's recorded losses.

    Raises:
        DivergenceError: a loss became NaN or infinite.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if record_every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every}")
    if not problems:
        return []
    if on_record is not None and len(problems) > 1:
        raise ValueError("on_record needs a single problem")
    stack = _Stack(problems)
    frozen: Tensor | None = None
    if trainable is not None:
        frozen = torch.ones(stack.theta.shape[1], dtype=torch.bool, device=stack.theta.device)
        frozen[trainable] = False
    traces = [TrainingTrace() for _ in problems]

    def record(iteration: int) -> None:
        # each problem's own loss(), so that a recorded loss is exactly what the problem reports
        stack.write_back()
        for trace, problem in zip(traces, problems):
            _record_checked(trace, iteration, problem.loss(), on_record)

    progress_step = max(1, min(1000, iterations // 100 or 1))
    pending = 0
    try:
        for iteration in range(iterations):
            pre_activations, hidden, residuals = stack.forward()
            if iteration % record_every == 0:
                record(iteration)
            stack.descend(pre_activations, hidden, residuals, frozen)
            pending += 1
            if on_progress is not None and pending == progress_step:
                on_progress(pending)
                pending = 0
        record(iterations)
    finally:
        stack.write_back()
    if on_progress is not None and pending:
        on_progress(pending)
    return traces
