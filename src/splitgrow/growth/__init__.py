"""Growth: the public growth loop for any model (:class:`Grower`, on a :class:`GrowthPolicy`), and Algorithm 1 with
the paper's baselines on one-layer problems (:mod:`.algorithm`)."""

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
from .grower import Grower, GrowthStage
from .policy import GrowthPolicy, GrowthState

__all__ = [
    "Grower",
    "GrowthPolicy",
    "GrowthStage",
    "GrowthState",
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
