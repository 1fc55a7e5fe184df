"""splitgrow: grow neural networks by splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019).

The main entry points, importable from the package itself:

* neurons and their splitting matrices: :class:`RidgeNeuron`, :class:`FunctionalNeuron`;
* indexes and directions: :func:`dense_eigenpairs`; selection: :func:`select_neurons`;
* one-hidden-layer models: :class:`ShallowNetwork`, :class:`ShallowRegression`;
* growth: :func:`run_growth` with :class:`SplittingSteepestDescent` or a baseline
  (:class:`RandomSplit`, :class:`Net2Net`, :class:`NewInitialization`, :class:`GradientBoosting`),
  and :func:`train_from_scratch`;
* any PyTorch model: :class:`SplittableNetwork` (statistics, selection and surgery in three calls), built on
  :class:`ChannelGraph`, :func:`splitting_eigenpairs`, :func:`select_splits` and :func:`split_network`;
  your own layers and activations: :func:`register_layer` (a :class:`LayerHandler`), :func:`register_activation`;
* beyond the paper: signed splitting (:func:`signed_splitting`, offspring with negative weights; one-layer
  :class:`SignedSplitting`) and Firefly growth (new neurons ranked with splits: ``GrowthPolicy(method="firefly")``,
  one-layer :class:`FireflyGrowth`).
"""

from .activations import Activation, get_activation, relu_with_softplus_surrogate, with_kink_surrogate
from .errors import ConfigError, DivergenceError, SplitgrowError, SplitgrowWarning
from .graph import ChannelGraph, GraphError, Site
from .growth import (
    FireflyGrowth,
    GradientBoosting,
    GrowableProblem,
    Grower,
    GrowthEvent,
    GrowthMethod,
    GrowthPolicy,
    GrowthRun,
    GrowthStage,
    Net2Net,
    NewInitialization,
    RandomSplit,
    SignedSplitting,
    SplittingSteepestDescent,
    run_growth,
    train_from_scratch,
)
from .layers import LayerHandler, NeuronHandler, register_activation, register_layer
from .network import SplittableNetwork
from .selection import Selection, select_neurons, select_splits, select_within_budget
from .shallow.network import ShallowNetwork, ShallowRegression
from .shallow.neurons import FunctionalNeuron, Neuron, RidgeNeuron
from .shallow.particles import ParticleApproximation
from .signed import signed_splitting
from .solvers import SplittingEigenpairs, dense_eigenpairs
from .statistics import SiteSplitting, SplittingResults, splitting_eigenpairs, splitting_matrices
from .surgery import NewNeuron, Offspring, SplitReport, SplitRequest, resize_like, split_network

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ChannelGraph",
    "ConfigError",
    "DivergenceError",
    "FunctionalNeuron",
    "FireflyGrowth",
    "GradientBoosting",
    "GraphError",
    "GrowableProblem",
    "Grower",
    "GrowthPolicy",
    "GrowthStage",
    "GrowthEvent",
    "GrowthMethod",
    "GrowthRun",
    "LayerHandler",
    "Net2Net",
    "NewNeuron",
    "Neuron",
    "Offspring",
    "NeuronHandler",
    "NewInitialization",
    "ParticleApproximation",
    "RandomSplit",
    "RidgeNeuron",
    "Selection",
    "ShallowNetwork",
    "ShallowRegression",
    "Site",
    "SiteSplitting",
    "SplitReport",
    "SplitRequest",
    "SplitgrowError",
    "SplitgrowWarning",
    "SplittableNetwork",
    "signed_splitting",
    "SplittingEigenpairs",
    "SplittingResults",
    "SignedSplitting",
    "SplittingSteepestDescent",
    "dense_eigenpairs",
    "get_activation",
    "register_activation",
    "register_layer",
    "relu_with_softplus_surrogate",
    "resize_like",
    "run_growth",
    "select_neurons",
    "select_splits",
    "select_within_budget",
    "split_network",
    "splitting_eigenpairs",
    "splitting_matrices",
    "train_from_scratch",
    "with_kink_surrogate",
]
