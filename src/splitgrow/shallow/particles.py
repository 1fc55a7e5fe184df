"""Compressing a sample into a few weighted particles by minimising the MMD (paper Appendix C.1).

The target is the empirical distribution rho_* = (1/N) sum_j delta(theta*_j); the approximation is
rho = sum_i w_i delta(theta_i). With a Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)), the loss is the
squared maximum mean discrepancy (the quantity the paper's eq. 17 calls MMD):

    L = sum_ij w_i w_j k(theta_i, theta_j) - (2/N) sum_ij w_i k(theta_i, theta*_j)
        + (1/N^2) sum_ij k(theta*_i, theta*_j)

By random features, k(a, b) = E_x[sigma(a, x) sigma(b, x)] with sigma(theta, (omega, b)) =
sqrt(2) cos(omega^T theta + b), omega ~ N(0, I / h^2), b ~ U[0, 2 pi]; so L is the least-squares loss of a
one-hidden-layer network whose neurons are the particles, and splitting applies. Particle i's splitting matrix
(MATH.md convention, g = dL/da_i) is

    S_i = 2 w_i [ sum_j w_j Hess_1 k(theta_i, theta_j) - (1/N) sum_j Hess_1 k(theta_i, theta*_j) ]   (exact form)
    S_i = sum_x (2/M) (f_rho(x) - f_*(x)) w_i Hess_theta sigma(theta_i, x)                       (random features)

where Hess_1 differentiates the first argument only. Both come from the same torch.func machinery as any
other neuron (:func:`splitgrow.statistics.hessian_splitting_matrices`). Training always uses the exact loss.

Splitting halves a particle's weight between its two offspring; adding a particle (new initialisation, herding)
resets all weights to 1/n, as in the paper. The methods beyond the paper change weights only as their surgery says:
a signed split gives its offspring shares of either sign of the parent's weight, and a Firefly particle enters with
the small weight it was scored with (:meth:`ParticleApproximation.add`); the weights then stay fixed like all others.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..statistics.closed_form import hessian_splitting_matrices
from ..surgery import Offspring
from .training import TrainingTrace, train_rows

SPLITTING_FORMS = ("exact", "random_features")


def gaussian_kernel(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    """k(a_i, b_j) = exp(-|a_i - b_j|^2 / (2 h^2)) for (n, d) and (m, d) inputs, as an (n, m) matrix."""
    squared = ((a.unsqueeze(1) - b.unsqueeze(0)) ** 2).sum(-1)
    return torch.exp(-0.5 * squared / bandwidth**2)


def gaussian_kernel_hessian(theta: Tensor, other: Tensor, bandwidth: float) -> Tensor:
    """Hess_theta k(theta, other) = k (delta delta^T / h^4 - I / h^2), delta = theta - other; shape (d, d)."""
    delta = theta - other
    value = torch.exp(-0.5 * (delta**2).sum() / bandwidth**2)
    eye = torch.eye(theta.shape[0], dtype=theta.dtype, device=theta.device)
    return value * (torch.outer(delta, delta) / bandwidth**4 - eye / bandwidth**2)


def _random_feature(theta: Tensor, feature: Tensor) -> Tensor:
    """sqrt(2) cos(omega^T theta + b) for one particle and one feature (omega, b) stored as [omega, b]."""
    return math.sqrt(2.0) * torch.cos(feature[:-1] @ theta + feature[-1])


class ParticleApproximation:
    """Weighted particles fitted to a sample by minimising the squared MMD; a growable problem.

    Args:
        particles: (n, d) initial particle positions.
        weights: (n,) initial weights (constants: only positions are trained), summing to 1.
        targets: (N, d) the sample to compress.
        bandwidth: h of the Gaussian kernel.
        learning_rate: Adagrad's learning rate (a fresh Adagrad at every call to :meth:`train`).
        new_particle_range: (low, high); new particles are drawn uniformly from this box.
        splitting_form: ``"exact"`` (kernel form) or ``"random_features"``.
        num_features: M, the number of random features for the random-feature form.
        feature_generator: source of the random features.
    """

    def __init__(
        self,
        particles: Tensor,
        weights: Tensor,
        targets: Tensor,
        *,
        bandwidth: float = 1.0,
        learning_rate: float = 0.01,
        new_particle_range: tuple[float, float] = (-5.0, 5.0),
        splitting_form: str = "exact",
        num_features: int = 2000,
        feature_generator: torch.Generator | None = None,
    ) -> None:
        if particles.dim() != 2 or targets.dim() != 2 or particles.shape[1] != targets.shape[1]:
            raise ValueError("particles and targets must be (n, d) and (N, d) with the same d")
        if splitting_form not in SPLITTING_FORMS:
            raise ValueError(f"splitting_form must be one of {SPLITTING_FORMS}, got {splitting_form!r}")
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        self.particles = particles.detach().clone().requires_grad_(True)
        self.weights = weights.detach().clone().to(particles.dtype)
        self.targets = targets.detach().to(particles.dtype)
        self.bandwidth = bandwidth
        self.learning_rate = learning_rate
        self.new_particle_range = new_particle_range
        self.splitting_form = splitting_form
        self._target_self_similarity = float(gaussian_kernel(self.targets, self.targets, bandwidth).mean())
        self.features: Tensor | None = None
        if splitting_form == "random_features":
            dim = particles.shape[1]
            omega = torch.randn((num_features, dim), generator=feature_generator, dtype=particles.dtype) / bandwidth
            phase = 2 * math.pi * torch.rand((num_features, 1), generator=feature_generator, dtype=particles.dtype)
            self.features = torch.cat([omega, phase], dim=1)

    @property
    def size(self) -> int:
        return int(self.particles.shape[0])

    @property
    def parameter_dim(self) -> int:
        return int(self.particles.shape[1])

    def _loss_tensor(self) -> Tensor:
        h = self.bandwidth
        self_term = self.weights @ gaussian_kernel(self.particles, self.particles, h) @ self.weights
        cross_term = self.weights @ gaussian_kernel(self.particles, self.targets, h).mean(dim=1)
        return self_term - 2.0 * cross_term + self._target_self_similarity

    def loss(self) -> float:
        """The squared MMD between the weighted particles and the targets."""
        with torch.no_grad():
            return float(self._loss_tensor())

    def splitting_matrices(self) -> Tensor:
        particles = self.particles.detach()
        if self.features is None:
            kernel = lambda theta, other: torch.exp(-0.5 * ((theta - other) ** 2).sum() / self.bandwidth**2)  # noqa: E731
            inputs = torch.cat([particles, self.targets])
            # coefficient of Hess_1 k(theta_i, input_p) in S_i
            coefficients = torch.cat(
                [
                    2.0 * self.weights.unsqueeze(1) * self.weights.unsqueeze(0),
                    (-2.0 / self.targets.shape[0]) * self.weights.expand(self.targets.shape[0], -1),
                ]
            )
            return hessian_splitting_matrices(kernel, particles, inputs, coefficients)
        phases = self.features[:, -1]
        omega = self.features[:, :-1]
        values = math.sqrt(2.0) * torch.cos(particles @ omega.t() + phases)  # (n, M)
        target_values = (math.sqrt(2.0) * torch.cos(self.targets @ omega.t() + phases)).mean(dim=0)
        residual = self.weights @ values - target_values  # f_rho(x) - f_*(x), (M,)
        coefficients = (2.0 / self.features.shape[0]) * residual.unsqueeze(1) * self.weights.unsqueeze(0)
        return hessian_splitting_matrices(_random_feature, particles, self.features, coefficients)

    @torch.no_grad()
    def split(self, positions: Tensor, directions: Tensor, epsilon: float) -> Tensor:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        directions = directions.to(self.particles).reshape(positions.numel(), self.parameter_dim)
        particles = self.particles.detach().clone()
        weights = self.weights.clone()
        parents = particles[positions]
        particles[positions] = parents + epsilon * directions
        weights[positions] = 0.5 * weights[positions]
        old_size = self.size
        self.particles = torch.cat([particles, parents - epsilon * directions]).requires_grad_(True)
        self.weights = torch.cat([weights, weights[positions]])
        return torch.arange(old_size, self.size)

    @torch.no_grad()
    def split_offspring(self, positions: Tensor, offspring: Sequence[Sequence[Offspring]], epsilon: float) -> Tensor:
        """Replace each particle at ``positions`` by its offspring theta + epsilon * shift_i with weights
        share_i * w (see :meth:`splitgrow.shallow.ShallowNetwork.split_offspring_`); returns the appended positions."""
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if positions.unique().numel() != positions.numel() or len(offspring) != positions.numel():
            raise ValueError("give distinct positions and one tuple of offspring for each")
        particles = self.particles.detach().clone()
        weights = self.weights.clone()
        appended_particles, appended_weights = [], []
        for position, children in zip(positions.tolist(), offspring):
            parent, parent_weight = particles[position].clone(), float(weights[position])
            placed = [
                parent if child.shift is None else parent + epsilon * child.shift.to(parent) for child in children
            ]
            particles[position] = placed[0]
            weights[position] = children[0].weight * parent_weight
            appended_particles.extend(placed[1:])
            appended_weights.extend(child.weight * parent_weight for child in children[1:])
        old_size = self.size
        if appended_particles:
            particles = torch.cat([particles, torch.stack(appended_particles)])
            weights = torch.cat([weights, torch.tensor(appended_weights, dtype=weights.dtype)])
        self.particles = particles.requires_grad_(True)
        self.weights = weights
        return torch.arange(old_size, self.size)

    def random_parameters(self, count: int, generator: torch.Generator) -> Tensor:
        """(count, d) new particle positions, uniform in ``new_particle_range`` in every coordinate."""
        low, high = self.new_particle_range
        return low + (high - low) * torch.rand(
            (count, self.parameter_dim), generator=generator, dtype=self.particles.dtype
        )

    @torch.no_grad()
    def add(self, parameters: Tensor, output_weights: Tensor) -> Tensor:
        """Append particles at ``parameters`` (k, d) with exactly the weights ``output_weights`` (k,): the other
        weights are kept (unlike :meth:`add_random`), so a zero weight leaves the loss unchanged."""
        old_size = self.size
        self.particles = torch.cat([self.particles.detach(), parameters.to(self.particles.dtype)]).requires_grad_(True)
        self.weights = torch.cat([self.weights, output_weights.to(self.weights.dtype).reshape(-1)])
        return torch.arange(old_size, self.size)

    def new_neuron_gradients(self, parameters: Tensor) -> Tensor:
        """g[j] = dL/dw_j at w_j = 0 for new particles at ``parameters`` (k, d), shape (k,):
        2 sum_i w_i k(theta_j, theta_i) - (2/N) sum_m k(theta_j, theta*_m), twice the MMD witness function.
        Differentiable with respect to ``parameters``."""
        parameters = parameters.to(self.particles.dtype)
        h = self.bandwidth
        to_particles = gaussian_kernel(parameters, self.particles.detach(), h) @ self.weights
        to_targets = gaussian_kernel(parameters, self.targets, h).mean(dim=1)
        return 2.0 * (to_particles - to_targets)

    @torch.no_grad()
    def add_random(self, count: int, generator: torch.Generator) -> Tensor:
        new = self.random_parameters(count, generator)
        old_size = self.size
        self.particles = torch.cat([self.particles.detach(), new]).requires_grad_(True)
        self.weights = torch.full((self.size,), 1.0 / self.size, dtype=self.particles.dtype)
        return torch.arange(old_size, self.size)

    def train(
        self,
        iterations: int,
        *,
        trainable: Tensor | None = None,
        record_every: int = 1,
        on_progress: Callable[[int], None] | None = None,
        on_record: Callable[[int, float], None] | None = None,
    ) -> TrainingTrace:
        return train_rows(
            [self.particles],
            self._loss_tensor,
            lambda params: torch.optim.Adagrad(params, lr=self.learning_rate),
            iterations,
            trainable=trainable,
            record_every=record_every,
            on_progress=on_progress,
            on_record=on_record,
        )

    def clone(self) -> ParticleApproximation:
        return copy.deepcopy(self)
