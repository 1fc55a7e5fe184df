"""The growth schedule of the public Grower, rule by rule: when a stage is due (plateaus, triggers, phases), how much
it adds, when growth stops, what a stage records, and adaptive statistics inside a policy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from splitgrow.errors import ConfigError
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.inspection import model_flops
from splitgrow.statistics.adaptive import AdaptiveStatistics

DTYPE = torch.float64


def _mlp(seed: int = 0, rows: int = 64, batch: int = 8):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Softplus(), nn.Linear(6, 3)).to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, generator=generator, dtype=DTYPE)
    y = torch.randint(0, 3, (rows,), generator=generator)
    return model, [(x[i : i + batch], y[i : i + batch]) for i in range(0, rows, batch)]


def _cnn(seed: int = 0):
    """Three coupled convolutions with BatchNorm: a split of one layer widens the next one's input."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.Conv2d(4, 4, 1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 2, 5, 5, generator=generator, dtype=DTYPE)
    y = torch.randint(0, 3, (32,), generator=generator)
    with torch.no_grad():
        model(x)  # BatchNorm running statistics that are not the initial ones
    return model, [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]


def _grower(policy: GrowthPolicy, make=_mlp, **options) -> Grower:
    model, batches = make()
    return Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, **options)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _grown_at(grower: Grower, values, monitor: str = "loss") -> list[int]:
    return [epoch for epoch, value in enumerate(values, 1) if grower.epoch_end({monitor: value}) is not None]


# ------------------------------------------------------------------------------------------------ when to grow


def test_a_plateau_policy_grows_on_plateaus_only_by_the_margin_it_is_given():
    policy = GrowthPolicy(plateau_patience=2, plateau_delta=0.05, count=1, measure=False)
    assert policy.every is None and GrowthPolicy(count=1).every == 1  # "auto": every epoch only without a rule
    grower = _grower(policy)
    # 0.96 and 0.89 are within the margin of the best (1.0, then 0.9), NaN never improves; a stage resets the best
    values = [1.0, 0.96, 0.9, math.nan, 0.89, 0.95, 0.95, 0.95, 0.7]
    assert _grown_at(grower, values) == [5, 8]
    assert [stage.metrics["loss"] for stage in grower.history] == [0.89, 0.95]


def test_a_nan_never_becomes_the_best_and_a_maximised_metric_plateaus_when_it_stops_rising():
    improving = _grower(GrowthPolicy(plateau_patience=2, count=1, measure=False))
    assert _grown_at(improving, [math.nan, 1.0, 0.9, 0.8, 0.7]) == []
    accuracy = _grower(GrowthPolicy(plateau_patience=2, monitor="accuracy", mode="max", count=1, measure=False))
    assert _grown_at(accuracy, [0.5, 0.6, 0.7, 0.65, 0.7, 0.8], monitor="accuracy") == [5]


def test_a_plateau_rule_without_its_metric_is_a_config_error_naming_it():
    grower = _grower(GrowthPolicy(plateau_patience=2, monitor="val_loss", count=1))
    with pytest.raises(ConfigError, match="monitors 'val_loss'.*they have: accuracy"):
        grower.epoch_end({"accuracy": 0.5})
    with pytest.raises(ConfigError, match="monitors 'val_loss'.*they have: none"):
        grower.epoch_end()
    with pytest.raises(ConfigError, match="mode"):
        GrowthPolicy(plateau_patience=2, mode="maximum", count=1)
    with pytest.raises(ConfigError, match="plateau_delta"):
        GrowthPolicy(plateau_patience=2, plateau_delta=-0.1, count=1)


