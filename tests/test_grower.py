"""The public growth loop: schedules, amounts, stopping rules, history, checkpoints and adaptive statistics."""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model
from torch import nn

from splitgrow.errors import ConfigError, SplitgrowWarning
from splitgrow.firefly import FireflyOptions
from splitgrow.graph import ChannelGraph
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.statistics.adaptive import AdaptiveStatistics, adaptive_splitting, compare_selections, top_fraction

DTYPE = torch.float64


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(3, 3)
        self.act2 = nn.Softplus()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act(self.fc(x)))))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = _Net().to(DTYPE)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator, dtype=DTYPE)
    y = (x[:, 0] * x[:, 1] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    return model, batches, optimizer


def _train(model, batches, optimizer, generator):
    def epoch(_):
        model.train()
        total = 0.0
        for index in torch.randperm(len(batches), generator=generator).tolist():
            x, y = batches[index]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        return total / len(batches)

    return epoch


def test_the_history_records_every_stage_and_its_predictions():
    model, batches, optimizer = _setup()
    policy = GrowthPolicy(first=2, every=2, count=2, epsilon=1e-3, max_stages=3, solver="dense")
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    history = grower.fit(_train(model, batches, optimizer, torch.Generator().manual_seed(1)), 9)
    assert [stage.epoch for stage in history] == [2, 4, 6]
    assert grower.stopped and "max_stages" in grower.stop_reason
    for stage in history:
        assert len(stage.splits) == 2
        indexes = [split["index"] for split in stage.splits]
        assert stage.predicted_change == pytest.approx(0.5e-6 * sum(indexes), rel=1e-12)
        assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.05, abs=1e-12)
        assert sum(stage.widths_after.values()) == sum(stage.widths_before.values()) + 2
        assert stage.parameters_after > stage.parameters_before and stage.samples == 64
    assert model.fc.out_features + model.fc2.out_features == 6 + 6


def test_the_loss_after_a_split_is_measured_on_the_samples_of_the_statistics_even_when_the_data_shuffles(
    monkeypatch,
):
    import splitgrow.growth.grower as grower_module

    model, batches, optimizer = _setup()
    inputs, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(inputs, targets), batch_size=8, shuffle=True, generator=torch.Generator()
    )
    policy = GrowthPolicy(first=1, every=1, count=2, epsilon=1e-3, solver="dense", statistics_batches=2)
    grower = Grower(model, inputs[:2], loader, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    stage = grower.epoch_end()
    assert stage.samples == 16  # 2 of the 8 shuffled batches: other samples at every pass
    assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.02)

    # a loader that refills one buffer (pinned memory, prefetching): its batches cannot be kept, only drawn again
    class Refilled:
        def __iter__(self):
            buffer = (torch.empty_like(inputs[:8]), torch.empty_like(targets[:8]))
            for start in range(0, 32, 8):
                buffer[0].copy_(inputs[start : start + 8]), buffer[1].copy_(targets[start : start + 8])
                yield buffer

    grower.statistics_data = Refilled()
    stage = grower.epoch_end()
    assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.02)
    # batches too large to keep: measured on a fresh draw, which the stage says
    grower.statistics_data = loader
    monkeypatch.setattr(grower_module, "MEASURED_BATCH_BYTES", 1)
    with pytest.warns(SplitgrowWarning, match="measured on other samples than the loss before it"):
        grower.epoch_end()


def test_sites_that_no_optimiser_trains_or_that_are_frozen_do_not_grow_and_fractions_leave_them_out():
    model, batches, _ = _setup()
    # fc2 is trainable but in no optimiser (fine-tuning part of a model): its offspring would never move
    optimizer = torch.optim.SGD([*model.fc.parameters(), *model.head.parameters()], lr=0.1)
    policy = GrowthPolicy(first=1, every=1, fraction=0.5, solver="dense", threshold=-1e-12)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    with pytest.warns(SplitgrowWarning, match="'fc2': no optimiser of the grower trains its parameters"):
        stage = grower.epoch_end()
    assert stage.widths_after == {"fc": 5, "fc2": 3}  # half of fc's 3 neurons, rounded up: not half of all 6
    assert "no optimiser of the grower trains" in stage.skipped["fc2"]
    model.fc.requires_grad_(False)
    with pytest.warns(SplitgrowWarning, match="'fc': frozen"):
        assert grower.epoch_end() is None
    assert grower.stopped and grower.stop_reason.startswith("no site can grow: 'fc': frozen")


