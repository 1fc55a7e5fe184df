"""Signed splitting (Wu, Ye, Lei, Lee & Liu 2020): offspring whose output weights may be negative.

A split of a neuron theta into offspring theta + eps delta_i with output weight shares w_i (sum w_i = 1, so the
function is unchanged at eps = 0, and sum w_i delta_i = 0, so the first-order change vanishes) changes the loss by

    eps^2 / 2 * sum_i w_i delta_i^T S delta_i + O(eps^3).

The paper's splits keep w_i >= 0; signed splitting allows either sign under a bound sum |w_i| <= c (c >= 1; c = 1
is the plain split) with each offspring moving at most eps (||delta_i|| <= 1). Write P and N for the total positive
and negative weight: P - N = 1 and P + N <= c, so P <= (c + 1) / 2 and N <= (c - 1) / 2. Each term is bounded,
w_i delta_i^T S delta_i >= w_i min(lambda_min, 0) for w_i > 0 and >= w_i max(lambda_max, 0) for w_i < 0, hence
every admissible split has

    sum_i w_i delta_i^T S delta_i >= (c + 1) / 2 * min(lambda_min, 0) - (c - 1) / 2 * max(lambda_max, 0),

the *signed splitting index*. It is attained: a positive pair +/- v_min with weights (c + 1) / 4 each and a
negative pair +/- v_max with weights -(c - 1) / 4 each (pairs keep sum w_i delta_i = 0); where one end of the
spectrum brings nothing, that pair is replaced by a copy of the parent (delta = 0) carrying its weight, so a split
makes three or four offspring. The signed index is negative whenever S is not zero: no neuron is splitting-stable,
which is what lets signed splitting leave the local optima of the plain one (where every lambda_min >= 0).
The full derivation is in docs/design.md.

A split that must add fewer neurons than the optimal one (a growth step with one or two neurons left to add) is the
best that fits (:func:`fitting_split`):

* one neuron left (two offspring): sum w_i = 1 and w_1 delta_1 + w_2 delta_2 = 0 fix delta_2 = -(w_1 / w_2) delta_1,
  so the split changes the loss by eps^2/2 (w_1 / w_2) delta_1^T S delta_1. With w_1, w_2 > 0 the best is the plain
  split (lambda_min); with w_2 < 0 and sum |w_i| <= c the best is w = ((c + 1)/2, -(c - 1)/2),
  delta = ((c - 1)/(c + 1) v_max, v_max), which gives -(c - 1)/(c + 1) lambda_max. The two-offspring index is
  min(lambda_min, -(c - 1)/(c + 1) lambda_max, 0), exactly.
* two neurons left (three offspring), when the optimal split needs three: the best of the two-offspring split and
  the optimal split restricted to one end of the spectrum ((c + 1)/2 lambda_min or -(c - 1)/2 lambda_max). Three
  offspring that mix both ends can do better; that optimum is not derived here, so such a split is not optimal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .statistics.splitting import SiteSplitting, SplittingResults
from .surgery import Offspring


def _check_bound(bound: float) -> float:
    bound = float(bound)
    if not bound >= 1.0 or bound == float("inf"):
        raise ValueError(f"the weight bound c must be a finite number >= 1 (1: the plain split), got {bound}")
    return bound


def signed_indexes(smallest: Tensor, largest: Tensor, bound: float) -> Tensor:
    """The signed splitting index (c + 1)/2 min(lambda_min, 0) - (c - 1)/2 max(lambda_max, 0) of each neuron."""
    bound = _check_bound(bound)
    return 0.5 * (bound + 1) * smallest.clamp(max=0) - 0.5 * (bound - 1) * largest.clamp(min=0)


def signed_offspring(
    smallest: float, smallest_direction: Tensor, largest: float, largest_direction: Tensor, bound: float
) -> tuple[Offspring, ...]:
    """The offspring of the optimal signed split of a neuron with extreme eigenpairs (lambda_min, v_min) and
    (lambda_max, v_max) under the weight bound c (see the module docstring)."""
    bound = _check_bound(bound)
    positive, negative = 0.5 * (bound + 1), 0.5 * (bound - 1)  # total weights P and N
    use_min = smallest < 0
    use_max = largest > 0 and negative > 0
    v_min = torch.as_tensor(smallest_direction).reshape(-1).to(torch.float64)
    v_max = torch.as_tensor(largest_direction).reshape(-1).to(torch.float64)
    v_min, v_max = v_min / v_min.norm(), v_max / v_max.norm()
    if not use_max:
        if not use_min:  # S brings nothing at this bound (index 0): an exact duplicate
            return (Offspring(0.5), Offspring(0.5))
        if negative == 0:
            return (Offspring(0.5, v_min), Offspring(0.5, -v_min))
        return (Offspring(0.5 * positive, v_min), Offspring(0.5 * positive, -v_min), Offspring(-negative))
    if not use_min:
        return (Offspring(positive), Offspring(-0.5 * negative, v_max), Offspring(-0.5 * negative, -v_max))
    return (
        Offspring(0.5 * positive, v_min),
        Offspring(0.5 * positive, -v_min),
        Offspring(-0.5 * negative, v_max),
        Offspring(-0.5 * negative, -v_max),
    )


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


@dataclass(frozen=True)
class SignedScheme:
    """How a neuron selected by its signed index splits: the optimal signed split under the bound ``bound``."""

    bound: float

    @staticmethod
    def _extremes(result: SiteSplitting, channel: int) -> tuple[float, Tensor, float, Tensor]:
        """(lambda_min, v_min, lambda_max, v_max) of one neuron."""
        return (
            float(result.smallest_indexes[channel]),
            result.smallest_directions[channel],
            float(result.largest_indexes[channel]),
            result.largest_directions[channel],
        )

    def offspring(self, result: SiteSplitting, channel: int) -> tuple[Offspring, ...]:
        return signed_offspring(*self._extremes(result, channel), self.bound)

    def copies(self, result: SiteSplitting, channel: int) -> int:
        """How many neurons the split adds."""
        return len(self.offspring(result, channel)) - 1

    def fitting(self, result: SiteSplitting, channel: int, allowance: int) -> SignedSplit | None:
        """The best split that adds at most ``allowance`` neurons (:func:`fitting_split`)."""
        return fitting_split(*self._extremes(result, channel), self.bound, allowance)


@dataclass
class SignedSiteSplitting(SiteSplitting):
    """A site's results ranked by signed index: ``indexes`` are the signed indexes; the plain lambda_min and
    v_min are kept as ``smallest_indexes`` and ``smallest_directions``."""

    smallest_indexes: Tensor | None = None
    smallest_directions: Tensor | None = None


def signed_splitting(results: Mapping[str, SiteSplitting], bound: float) -> SplittingResults:
    """The same results ranked for signed splitting: each site's ``indexes`` become the signed indexes and its
    ``scheme`` the optimal signed split, so that :func:`splitgrow.selection.select_splits` (or the grower) picks
    and makes signed splits. The results must carry the largest eigenpairs (``largest=True``).

    Raises:
        ValueError: results without the largest eigenpairs, or a bound below 1.
    """
    _check_bound(bound)
    signed = SplittingResults(
        skipped=getattr(results, "skipped", {}),
        weight=getattr(results, "weight", 0.0),
        batches=getattr(results, "batches", 0),
    )
    signed.adaptive, signed.loss = getattr(results, "adaptive", None), getattr(results, "loss", float("nan"))
    for name, result in results.items():
        if result.largest_indexes is None or result.largest_directions is None:
            raise ValueError(
                f"site '{name}' has no largest eigenpairs; compute the statistics with largest=True for signed "
                "splitting"
            )
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(SiteSplitting)}
        fields.update(
            indexes=signed_indexes(result.indexes, result.largest_indexes, bound),
            scheme=SignedScheme(bound),
        )
        signed[name] = SignedSiteSplitting(
            **fields, smallest_indexes=result.indexes, smallest_directions=result.directions
        )
    return signed