def test_fit_consults_a_trigger_once_an_epoch_with_the_models_parameters():
    seen = []

    def trigger(state):
        seen.append((state.epoch, state.parameters))
        return state.epoch in (2, 3)

    grower = _grower(GrowthPolicy(first=2, every=None, trigger=trigger, count=1, measure=False))
    start = _parameters(grower.model)
    ended = []
    history = grower.fit(lambda epoch: None, 5, on_phase_end=lambda phase: ended.append(phase) or {"phase": phase})
    assert [stage.epoch for stage in history] == [2, 3]
    # not before first, once an epoch, never on the last one (no training would follow a stage)
    assert seen == [(2, start), (3, history[0].parameters_after), (4, history[1].parameters_after)]
    assert ended == [0, 1, 2] and grower.phase_metrics == [{"phase": 0}, {"phase": 1}, {"phase": 2}]


def test_a_plateau_schedule_gives_its_first_phase_every_epoch_left():
    lengths = []

    def factory(optimizer, epochs):
        lengths.append(epochs)
        return lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs)  # refuses a step beyond its length

    model, batches = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = GrowthPolicy(first=2, plateau_patience=1, count=1, max_stages=1, measure=False)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    losses = [1.0, 0.9, 0.8, 0.8, 0.7, 0.6]  # the plateau comes at epoch 4, after first = 2
    grower.fit(
        lambda epoch: optimizer.step(), 6, evaluate=lambda: {"loss": losses[grower.epoch]}, scheduler_factory=factory
    )
    assert [stage.epoch for stage in grower.history] == [4] and lengths == [6, 2]


# ------------------------------------------------------------------------------------------------ how much


@pytest.mark.parametrize("amount", ["parameter_ratio", "flops_ratio"])
def test_a_budgeted_stage_of_coupled_convolutions_stays_within_its_ratio(amount):
    for ratio in (0.2, 0.6):
        grower = _grower(GrowthPolicy(**{amount: ratio}, epsilon=1e-3, solver="dense"), make=_cnn)
        model, example = grower.model, grower.net.graph.example_inputs
        parameters, flops = _parameters(model), model_flops(model, example)
        stage = grower.grow()
        assert stage is not None and len(stage.splits) >= 1
        assert stage.parameters_before == parameters and stage.parameters_after == _parameters(model)
        assert stage.flops_after == model_flops(model, example)
        used = (stage.parameters_after - parameters) / parameters if amount == "parameter_ratio" else None
        used = (stage.flops_after - flops) / flops if used is None else used
        assert 0 < used <= ratio


def test_a_budget_no_split_fits_stops_the_grower_saying_so_not_splitting_stable():
    grower = _grower(GrowthPolicy(parameter_ratio=0.01, stop_when_stable=False, measure=False))
    assert grower.epoch_end() is None and grower.stopped
    assert "no split fits a stage's budget" in grower.stop_reason and "raise parameter_ratio" in grower.stop_reason


def test_a_stage_with_fewer_eligible_neurons_than_asked_records_its_shortfall_and_its_numbers():
    epsilon = 1e-3
    grower = _grower(GrowthPolicy(count=5, epsilon=epsilon, solver="dense", statistics_batches=3))
    indexes = sorted(float(i) for result in grower.statistics().values() for i in result.indexes)
    threshold = (indexes[2] + indexes[3]) / 2  # exactly three neurons below it
    assert indexes[2] < threshold < 0
    grower.policy.threshold = threshold
    before = grower.net.widths()
    stage = grower.grow()
    chosen = sorted(split["index"] for split in stage.splits)
    assert chosen == pytest.approx(indexes[:3], rel=1e-9)
    assert stage.shortfall.startswith("added 3 of the 5 neurons asked for: 3 neurons")
    assert stage.widths_before == before and sum(stage.widths_after.values()) == sum(before.values()) + 3
    assert stage.predicted_change == pytest.approx(epsilon**2 / 2 * sum(chosen), rel=1e-12)
    assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.01)
    assert stage.batches == 3 and stage.samples == 24
    assert stage.parameters_after == _parameters(grower.model)
    assert stage.flops_after == model_flops(grower.model, grower.net.graph.example_inputs)
    assert _grower(GrowthPolicy(count=2, measure=False)).grow().shortfall == ""


# ------------------------------------------------------------------------------------------------ when to stop