def test_a_plateau_trigger_and_a_parameter_budget_stop_where_they_should():
    model, batches, optimizer = _setup(1)
    limit = 50
    policy = GrowthPolicy(
        first=1, every=None, plateau_patience=2, monitor="loss", parameter_ratio=0.3, max_parameters=limit
    )
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    losses = iter([1.0, 0.9, 0.9, 0.95, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4])
    grown_at = []
    for epoch in range(15):
        before = sum(p.numel() for p in model.parameters())
        stage = grower.epoch_end({"loss": next(losses)})
        if stage is not None:
            grown_at.append(epoch + 1)
            assert stage.parameters_after - before <= 0.3 * before  # the budget of the stage
        if grower.stopped:
            break
    assert grown_at[0] == 4  # no improvement on epochs 3 and 4
    assert grower.stopped and "max_parameters" in grower.stop_reason
    assert sum(p.numel() for p in model.parameters()) >= limit


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    def run(stop_after=None, resume=False, path=tmp_path / "run.pt"):
        model, batches, optimizer = _setup(2)
        generator = torch.Generator().manual_seed(5)
        policy = GrowthPolicy(first=2, every=2, fraction=0.5, max_stages=2, epsilon=0.05)
        grower = Grower(
            model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer
        )

        def scheduler(optimizer, epochs):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] = 0.2
            return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 2), gamma=0.5)

        class Stop(Exception):
            pass

        def maybe_stop(epoch):
            if stop_after is not None and epoch + 1 == stop_after:
                raise Stop

        try:
            grower.fit(
                _train(model, batches, optimizer, generator),
                7,
                scheduler_factory=scheduler,
                checkpoint=path,
                resume=resume,
                on_epoch_end=maybe_stop,
                extra_state=(generator.get_state, generator.set_state),
            )
        except Stop:
            return None
        return model, grower

    whole, whole_grower = run(path=tmp_path / "whole.pt")
    assert run(stop_after=3) is None  # killed after a growth stage and an epoch of its phase
    assert run(stop_after=5, resume=True) is None
    resumed, resumed_grower = run(resume=True)
    assert [s.to_dict() | {"seconds": 0, "training_seconds": 0} for s in resumed_grower.history] == [
        s.to_dict() | {"seconds": 0, "training_seconds": 0} for s in whole_grower.history
    ]
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def _fit_resumed(path, policy, epochs):
    """A fresh model and grower fitted for ``epochs`` from the checkpoint at ``path`` (if any)."""
    model, batches, optimizer = _setup(2)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    generator = torch.Generator().manual_seed(5)
    grower.fit(_train(model, batches, optimizer, generator), epochs, checkpoint=path, resume=True)
    return model, grower


def test_resuming_a_checkpoint_past_the_epochs_asked_for_warns_and_keeps_its_model(tmp_path):
    policy = GrowthPolicy(first=1, every=1, count=1, max_stages=2)
    longer, _ = _fit_resumed(tmp_path / "run.pt", policy, 4)
    with pytest.warns(SplitgrowWarning, match=r"is of epoch 4, past the 2 asked for: the model stays as it was"):
        again, grower = _fit_resumed(tmp_path / "run.pt", policy, 2)
    assert grower.epoch == 4 and len(grower.history) == 2
    assert all(torch.equal(a, b) for a, b in zip(longer.state_dict().values(), again.state_dict().values()))


