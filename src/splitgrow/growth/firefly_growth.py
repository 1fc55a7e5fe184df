"""Firefly growth (Wu, Liu, Stone & Liu, NeurIPS 2020) for one-layer problems: brand-new neurons compete with splits.

The same mathematics as :mod:`splitgrow.firefly` (docs/design.md, section 6), on a one-layer problem. A new neuron
j with hidden parameters theta_j enters with output weight t u_j; its weight was zero, so the loss changes by

    t <g_j, u_j> + O(t^2),    g_j = dL/dw_j at w_j = 0 (``problem.new_neuron_gradients``),

best for u_j = -g_j / ||g_j|| (in one output dimension: the sign), a first-order decrease t ||g_j||. The candidates
start from the problem's own initialisation (``problem.random_parameters``) and take a few steps of gradient ascent
on ||g_j(theta_j)||, each of a fixed length along the normalised gradient, kept only where it raises ||g_j|| (else
the candidate's step length is halved). Unlike the deep version the norm of theta_j is not held fixed: a particle
position or a Gaussian neuron's width has no natural sphere, and ||g_j|| is bounded for bounded neurons (sigma of
the RBF and MMD problems is at most 1).

Candidates are ranked together with the plain splits of the existing neurons by their predicted loss change:
eps^2/2 lambda_min for a split, -t ||g_j|| for a new neuron, t = eps^2/2 by default (both of order eps^2, so the
ranking compares lambda_min with -||g_j||), and the best ``count`` are applied; a split adds one neuron, a new
neuron one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..solvers import dense_eigenpairs
from .algorithm import GrowableProblem, GrowthEvent, GrowthMethod


def ascend_new_neurons(
    problem: GrowableProblem, parameters: Tensor, steps: int, step_length: float | Tensor
) -> tuple[Tensor, Tensor]:
    """``steps`` steps of monotone normalised gradient ascent of each candidate's ||g_j|| (see the module docstring).

    Args:
        problem: the problem the candidates would join.
        parameters: (k, d) their starting hidden parameters.
        steps: ascent steps.
        step_length: the length of each candidate's first step (halved for a candidate after a step that did not
            raise its ||g_j||).

    Returns:
        The final (k, d) parameters and their (k,) ||g_j||.
    """
    theta = parameters.detach().clone()
    lengths = torch.as_tensor(step_length, dtype=theta.dtype).expand(theta.shape[0]).clone()
    norms = _gradient_norms(problem, theta)
    for _ in range(steps):
        leaf = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            (ascent,) = torch.autograd.grad(_gradient_norms(problem, leaf).sum(), leaf)
        size = ascent.norm(dim=1, keepdim=True)
        moved = torch.where(size > 0, theta + lengths.unsqueeze(1) * ascent / size.clamp(min=1e-300), theta)
        with torch.no_grad():
            moved_norms = _gradient_norms(problem, moved)
        better = moved_norms > norms
        theta = torch.where(better.unsqueeze(1), moved, theta)
        norms = torch.where(better, moved_norms, norms)
        lengths = torch.where(better, lengths, 0.5 * lengths)
    return theta.detach(), norms.detach()


def _gradient_norms(problem: GrowableProblem, parameters: Tensor) -> Tensor:
    gradients = problem.new_neuron_gradients(parameters)
    return gradients.reshape(gradients.shape[0], -1).norm(dim=1)


class FireflyGrowth(GrowthMethod):
    """Add the best ``count`` of the plain splits and of ``candidates`` tuned new neurons, ranked by their predicted
    loss change (see the module docstring).

    Args:
        epsilon: the split step size (offspring at theta +/- epsilon v_min), >= 0.
        candidates: new neurons drawn per step, >= 1.
        steps: gradient-ascent steps on each candidate's ||g_j||, >= 0.
        step_size: the first step's length, as a fraction of the root-mean-square norm of the drawn candidates
            (the scale of the problem's initialisation), > 0.
        new_step: t, the output weight step of a new neuron; None: epsilon^2 / 2.

    A step's event records the chosen splits' lambda_min as ``indexes`` and the sum of the chosen scores as
    ``predicted_change`` (second order for the splits, first order for the new neurons).
    """

    name = "firefly"

    def __init__(
        self,
        epsilon: float,
        *,
        candidates: int = 32,
        steps: int = 8,
        step_size: float = 0.3,
        new_step: float | None = None,
    ) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        if candidates < 1 or steps < 0 or not step_size > 0:
            raise ValueError("candidates must be >= 1, steps >= 0 and step_size > 0")
        if new_step is not None and not (math.isfinite(new_step) and new_step >= 0):
            raise ValueError(f"new_step must be a finite number >= 0, got {new_step!r}")
        self.epsilon = epsilon
        self.candidates = candidates
        self.steps = steps
        self.step_size = step_size
        self.new_step = 0.5 * epsilon**2 if new_step is None else new_step

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        eigenpairs = dense_eigenpairs(problem.splitting_matrices())
        drawn = problem.random_parameters(self.candidates, generator)
        scale = float(drawn.norm(dim=1).pow(2).mean().sqrt()) or 1.0
        tuned, gradient_norms = ascend_new_neurons(problem, drawn, self.steps, self.step_size * scale)
        # (predicted change, kind, position): splits along v_min, new neurons at output step t
        ranked = [(0.5 * self.epsilon**2 * float(v), "split", j) for j, v in enumerate(eigenpairs.indexes) if v < 0]
        ranked += [(-self.new_step * float(n), "new", k) for k, n in enumerate(gradient_norms) if n > 0]
        ranked = sorted(ranked)[:count]
        ranked = [entry for entry in ranked if entry[0] < 0]
        if not ranked:
            return None
        size_before, loss_before = problem.size, problem.loss()
        splits = torch.tensor([j for _, kind, j in ranked if kind == "split"], dtype=torch.long)
        news = torch.tensor([k for _, kind, k in ranked if kind == "new"], dtype=torch.long)
        added: list[int] = []
        if splits.numel():
            added += problem.split(splits, eigenpairs.directions[splits], self.epsilon).tolist()
        if news.numel():
            gradients = problem.new_neuron_gradients(tuned[news]).detach()
            flat = gradients.reshape(gradients.shape[0], -1)
            directions = -(flat / flat.norm(dim=1, keepdim=True)).reshape(gradients.shape)
            added += problem.add(tuned[news], self.new_step * directions).tolist()
        return GrowthEvent(
            step=-1,
            method=self.name,
            size_before=size_before,
            size_after=problem.size,
            parents=splits.tolist(),
            added=added,
            indexes=[float(eigenpairs.indexes[j]) for j in splits],
            predicted_change=sum(score for score, _, _ in ranked),
            loss_before=loss_before,
            loss_after=problem.loss(),
        )