def test_growth_stops_after_the_first_stage_at_or_above_max_flops_and_later_epochs_only_record():
    grower = _grower(GrowthPolicy(count=2, max_flops=1, measure=False))
    assert grower.epoch_end() is None and grower.stopped and grower.stop_reason == "reached max_flops = 1"

    probe = _grower(GrowthPolicy(count=2, measure=False))
    flops = model_flops(probe.model, probe.net.graph.example_inputs)
    grower = _grower(GrowthPolicy(count=2, max_flops=flops + 1, plateau_patience=5, every=1, measure=False))
    stage = grower.epoch_end({"loss": 1.0})
    assert stage is not None and stage.flops_after > flops + 1  # the stage is not cut short
    assert grower.stopped and grower.stop_reason == f"reached max_flops = {flops + 1:,}"
    widths, state = grower.net.widths(), grower.state_dict()
    assert grower.epoch_end() is None  # stopped: no metric needed, nothing grown, the epoch still counted
    assert grower.net.widths() == widths and grower.epoch == 2 and len(grower.history) == 1
    assert state["metrics"] == [{"loss": 1.0}]  # a state taken earlier does not follow the run


# ------------------------------------------------------------------------------------------------ adaptive statistics


def test_adaptive_statistics_in_a_policy_measure_the_change_on_the_batches_they_used():
    settings = AdaptiveStatistics(min_batches=2, max_batches=8)
    grower = _grower(GrowthPolicy(count=2, epsilon=1e-3, solver="dense", adaptive=settings))
    stage = grower.grow()
    assert 2 < stage.batches < 8 and stage.samples == 8 * stage.batches  # settled between its bounds
    assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.01)
    endless = _grower(GrowthPolicy(count=2, epsilon=1e-3, adaptive=AdaptiveStatistics(max_batches=None)))
    assert endless.grow().measured_change < 0


def test_adaptive_statistics_on_data_shorter_than_their_bounds_use_every_batch():
    model, batches = _mlp(rows=24)  # three batches
    policy = GrowthPolicy(count=1, epsilon=1e-3, solver="dense", adaptive=AdaptiveStatistics(min_batches=4))
    stage = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy).grow()
    assert stage.batches == 3 and stage.samples == 24
    assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.01)
    with pytest.raises(ConfigError, match="min_batches <= max_batches"):
        AdaptiveStatistics(min_batches=4, max_batches=2)


# ------------------------------------------------------------------------------------------------ the record


def test_a_run_killed_inside_training_resumes_to_the_same_weights_and_history(tmp_path):
    class Killed(Exception):
        pass

    def run(kill_in_epoch=None, resume=False, name="run.pt"):
        model, batches = _cnn(1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        policy = GrowthPolicy(first=1, every=2, count=2, epsilon=0.05, max_stages=2, solver="dense")
        grower = Grower(
            model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer
        )
        order = torch.Generator().manual_seed(7)

        def train_epoch(epoch):
            model.train()
            for step, index in enumerate(torch.randperm(len(batches), generator=order).tolist()):
                if epoch == kill_in_epoch and step == 2:
                    raise Killed  # mid-epoch: two optimiser steps of it are lost with the process
                x, y = batches[index]
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
            with torch.no_grad():
                return {"loss": float(F.cross_entropy(model(batches[0][0]), batches[0][1]))}

        grower.fit(
            train_epoch,
            6,
            checkpoint=tmp_path / name,
            resume=resume,
            extra_state=(order.get_state, order.set_state),
        )
        return model, grower

    whole, whole_grower = run(name="whole.pt")
    with pytest.raises(Killed):
        run(kill_in_epoch=2)  # in the third epoch: after the first stage (epoch 1), before the second (epoch 3)
    resumed, resumed_grower = run(resume=True)

    def timeless(grower):
        return [stage.to_dict() | {"seconds": 0, "training_seconds": 0} for stage in grower.history]

    assert len(whole_grower.history) == 2 and timeless(resumed_grower) == timeless(whole_grower)
    assert resumed_grower.metrics == whole_grower.metrics
    assert whole.state_dict().keys() == resumed.state_dict().keys()
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