def test_resuming_under_another_policy_says_which_settings_changed(tmp_path):
    path = tmp_path / "run.pt"
    _fit_resumed(path, GrowthPolicy(first=1, every=1, count=1, max_stages=1), 2)
    with pytest.warns(SplitgrowWarning, match=r"another growth policy \(max_stages 1 -> 2\)"):
        _, grower = _fit_resumed(path, GrowthPolicy(first=1, every=1, count=1, max_stages=2), 4)
    assert len(grower.history) == 2 and grower.stop_reason == "reached max_stages = 2"  # the raised limit applies
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitgrowWarning)
        _fit_resumed(path, GrowthPolicy(first=1, every=1, count=1, max_stages=2), 4)  # the same policy: no warning
    # a run that stopped splitting-stable is not stopped by a limit: raising one does not restart it
    stable = tmp_path / "stable.pt"
    _, grower = _fit_resumed(stable, GrowthPolicy(first=1, every=1, count=1, threshold=-1e6, max_stages=1), 2)
    assert grower.stopped and grower.stop_reason.startswith("splitting-stable") and not grower.history
    with pytest.warns(SplitgrowWarning, match=r"max_stages 1 -> 3"):
        _, grower = _fit_resumed(stable, GrowthPolicy(first=1, every=1, count=1, threshold=-1e6, max_stages=3), 4)
    assert grower.stopped and grower.stop_reason.startswith("splitting-stable") and grower.epoch == 4


@pytest.mark.parametrize("architecture", ["mobilenetv1", "dscnn"])
def test_a_fraction_counts_coupling_groups_not_layers(architecture):
    """MobileNet's channels are each a pointwise and a depthwise filter: half of the groups, not of the layers."""
    model, inputs, targets = zoo_model(architecture, width=4, seed=3)
    policy = GrowthPolicy(first=0, every=1, fraction=0.5, epsilon=0.01, measure=False, allow_inexact=True)
    grower = Grower(model, inputs, [(inputs, targets)], policy=policy, loss_function=F.cross_entropy)
    groups = grower.net.neurons()
    stage = grower.grow()
    chosen = [(split["site"], split["channel"]) for split in stage.splits]
    assert len(chosen) == len(set(chosen))
    assert abs(len(chosen) - groups / 2) <= 1
    assert sum(stage.widths_after.values()) == groups + len(chosen)


def test_adaptive_statistics_stop_early_on_an_easy_case_and_draw_more_on_a_noisy_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).to(DTYPE)
    generator = torch.Generator().manual_seed(0)
    noisy = []
    for _ in range(16):  # every batch its own random labels: the indexes keep moving
        x = torch.randn(8, 4, generator=generator, dtype=DTYPE)
        noisy.append((x, torch.randint(0, 3, (8,), generator=generator)))
    graph = ChannelGraph(model, noisy[0][0])
    settings = AdaptiveStatistics(min_batches=2, max_batches=16)
    same = [noisy[0]] * 16  # the same batch again and again: the selection cannot change
    easy = adaptive_splitting(model, graph, same, top_fraction(0.25), F.cross_entropy, adaptive=settings)
    assert easy.adaptive["batches"] == 4 and easy.adaptive["stop"] == "the selection settled"
    assert easy.adaptive["checks"][1]["kept"] == 1.0 and easy.adaptive["checks"][1]["overlap"] == 1.0
    hard = adaptive_splitting(model, graph, noisy, top_fraction(0.25), F.cross_entropy, adaptive=settings)
    assert hard.adaptive["batches"] > easy.adaptive["batches"]
    assert hard.adaptive["samples"] == 8 * hard.adaptive["batches"]
    assert hard.adaptive["checks"][1]["kept"] < 1 - settings.tolerance

    def all_equal(results):  # a ranking under which every neuron gains the same: any two selections are as good
        return {name: SimpleNamespace(indexes=-torch.ones_like(r.indexes)) for name, r in results.items()}

    ranked = adaptive_splitting(
        model, graph, noisy, top_fraction(0.25), F.cross_entropy, adaptive=settings, rank=all_equal
    )
    assert ranked.adaptive["batches"] == 4 and ranked.adaptive["checks"][1]["kept"] == 1.0


