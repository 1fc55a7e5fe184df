"""Growth policies: Algorithm 1 and the paper's baselines on growable problems."""

from .algorithm import (
    GradientBoosting,
    GrowableProblem,
    GrowthEvent,
    GrowthMethod,
    GrowthRun,
    Net2Net,
    NewInitialization,
    RandomSplit,
    SplittingSteepestDescent,
    run_growth,
    train_from_scratch,
)

__all__ = [
    "GradientBoosting",
    "GrowableProblem",
    "GrowthEvent",
    "GrowthMethod",
    "GrowthRun",
    "Net2Net",
    "NewInitialization",
    "RandomSplit",
    "SplittingSteepestDescent",
    "run_growth",
    "train_from_scratch",
]
