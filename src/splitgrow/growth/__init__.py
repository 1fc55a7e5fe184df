"""Growth: the public growth loop for any model (:class:`Grower`, on a :class:`GrowthPolicy`), and Algorithm 1 with
the paper's baselines on one-layer problems (:mod:`.algorithm`), with signed splitting (:mod:`.signed_splitting`)
and Firefly growth (:mod:`.firefly_growth`) beside them."""

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
from .firefly_growth import FireflyGrowth
from .grower import Grower, GrowthStage
from .policy import GrowthPolicy, GrowthState
from .signed_splitting import SignedSplitting

__all__ = [
    "Grower",
    "GrowthPolicy",
    "GrowthStage",
    "GrowthState",
    "FireflyGrowth",
    "GradientBoosting",
    "GrowableProblem",
    "GrowthEvent",
    "GrowthMethod",
    "GrowthRun",
    "Net2Net",
    "NewInitialization",
    "RandomSplit",
    "SignedSplitting",
    "SplittingSteepestDescent",
    "run_growth",
    "train_from_scratch",
]