@pytest.mark.parametrize("method", ["splitting", "signed"])
def test_the_grower_scores_adaptive_checks_by_the_indexes_it_ranks_by(method, monkeypatch):
    from splitgrow.signed import SignedSiteSplitting
    from splitgrow.statistics import adaptive as adaptive_module

    scored = []
    compare = adaptive_module.compare_selections

    def spy(previous, current, results):
        scored.append(results)
        return compare(previous, current, results)

    monkeypatch.setattr(adaptive_module, "compare_selections", spy)
    model, batches, _ = _setup(4)
    settings = AdaptiveStatistics(min_batches=1, max_batches=4)
    policy = GrowthPolicy(first=0, every=1, count=1, epsilon=0.01, method=method, adaptive=settings)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy)
    stage = grower.grow()
    assert scored and len(stage.splits) == 1
    signed = [isinstance(result, SignedSiteSplitting) for results in scored for result in results.values()]
    assert all(signed) if method == "signed" else not any(signed)


def test_selections_are_compared_by_the_decrease_they_keep_under_the_latest_statistics():
    results = {"a": SimpleNamespace(indexes=torch.tensor([-4.0, -3.0, -1.0, 0.5], dtype=DTYPE))}
    current = [("a", 0, -4.0), ("a", 1, -3.0)]
    measures = compare_selections([("a", 0, -3.5), ("a", 2, -2.0)], current, results)
    assert measures == {"kept": pytest.approx(5 / 7, rel=1e-12), "overlap": 0.5}
    now_positive = compare_selections([("a", 0, -4.0), ("a", 3, -1.0)], current, results)
    assert now_positive["kept"] == pytest.approx(3.5 / 7, rel=1e-12)  # its index counts as it is now
    assert compare_selections([], [], results) == {"kept": 1.0, "overlap": 1.0}  # nothing to split, twice
    assert compare_selections([("a", 2, -1.0)], [], results) == {"kept": 0.0, "overlap": 0.0}


def test_policies_refuse_bad_settings():
    with pytest.raises(Exception, match="exactly one of count"):
        GrowthPolicy(count=2, fraction=0.1)
    with pytest.raises(Exception, match="epsilon"):
        GrowthPolicy(count=2, epsilon=math.nan)
    with pytest.raises(Exception, match="when to grow"):
        GrowthPolicy(count=2, every=None)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"threshold": None}, r"threshold \(lambda_\*\) must be a number <= 0, got None"),
        ({"epsilon": "0.01"}, r"epsilon .* must be a number in \[0, 1e\+150\], got '0.01'"),
        ({"fraction": True}, "fraction must be a finite number > 0, got True"),
        ({"statistics_batches": 2.5}, "statistics_batches must be an integer >= 1"),
        ({"weight_bound": None}, "weight_bound"),
        # checked when the policy is made, not at its first stage after an epoch of training
        ({"trigger": 3}, "trigger must be a function of the growth state .* got 3; to grow every k epochs, set every"),
        ({"options": {"max_positons": 256}}, r"unknown solver option\(s\) in options: 'max_positons'; known: "),
        ({"options": {"solver": "dense"}}, r"options must not set 'solver': the policy sets it \(use solver\)"),
        ({"options": {"max_positions": 0}}, "max_positions must be an integer >= 1"),
    ],
)
def test_a_setting_of_the_wrong_type_is_a_config_error_naming_it(setting, message):
    """None, strings and bools (a YAML value or a typo) name the setting, rather than a TypeError inside math."""
    amount = {} if "fraction" in setting else {"count": 2}
    with pytest.raises(ConfigError, match=message):
        GrowthPolicy(**amount, **setting)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AdaptiveStatistics(tolerance=None), r"tolerance must be in \[0, 1\), got None"),
        (lambda: AdaptiveStatistics(growth="2"), "growth .* must be > 1, got '2'"),
        (lambda: AdaptiveStatistics(max_batches=2.5), "min_batches and max_batches must be integers"),
        (lambda: FireflyOptions(steps=None), "steps an integer >= 0, got 4, None"),
        (lambda: FireflyOptions(candidates_per_site="2"), "candidates_per_site must be an integer >= 1"),
        (lambda: FireflyOptions(steps=1.5), "steps an integer >= 0"),
        (lambda: FireflyOptions(step_size=math.inf), "step_size must be a finite number > 0"),
        (lambda: FireflyOptions(score_batches=0), "score_batches must be an integer >= 1"),
    ],
)
def test_adaptive_and_firefly_settings_of_the_wrong_type_are_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_a_splitting_stable_network_stops_the_grower():
    model = nn.Sequential(nn.Linear(2, 2), nn.Softplus(), nn.Linear(2, 1)).to(DTYPE)
    x = torch.randn(10, 2, dtype=DTYPE)
    policy = GrowthPolicy(first=1, every=1, count=1, threshold=-1e9)  # nothing is that negative
    grower = Grower(model, x, [(x, torch.zeros(10, 1, dtype=DTYPE))], policy=policy, loss_function=F.mse_loss)
    assert grower.epoch_end() is None and grower.stopped and "splitting-stable" in grower.stop_reason
    assert "every index is exactly 0" not in grower.stop_reason
    assert copy.deepcopy(grower.state_dict())["stopped"]
    # a saturated network (what a diverged step leaves) has every index exactly 0: the reason says so
    with torch.no_grad():
        model[0].weight.mul_(1e6)
    model[1] = nn.Tanh()
    grower = Grower(
        model,
        x,
        [(x, torch.zeros(10, 1, dtype=DTYPE))],
        policy=GrowthPolicy(count=1, every=1),
        loss_function=F.mse_loss,
    )
    assert (
        grower.epoch_end() is None and "every index is exactly 0: the activations are saturated" in grower.stop_reason
    )


