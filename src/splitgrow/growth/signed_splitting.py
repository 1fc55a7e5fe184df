"""Signed splitting (Wu, Ye, Lei, Lee & Liu 2020) for one-layer problems: offspring output weights of either sign.

The optimal split and its index Q(c) come from :mod:`splitgrow.signed` (derivation in docs/design.md, section 6):
with the weight bound c it makes two to four offspring, i.e. adds one to three neurons. A growth step of a
one-layer problem adds at most ``count`` neurons, so a neuron whose optimal split does not fit in what is left of
``count`` is split by the best split that does:

* one neuron left (two offspring): sum w_i = 1 and w_1 delta_1 + w_2 delta_2 = 0 fix delta_2 = -(w_1 / w_2) delta_1,
  so the split changes the loss by eps^2/2 (w_1 / w_2) delta_1^T S delta_1. With w_1, w_2 > 0 the best is the plain
  split (lambda_min); with w_2 < 0 and sum |w_i| <= c the best is w = ((c + 1)/2, -(c - 1)/2),
  delta = ((c - 1)/(c + 1) v_max, v_max), which gives -(c - 1)/(c + 1) lambda_max. The two-offspring index is
  min(lambda_min, -(c - 1)/(c + 1) lambda_max, 0), exactly.
* two neurons left (three offspring), when the optimal split needs three: the best of the two-offspring split and
  the optimal split restricted to one end of the spectrum ((c + 1)/2 lambda_min or -(c - 1)/2 lambda_max). Three
  offspring that mix both ends can do better; that optimum is not derived here, so such a step is not optimal.

Within a step, neurons are taken greedily: the most negative index among the splits that fit, until ``count``
neurons are added or no index is negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..signed import _check_bound, signed_indexes, signed_offspring
from ..solvers import dense_eigenpairs
from ..surgery import Offspring
from .algorithm import GrowableProblem, GrowthEvent, GrowthMethod


@dataclass(frozen=True)
class SignedSplit:
    """One neuron's split: its ``index`` (sum of w_i delta_i^T S delta_i, the loss change over eps^2/2 to second
    order) and its ``offspring``."""

    index: float
    offspring: tuple[Offspring, ...]

    @property
    def added(self) -> int:
        """Neurons the split adds."""
        return len(self.offspring) - 1


def _signed_index(smallest: float, largest: float, bound: float) -> float:
    """Q(c) of one neuron, in float64."""
    values = torch.tensor([smallest, largest], dtype=torch.float64)
    return float(signed_indexes(values[0], values[1], bound))


def two_offspring_split(
    smallest: float, smallest_direction: Tensor, largest: float, largest_direction: Tensor, bound: float
) -> SignedSplit:
    """The optimal split into two offspring under the weight bound c (see the module docstring)."""
    ratio = (bound - 1) / (bound + 1)
    signed = -ratio * max(largest, 0.0)
    if min(smallest, 0.0) <= signed:
        # the plain split (c = 1 in signed_offspring); an exact duplicate where lambda_min >= 0
        plain = signed_offspring(smallest, smallest_direction, largest, largest_direction, 1.0)
        return SignedSplit(min(smallest, 0.0), plain)
    v_max = largest_direction.reshape(-1).to(torch.float64)
    v_max = v_max / v_max.norm()
    return SignedSplit(signed, (Offspring(0.5 * (bound + 1), ratio * v_max), Offspring(-0.5 * (bound - 1), v_max)))


def fitting_split(
    smallest: float,
    smallest_direction: Tensor,
    largest: float,
    largest_direction: Tensor,
    bound: float,
    allowance: int,
) -> SignedSplit | None:
    """The best split of a neuron with extreme eigenpairs (lambda_min, v_min), (lambda_max, v_max) that adds at most
    ``allowance`` neurons (None when ``allowance`` < 1); see the module docstring."""
    if allowance < 1:
        return None
    optimal = SignedSplit(
        _signed_index(smallest, largest, bound),
        signed_offspring(smallest, smallest_direction, largest, largest_direction, bound),
    )
    if optimal.added <= allowance:
        return optimal
    options = [two_offspring_split(smallest, smallest_direction, largest, largest_direction, bound)]
    if allowance >= 2:
        for low, high in ((smallest, 0.0), (0.0, largest)):  # one end of the spectrum only
            options.append(
                SignedSplit(
                    _signed_index(low, high, bound),
                    signed_offspring(low, smallest_direction, high, largest_direction, bound),
                )
            )
    return min((option for option in options if option.added <= allowance), key=lambda option: option.index)


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
