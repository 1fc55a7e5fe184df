"""splitgrow: grow neural networks by splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019).

The main entry points, importable from the package itself:

* neurons and their splitting matrices: :class:`RidgeNeuron`, :class:`FunctionalNeuron`;
* indexes and directions: :func:`dense_eigenpairs`; selection: :func:`select_neurons`;
* one-hidden-layer models: :class:`ShallowNetwork`, :class:`ShallowRegression`;
* growth: :func:`run_growth` with :class:`SplittingSteepestDescent` or a baseline
  (:class:`RandomSplit`, :class:`Net2Net`, :class:`NewInitialization`, :class:`GradientBoosting`),
  and :func:`train_from_scratch`;
* any PyTorch model: :class:`SplittableNetwork` (statistics, selection and surgery in three calls), built on
  :class:`ChannelGraph`, :func:`splitting_eigenpairs`, :func:`select_splits` and :func:`split_network`.
"""

from .activations import Activation, get_activation, relu_with_softplus_surrogate
from .errors import ConfigError, DivergenceError, SplitgrowError
from .graph import ChannelGraph, GraphError, Site
from .growth import (
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
from .network import SplittableNetwork
from .network_statistics import SiteSplitting, splitting_eigenpairs, splitting_matrices
from .selection import select_neurons
from .shallow.network import ShallowNetwork, ShallowRegression
from .shallow.neurons import FunctionalNeuron, Neuron, RidgeNeuron
from .shallow.particles import ParticleApproximation
from .solvers import SplittingEigenpairs, dense_eigenpairs
from .surgery import SplitReport, SplitRequest, select_splits, split_network

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "ChannelGraph",
    "ConfigError",
    "DivergenceError",
    "FunctionalNeuron",
    "GradientBoosting",
    "GraphError",
    "GrowableProblem",
    "GrowthEvent",
    "GrowthMethod",
    "GrowthRun",
    "Net2Net",
    "Neuron",
    "NewInitialization",
    "ParticleApproximation",
    "RandomSplit",
    "RidgeNeuron",
    "ShallowNetwork",
    "ShallowRegression",
    "Site",
    "SiteSplitting",
    "SplitReport",
    "SplitRequest",
    "SplitgrowError",
    "SplittableNetwork",
    "SplittingEigenpairs",
    "SplittingSteepestDescent",
    "dense_eigenpairs",
    "get_activation",
    "relu_with_softplus_surrogate",
    "run_growth",
    "select_neurons",
    "select_splits",
    "split_network",
    "splitting_eigenpairs",
    "splitting_matrices",
    "train_from_scratch",
]
