"""Signed splitting (Wu, Ye, Lei, Lee & Liu 2020) for one-layer problems: offspring output weights of either sign.

The optimal split and its index Q(c) come from :mod:`splitgrow.signed` (derivation in docs/design.md, section 6):
with the weight bound c it makes two to four offspring, i.e. adds one to three neurons. A growth step of a
one-layer problem adds at most ``count`` neurons, so a neuron whose optimal split does not fit in what is left of
``count`` is split by the best split that does (:func:`splitgrow.signed.fitting_split`).

Within a step, neurons are taken greedily: the most negative index among the splits that fit, until ``count``
neurons are added or no index is negative.
"""

from __future__ import annotations

import torch

from ..signed import SignedSplit, _check_bound, fitting_split
from ..solvers import dense_eigenpairs
from .algorithm import GrowableProblem, GrowthEvent, GrowthMethod


class SignedSplitting(GrowthMethod):
    """Split the neurons with the most negative signed splitting index into the offspring of the optimal signed split
    (two to four offspring, output-weight shares of either sign, sum of their magnitudes at most ``bound``), adding at
    most ``count`` neurons per step (see the module docstring).

    Args:
        epsilon: the split step size, >= 0 (offspring at theta + epsilon delta_i, ||delta_i|| <= 1).
        bound: c >= 1, the bound on sum |w_i| (1: the plain split); 3 as ``GrowthPolicy.weight_bound``.
    """

    name = "signed"

    def __init__(self, epsilon: float, bound: float = 3.0) -> None:
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = epsilon
        self.bound = _check_bound(bound)

    def plan(self, problem: GrowableProblem, count: int) -> list[tuple[int, SignedSplit]]:
        """The splits a step of at most ``count`` added neurons makes: (position, split), greedily by index."""
        matrices = problem.splitting_matrices()
        bottom = dense_eigenpairs(matrices)
        top = dense_eigenpairs(-matrices)  # lambda_max = -lambda_min(-S), from the same matrices
        smallest, largest = bottom.indexes.tolist(), (-top.indexes).tolist()
        remaining, available, chosen = count, set(range(problem.size)), []
        while remaining > 0 and available:
            splits = {
                j: fitting_split(
                    smallest[j], bottom.directions[j], largest[j], top.directions[j], self.bound, remaining
                )
                for j in sorted(available)
            }
            position = min(splits, key=lambda j: splits[j].index)
            if not splits[position].index < 0:
                break
            chosen.append((position, splits[position]))
            remaining -= splits[position].added
            available.remove(position)
        return chosen

    def grow(self, problem: GrowableProblem, count: int, generator: torch.Generator) -> GrowthEvent | None:
        chosen = self.plan(problem, count)
        if not chosen:
            return None
        size_before, loss_before = problem.size, problem.loss()
        positions = torch.tensor([position for position, _ in chosen], dtype=torch.long)
        added = problem.split_offspring(positions, [split.offspring for _, split in chosen], self.epsilon)
        indexes = [split.index for _, split in chosen]
        return GrowthEvent(
            step=-1,
            method=self.name,
            size_before=size_before,
            size_after=problem.size,
            parents=positions.tolist(),
            added=[int(a) for a in added],
            indexes=indexes,
            predicted_change=0.5 * self.epsilon**2 * sum(indexes),
            loss_before=loss_before,
            loss_after=problem.loss(),
        )
