"""The paper's experiments, each runnable with ``splitgrow run NAME``."""

from __future__ import annotations

from .common import Experiment, Reporter, report_experiment, run_experiment


def experiments() -> dict[str, Experiment]:
    """All experiments by name (imported lazily: each pulls in its own dependencies)."""
    from . import images, kws, mmd, prototypes, rbf, transfer

    return {
        experiment.name: experiment
        for experiment in (
            rbf.EXPERIMENT,
            mmd.EXPERIMENT,
            images.EXPERIMENT,
            transfer.EXPERIMENT,
            kws.EXPERIMENT,
            prototypes.EXPERIMENT,
        )
    }


__all__ = ["Experiment", "Reporter", "experiments", "report_experiment", "run_experiment"]