@pytest.mark.parametrize("method", ["signed", "firefly"])
def test_the_grower_switches_method_by_one_setting_and_keeps_its_predictions(method):
    model, batches, optimizer = _setup(2)
    policy = GrowthPolicy(first=2, every=2, count=3, epsilon=1e-2, max_stages=2, solver="dense", method=method)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    history = grower.fit(_train(model, batches, optimizer, torch.Generator().manual_seed(3)), 5)
    assert len(history) == 2
    for stage in history:
        added = sum(stage.widths_after.values()) - sum(stage.widths_before.values())
        if method == "signed":
            assert all(len(split["weights"]) in (3, 4) and split["index"] < 0 for split in stage.splits)
            # count bounds the neurons added, not the splits: a four-offspring split uses the whole stage
            assert stage.splits and added == sum(len(split["weights"]) - 1 for split in stage.splits) <= 3
            # a signed split's loss change is its second-order prediction
            assert stage.measured_change == pytest.approx(stage.predicted_change, rel=0.05)
        else:
            assert len(stage.splits) == 3 and added == 3
            assert any(split.get("new") for split in stage.splits)  # new neurons enter: a first-order decrease
            assert stage.measured_change < 0
    budget = GrowthPolicy(parameter_ratio=0.2, method=method, solver="dense")
    grower = Grower(model, batches[0][0], batches, policy=budget, loss_function=F.cross_entropy)
    before = sum(p.numel() for p in model.parameters())
    stage = grower.grow()
    assert stage is not None and 0 < stage.parameters_after - before <= 0.2 * before


def test_a_stage_lists_the_sites_its_selection_skipped():
    """ResNet's stem feeds a residual stream, so its split is inexact: without allow_inexact the selection leaves
    it out, and the stage's record says so and why, beside what the statistics skipped."""
    model, inputs, targets = zoo_model("resnet", width=4, seed=2)
    policy = GrowthPolicy(first=0, every=1, count=2, epsilon=0.01, measure=False)
    grower = Grower(model, inputs, [(inputs, targets)], policy=policy, loss_function=F.cross_entropy)
    stage = grower.grow()
    assert "inexact" in stage.skipped["stem.0"] and "allow_inexact=True" in stage.skipped["stem.0"]
    assert all(split["site"] != "stem.0" for split in stage.splits)
    allowed = Grower(
        model, inputs, [(inputs, targets)], policy=replace(policy, allow_inexact=True), loss_function=F.cross_entropy
    )
    assert "stem.0" not in allowed.grow().skipped
