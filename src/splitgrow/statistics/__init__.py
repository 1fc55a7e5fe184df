"""Splitting statistics: one pass over the data (:mod:`.recording`), the closed form of ridge sites
(:mod:`.ridge`), automatic differentiation of segment sites (:mod:`.segment`), and indexes and directions for
every site (:mod:`.splitting`). :mod:`.closed_form` holds the two reference forms of S for one-layer networks."""

from .closed_form import DEFAULT_MAX_TEMPORARY_ELEMENTS, hessian_splitting_matrices, ridge_splitting_matrices
from .recording import REDUCTIONS, BatchRecord, LossClosure, LossFunction, StatisticsError, record_batches
from .ridge import RidgeOperator, grouped_ridge_matrices
from .segment import SegmentOperator, SegmentProgram
from .splitting import (
    DEFAULT_DENSE_BYTES,
    SOLVERS,
    STARTS,
    SiteSplitting,
    SplittingResults,
    memory_estimate,
    one_pass,
    splitting_eigenpairs,
    splitting_matrices,
    splitting_operators,
)

__all__ = [
    "DEFAULT_DENSE_BYTES",
    "DEFAULT_MAX_TEMPORARY_ELEMENTS",
    "REDUCTIONS",
    "SOLVERS",
    "STARTS",
    "BatchRecord",
    "LossClosure",
    "LossFunction",
    "RidgeOperator",
    "SegmentOperator",
    "SegmentProgram",
    "SiteSplitting",
    "SplittingResults",
    "StatisticsError",
    "grouped_ridge_matrices",
    "hessian_splitting_matrices",
    "memory_estimate",
    "one_pass",
    "record_batches",
    "ridge_splitting_matrices",
    "splitting_eigenpairs",
    "splitting_matrices",
    "splitting_operators",
]
