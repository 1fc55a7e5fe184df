"""The paper's experiments, each runnable with ``splitgrow run NAME``."""

from __future__ import annotations

from .common import Experiment, Reporter, run_experiment


def experiments() -> dict[str, Experiment]:
    """All experiments by name (imported lazily: each pulls in its own dependencies)."""
    from . import mmd, rbf

    return {experiment.name: experiment for experiment in (rbf.EXPERIMENT, mmd.EXPERIMENT)}


__all__ = ["Experiment", "Reporter", "experiments", "run_experiment"]
