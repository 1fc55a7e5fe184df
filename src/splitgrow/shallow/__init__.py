"""One-hidden-layer models f(x) = sum_k w_k sigma(theta_k, x): neuron families, the regression problem, the MMD
particle problem, and the full-batch training loop they share."""

from .network import ShallowNetwork, ShallowRegression, mean_squared_error
from .neurons import FunctionalNeuron, Neuron, RidgeNeuron
from .particles import ParticleApproximation
from .training import TrainingTrace, train_rows

__all__ = [
    "FunctionalNeuron",
    "Neuron",
    "ParticleApproximation",
    "RidgeNeuron",
    "ShallowNetwork",
    "ShallowRegression",
    "TrainingTrace",
    "mean_squared_error",
    "train_rows",
]
