"""Misuse of the public Python API: every mistake is a SplitgrowError naming the problem and the fix, raised before
the model, the optimiser or any file changes (never a bare TypeError from deep inside torch, never silence)."""

from __future__ import annotations

import json
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_grower import DTYPE, _Net
from test_grower import _setup as _grower_setup
from torch import nn

from splitgrow import SplittableNetwork
from splitgrow.errors import CheckpointError, ConfigError, DivergenceError
from splitgrow.graph import GraphError
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.inspection import model_flops, split_costs
from splitgrow.models import build_model, load_model, save_model
from splitgrow.selection import select_splits, select_within_budget
from splitgrow.statistics import StatisticsError
from splitgrow.surgery import SplitRequest, resize_like


def _setup(seed: int = 0):
    """test_grower's float64 model and batches, after one SGD step (so that its optimiser holds momentum)."""
    model, batches, optimizer = _grower_setup(seed)
    optimizer.zero_grad()
    inputs, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    return model, batches, optimizer


def _grower(model, batches, optimizer, **settings):
    policy = settings.pop("policy", None) or GrowthPolicy(count=1, every=1)
    example = batches[0][0][:2]
    return Grower(
        model, example, batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer, **settings
    )


def _snapshot(model, optimizer=None):
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    momenta = None if optimizer is None else [s["momentum_buffer"].clone() for s in optimizer.state.values()]
    return state, momenta


def _unchanged(model, snapshot, optimizer=None) -> bool:
    state, momenta = snapshot
    now = model.state_dict()
    same = set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)
    if optimizer is not None:
        current = [s["momentum_buffer"] for s in optimizer.state.values()]
        same = same and len(current) == len(momenta) and all(torch.equal(a, b) for a, b in zip(current, momenta))
    return same


def _epoch(model, batches, optimizer):
    def train(_):
        for x, y in batches:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        return 0.5

    return train


# ------------------------------------------------------------------------------------------ the grower's settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"policy": None}, "policy must be a GrowthPolicy, got NoneType"),
        ({"loss_function": "cross_entropy"}, "loss_function must be callable ((outputs, targets) -> loss), got str"),
        ({"optimizer": "sgd"}, "optimizer must be a torch.optim.Optimizer or a list of them, got str"),
        ({"on_grow": 3}, "on_grow must be callable (it is called with each stage), got int"),
        ({"seed": "a"}, "seed must be an integer >= 0, got 'a'"),
        (
            {"statistics_data": None},
            "statistics_data must be an iterable of batches (a list, a DataLoader), got NoneType",
        ),
        ({"example_inputs": None}, "example_inputs must be an input batch"),
    ],
)
def test_a_grower_setting_of_the_wrong_type_is_a_config_error_naming_it(settings, message):
    model, batches, optimizer = _setup()
    arguments = {
        "example_inputs": batches[0][0][:2],
        "statistics_data": batches,
        "policy": GrowthPolicy(count=1),
        "loss_function": F.cross_entropy,
        "optimizer": optimizer,
        **settings,
    }
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        Grower(model, arguments.pop("example_inputs"), arguments.pop("statistics_data"), **arguments)


def test_an_optimiser_list_with_something_else_and_a_single_averaged_model_name_the_entry():
    model, batches, optimizer = _setup()
    with pytest.raises(ConfigError, match=r"^optimizer\[1\] is a NoneType, not a torch.optim.Optimizer: list only"):
        _grower(model, batches, [optimizer, None])
    with pytest.raises(ConfigError, match=r"^averaged_models must be a list of modules, got _Net: write averaged_mod"):
        _grower(model, batches, optimizer, averaged_models=_Net())


def test_an_optimiser_of_another_model_is_refused_before_anything_changes():
    model, batches, optimizer = _setup()
    other, _, other_optimizer = _setup(1)
    before, other_before = _snapshot(model, optimizer), _snapshot(other, other_optimizer)
    message = r"^the optimizer \(SGD\) holds none of the model's parameters: give the optimiser made from this model"
    with pytest.raises(ConfigError, match=message):
        _grower(model, batches, other_optimizer)
    net = SplittableNetwork(model, batches[0][0][:2])
    requests = net.select(net.splitting(batches, F.cross_entropy), 2)
    with pytest.raises(ConfigError, match=message):
        net.split(requests, 0.1, optimizer=other_optimizer)
    assert _unchanged(model, before, optimizer) and _unchanged(other, other_before, other_optimizer)
    assert net.split(requests, 0.1, optimizer=optimizer).parameters_after == 35 + 2 * 8  # 2 neurons of fc: 5 + 3


def test_a_model_with_no_values_or_no_parameters_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"^the model's parameter 'fc.weight' is on the meta device .*to_empty"):
        SplittableNetwork(_Net().to("meta"), torch.randn(2, 4))
    with pytest.raises(ConfigError, match="^Tanh has no parameters: there is nothing to grow"):
        Grower(nn.Tanh(), torch.randn(2, 4), [], policy=GrowthPolicy(count=1), loss_function=F.cross_entropy)


# ------------------------------------------------------------------------------------------ the statistics data


def test_batches_the_model_cannot_take_name_the_batch_and_the_dtypes_and_change_nothing():
    model, batches, optimizer = _setup()
    before = _snapshot(model, optimizer)
    single = [(x.float(), y) for x, y in batches]
    grower = _grower(model, single, optimizer)
    with pytest.raises(StatisticsError) as raised:
        grower.epoch_end()
    message = str(raised.value)
    assert message.startswith("batch 0 of the statistics data does not run through the model and the loss")
    assert "its floating-point tensors are torch.float32, the model's parameters torch.float64" in message
    assert message.endswith("(inputs, targets) with inputs the model accepts and targets its loss accepts")
    wrong_targets = batches[:2] + [(batches[2][0], batches[2][1].double())]
    with pytest.raises(StatisticsError, match=r"^batch 2 of the statistics data .*expected target dtype"):
        SplittableNetwork(model, batches[0][0][:2]).splitting(wrong_targets, F.cross_entropy)
    assert _unchanged(model, before, optimizer) and grower.history == []


@pytest.mark.parametrize("kept", [True, False])
def test_data_that_can_be_iterated_once_is_named_at_the_next_stage(kept, monkeypatch):
    import splitgrow.growth.grower as grower_module

    model, batches, optimizer = _setup()

    class Once:
        def __init__(self) -> None:
            self.batches = iter(batches)

        def __iter__(self):
            return self.batches

    if not kept:  # batches too large to keep: the loss after the split needs a second pass, which finds none
        monkeypatch.setattr(grower_module, "MEASURED_BATCH_BYTES", 1)
    policy = GrowthPolicy(count=1, every=1)
    grower = Grower(model, batches[0][0][:2], Once(), policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage = grower.epoch_end()
    warned = [str(w.message) for w in caught if "gave no batches when iterated again" in str(w.message)]
    assert (stage.loss_after is None, len(warned)) == ((False, 0) if kept else (True, 1))
    assert stage.widths_after == {"fc": 4, "fc2": 3}
    with pytest.raises(StatisticsError, match=r"^statistics_data gave no batches at stage 2, although it gave"):
        grower.epoch_end()


def test_metrics_that_are_not_a_dict_are_refused_before_the_epoch_counts():
    model, batches, optimizer = _setup()
    grower = _grower(model, batches, optimizer)
    with pytest.raises(ConfigError, match=r"^metrics must be a dict of numbers \(e.g. \{'loss'"):
        grower.epoch_end(0.5)
    assert grower.epoch == 0 and grower.history == []


# ------------------------------------------------------------------------------------------ selection and surgery


def test_results_of_the_model_before_a_split_are_refused_not_applied_to_moved_neurons():
    model, batches, optimizer = _setup()
    net = SplittableNetwork(model, batches[0][0][:2])
    results = net.splitting(batches, F.cross_entropy)
    net.split(net.select(results, 1), 0.1, optimizer=optimizer)
    stale = "^the splitting results were computed for the model before a later change"
    with pytest.raises(GraphError, match=stale):
        net.select(results, 1)
    with pytest.raises(GraphError, match=stale):
        select_within_budget(results, split_costs(net.graph), 100.0, graph=net.graph)
    with pytest.raises(ConfigError, match=r"^results\['fc'\] is a int, not a site's splitting result"):
        select_splits({"fc": 3}, 1)


@pytest.mark.parametrize(
    ("budget", "costs", "settings", "message"),
    [
        (-1.0, None, {}, r"^the budget must be a number >= 0 \(inf: no limit\), got -1.0"),
        (float("nan"), None, {}, r"^the budget must be a number >= 0 \(inf: no limit\), got nan"),
        ("10", None, {}, r"^the budget must be a number >= 0 \(inf: no limit\), got '10'"),
        (10.0, {"fc": float("nan"), "fc2": 6.0}, {}, "^the cost of a neuron of 'fc' must be a finite number >= 0"),
        (10.0, {"fc": -8.0, "fc2": 6.0}, {}, "^the cost of a neuron of 'fc' must be a finite number >= 0, got -8.0"),
        (10.0, None, {"max_count": -1}, r"^max_count \(the most splits\) must be an integer >= 1 \(or None\)"),
        (10.0, None, {"threshold": float("nan")}, r"^lambda_\* \(the splitting-index threshold\) must be a finite"),
    ],
)
def test_a_budgeted_selection_refuses_budgets_and_costs_out_of_range(budget, costs, settings, message):
    model, batches, _ = _setup()
    net = SplittableNetwork(model, batches[0][0][:2])
    results = net.splitting(batches, F.cross_entropy)
    costs = split_costs(net.graph) if costs is None else costs
    with pytest.raises(ConfigError, match=message):
        select_within_budget(results, costs, budget, graph=net.graph, **settings)
    # an infinite budget has no limit: every neuron below the threshold
    assert len(select_within_budget(results, split_costs(net.graph), float("inf"), graph=net.graph)) == 6


def test_malformed_split_requests_are_refused_before_anything_changes():
    model, batches, optimizer = _setup()
    net = SplittableNetwork(model, batches[0][0][:2])
    before = _snapshot(model, optimizer)
    cases = [
        ([SplitRequest("fc", 0, None, float("nan"))], "the index of the split request for 'fc' channel 0 must be a "),
        ([SplitRequest("fc", 0, None, "low")], "the index of the split request for 'fc' channel 0 must be a finite"),
        ([SplitRequest("fc", 0, "abc")], "the direction for 'fc' channel 0 must be a tensor of numbers, got str"),
        (SplitRequest("fc", 0), r"requests must be a list of split requests, got a single one: pass \[request\]"),
        ([("fc", 0)], r"requests\[0\] is a tuple, not a SplitRequest or NewNeuron: write SplitRequest"),
    ]
    for requests, message in cases:
        with pytest.raises(GraphError, match="^" + message):
            net.split(requests, 0.1, optimizer=optimizer)
    assert _unchanged(model, before, optimizer)
    # a direction of integers is a direction: the same split as its float64 twin
    twin, twin_batches, twin_optimizer = _setup()
    net.split([SplitRequest("fc", 1, torch.tensor([1, 0, 2, 0, 0]))], 0.1, optimizer=optimizer)
    direction = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.0], dtype=DTYPE)
    SplittableNetwork(twin, twin_batches[0][0][:2]).split([SplitRequest("fc", 1, direction)], 0.1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_resize_like_checks_the_whole_state_before_resizing_any_layer():
    model = _Net().to(DTYPE)
    before = _snapshot(model)
    grown = _Net().to(DTYPE).state_dict()
    grown["fc.weight"], grown["fc.bias"] = torch.zeros(5, 4, dtype=DTYPE), torch.zeros(5, dtype=DTYPE)
    grown["fc2.weight"] = torch.zeros(3, 5, dtype=DTYPE)
    missing = {name: tensor for name, tensor in grown.items() if name != "head.bias"}
    with pytest.raises(GraphError, match="^the saved state has no 'head.bias': it is not a state of this architecture"):
        resize_like(model, missing)
    mixed = dict(grown, **{"fc.bias": torch.zeros(3, dtype=DTYPE)})
    with pytest.raises(
        GraphError, match="^the saved state of 'fc' gives its outputs 5 and 3 channels in different tensors"
    ):
        resize_like(model, mixed)
    with pytest.raises(GraphError, match="^the saved state must be a state_dict"):
        resize_like(model, None)
    assert _unchanged(model, before)
    assert resize_like(model, grown) == ["fc", "fc2"] and model.fc.out_features == 5 and model.fc2.in_features == 5


# ------------------------------------------------------------------------------------------ saved models


def test_saved_models_refuse_unwritable_histories_and_foreign_files(tmp_path):
    model = build_model("mlp", widths=[4, 4], in_features=6, num_classes=3)
    with pytest.raises(ConfigError, match=r"^the history cannot be written as JSON .*GrowthStage.to_dict\(\) has them"):
        save_model(tmp_path / "h", model, history=[{"weights": torch.ones(1)}])
    with pytest.raises(ConfigError, match="^history must be a list of dicts"):
        save_model(tmp_path / "h", model, history="stage 1")
    assert list(tmp_path.iterdir()) == []  # no .pt without its .json
    save_model(tmp_path / "a", model)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "list.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    with pytest.raises(Exception, match=r"list: not a valid saved splitgrow model \(TypeError: it holds a list and a"):
        load_model(tmp_path / "list")
    (tmp_path / "bytes.json").write_bytes(b"\xff\xfe garbage")
    (tmp_path / "bytes.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    with pytest.raises(Exception, match=r"bytes: not a valid saved splitgrow model \(UnicodeDecodeError"):
        load_model(tmp_path / "bytes")
    description = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "z.json").write_text(
        json.dumps({**description, "config": {**description["config"], "activation": "x"}})
    )
    (tmp_path / "z.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    with pytest.raises(Exception, match=r"z: not a valid saved splitgrow model \(unknown activation 'x'; choose"):
        load_model(tmp_path / "z")
    from test_faults import flip_tensor_bytes

    save_model(tmp_path / "d", build_model("mlp", widths=[64, 64], in_features=64, num_classes=3))
    flip_tensor_bytes(tmp_path / "d.pt")  # inside the weights: torch.load would read others without complaint
    with pytest.raises(Exception, match=r"d: not a valid saved splitgrow model \(ValueError: the bytes of its record"):
        load_model(tmp_path / "d")
    with pytest.raises(ConfigError, match="^MLP has no setting 'depth'; its settings: activation, in_features"):
        build_model("mlp", depth=3)
    with pytest.raises(ConfigError, match=r"^MLP's widths must be a list of positive integers, got 'ab'"):
        build_model("mlp", widths="ab")


# ------------------------------------------------------------------------------------------ fit and its checkpoints


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"epochs": -1}, r"^epochs must be an integer >= 0 \(the epochs in all\), got -1"),
        ({"epochs": 2.5}, r"^epochs must be an integer >= 0 \(the epochs in all\), got 2.5"),
        ({"train_epoch": 3}, r"^train_epoch must be callable"),
        ({"evaluate": lambda: 0.5}, "^evaluate must return a dict of metrics, got float"),
        ({"train_epoch": lambda epoch: "done"}, r"^train_epoch must return its loss \(a number\), a dict of metrics"),
        ({"scheduler_factory": lambda optimizer, epochs: None}, "^scheduler_factory must return a learning-rate sch"),
        ({"checkpoint": 3}, "^checkpoint must be a file path, got 3"),
        # a folder no one can create (not even root): found before the first epoch, not at the first checkpoint
        (
            {"checkpoint": "/proc/splitgrow-none/run.pt"},
            r"^the checkpoint /proc/splitgrow-none/run.pt cannot be written",
        ),
        ({"extra_state": (lambda: 1,)}, r"^extra_state must be a tuple \(get, set\) of two callables"),
    ],
)
def test_fit_refuses_arguments_and_returns_of_the_wrong_kind_before_an_epoch_counts(arguments, message):
    model, batches, optimizer = _setup()
    grower = _grower(model, batches, optimizer)
    before = _snapshot(model)
    arguments = {"train_epoch": lambda epoch: 0.5, "epochs": 2, **arguments}
    with pytest.raises(ConfigError, match=message):
        grower.fit(arguments.pop("train_epoch"), arguments.pop("epochs"), **arguments)
    assert grower.epoch == 0 and grower.history == [] and _unchanged(model, before)


def test_a_folder_as_the_checkpoint_is_refused_before_training(tmp_path):
    model, batches, optimizer = _setup()
    grower = _grower(model, batches, optimizer)
    with pytest.raises(ConfigError, match="is a folder: give the path of a file in it, e.g. checkpoint='run/grow.pt'"):
        grower.fit(_epoch(model, batches, optimizer), 2, checkpoint=tmp_path)
    assert grower.epoch == 0


def test_divergence_stops_fit_before_it_overwrites_the_last_good_checkpoint(tmp_path):
    model, batches, optimizer = _setup()
    grower = _grower(model, batches, optimizer, policy=GrowthPolicy(count=1, first=5))
    path = tmp_path / "run.pt"
    train = _epoch(model, batches, optimizer)

    def diverging(epoch):
        train(epoch)
        if epoch == 1:
            with torch.no_grad():
                model.fc2.weight[0, 0] = float("nan")
        return float("nan") if epoch == 1 else 0.5

    with pytest.raises(DivergenceError, match=r"^training diverged in epoch 1: the model's 'fc2.weight' is not finite"):
        grower.fit(diverging, 3, checkpoint=path)
    saved = torch.load(path, weights_only=True)
    assert saved["grower"]["epoch"] == 1 and bool(torch.isfinite(saved["model"]["fc2.weight"]).all())


def test_resuming_a_checkpoint_of_other_optimisers_or_no_checkpoint_at_all_changes_nothing(tmp_path):
    model, batches, optimizer = _setup()
    path = tmp_path / "run.pt"
    _grower(model, batches, optimizer).fit(_epoch(model, batches, optimizer), 2, checkpoint=path)
    fresh, fresh_batches, _ = _setup(3)
    adam = torch.optim.Adam(fresh.parameters())
    before = _snapshot(fresh)
    grower = _grower(fresh, fresh_batches, adam)
    with pytest.raises(
        CheckpointError, match=r"^optimiser 0 of the checkpoint is not this run's Adam .*its settings lack"
    ):
        grower.fit(_epoch(fresh, fresh_batches, adam), 3, checkpoint=path, resume=True)
    two = [torch.optim.SGD([fresh.fc.weight], lr=0.1), torch.optim.SGD(list(fresh.parameters())[1:], lr=0.1)]
    with pytest.raises(CheckpointError, match=r"^the checkpoint holds the state of 1 optimiser\(s\), this run has 2"):
        _grower(fresh, fresh_batches, two).fit(lambda epoch: 0.5, 3, checkpoint=path, resume=True)
    torch.save(fresh.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"^not a checkpoint of Grower.fit \(it lacks the model, optimiser or"):
        grower.fit(lambda epoch: 0.5, 3, checkpoint=tmp_path / "weights.pt", resume=True)
    assert _unchanged(fresh, before) and adam.state == {} and grower.epoch == 0


def test_a_resume_that_fails_half_way_rolls_the_model_back(tmp_path):
    model, batches, optimizer = _setup()
    path = tmp_path / "run.pt"
    _grower(model, batches, optimizer).fit(_epoch(model, batches, optimizer), 2, checkpoint=path)
    grown = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    fresh, fresh_batches, fresh_optimizer = _setup(3)
    shapes = {name: tuple(tensor.shape) for name, tensor in fresh.state_dict().items()}
    assert grown != shapes  # the checkpoint holds a grown model
    before = _snapshot(fresh, fresh_optimizer)
    grower = _grower(fresh, fresh_batches, fresh_optimizer)

    def restore(value):
        raise ValueError(f"not my state: {value!r}")

    with pytest.raises(CheckpointError, match=r"^the checkpoint does not fit this run \(ValueError: not my state"):
        grower.fit(lambda epoch: 0.5, 3, checkpoint=path, resume=True, extra_state=(lambda: None, restore))
    assert {name: tuple(tensor.shape) for name, tensor in fresh.state_dict().items()} == shapes
    assert _unchanged(fresh, before, fresh_optimizer) and grower.epoch == 0


def test_a_grower_state_that_does_not_parse_leaves_the_grower_as_it_was():
    model, batches, optimizer = _setup()
    grower = _grower(model, batches, optimizer)
    grower.epoch_end()
    with pytest.raises(CheckpointError, match=r"^not the state of a Grower \(KeyError: 'epoch'\)"):
        grower.load_state_dict({})
    with pytest.raises(CheckpointError, match=r"^not the state of a Grower \(TypeError"):
        grower.load_state_dict(None)
    assert grower.epoch == 1 and len(grower.history) == 1


# ------------------------------------------------------------------------------------------ inspection, Lightning


def test_inspection_names_an_example_the_model_does_not_take_and_a_wrong_cost_kind():
    model, batches, _ = _setup()
    with pytest.raises(GraphError, match=r"^the example input does not run through the model \(RuntimeError: mat1"):
        model_flops(model, torch.randn(2, 5, dtype=DTYPE))
    with pytest.raises(ConfigError, match="^the example input must be a batch"):
        model_flops(model, None)
    assert model_flops(model, [batches[0][0][:2]]) == model_flops(model, batches[0][0][:2]) == 2 * (12 + 9 + 6)
    graph = SplittableNetwork(model, batches[0][0][:2]).graph
    with pytest.raises(ConfigError, match="^cost kind must be one of parameters, flops, got 'bytes'"):
        split_costs(graph, "bytes")
    with pytest.raises(ConfigError, match=r"^graph must be a ChannelGraph \(SplittableNetwork.graph\), got NoneType"):
        split_costs(None)


def test_a_growth_callback_is_refused_for_a_second_module_and_misconfigured_at_construction():
    pytest.importorskip("lightning")
    from splitgrow.growth.lightning import GrowthCallback

    example = torch.randn(2, 4, dtype=DTYPE)
    with pytest.raises(ConfigError, match="^policy must be a GrowthPolicy, got NoneType"):
        GrowthCallback(example, policy=None, loss_function=F.cross_entropy)
    with pytest.raises(ConfigError, match="^averaged_models must be a list of modules or a callable"):
        GrowthCallback(example, policy=GrowthPolicy(count=1), loss_function=F.cross_entropy, averaged_models="ema")
    callback = GrowthCallback(example, policy=GrowthPolicy(count=1), loss_function=F.cross_entropy)
    trainer = SimpleNamespace(strategy=SimpleNamespace())
    first, second = _Net().to(DTYPE), _Net().to(DTYPE)
    for module in (first, second):  # the hook of a LightningModule that the callback wraps
        module.on_load_checkpoint = lambda checkpoint: None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback.setup(trainer, first, "fit")
        callback.setup(trainer, first, "validate")  # the same module again: its grower goes on
        with pytest.raises(ConfigError, match=r"^this GrowthCallback grows another module \(_Net\).*new GrowthCallba"):
            callback.setup(trainer, second, "fit")
    assert callback.grower.model is first


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda loss: (loss,), "the closure returned a tuple of 1 for batch 0"),
        (lambda loss: (loss, 8, 1), "the closure returned a tuple of 3 for batch 0"),
        (lambda loss: (loss, "w"), "the closure's weight for batch 0 is 'w'"),
        (lambda loss: (loss, -1.0), "the closure's weight for batch 0 is -1.0"),
        (lambda loss: (loss, float("nan")), "the closure's weight for batch 0 is nan"),
        (lambda loss: (loss, torch.ones(2)), "the closure's weight for batch 0 is tensor"),
    ],
)
def test_a_closure_that_returns_no_loss_and_weight_is_refused_naming_the_batch(returned, message):
    """(loss, -1) flipped the sign of the batch's matrices and (loss, nan) reached the solver."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    inputs, targets = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def closure(model, batch):
        return returned(F.cross_entropy(model(batch[0]), batch[1]))

    net = SplittableNetwork(model, inputs[:2])
    with pytest.raises(StatisticsError, match=re.escape(message)):
        net.splitting([(inputs, targets)], closure=closure)
    results = net.splitting([(inputs, targets)], closure=lambda m, b: (F.cross_entropy(m(b[0]), b[1]), np.int64(8)))
    assert results["0"].indexes.shape == (6,)


def test_a_closure_that_runs_the_model_twice_reads_its_last_run():
    """The probes were shared across forward passes: a reference pass on one sample before the real one broadcast
    its (1, ...) probe over the batch and gave other indexes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    inputs, targets = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    net = SplittableNetwork(model, inputs[:2])

    def twice(model, batch):
        reference = model(batch[0][:1])
        return F.cross_entropy(model(batch[0]), batch[1]) + 0.0 * reference.sum()

    once = net.splitting([(inputs, targets)], F.cross_entropy)["0"].indexes
    torch.testing.assert_close(net.splitting([(inputs, targets)], closure=twice)["0"].indexes, once)


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
        self.register_buffer("mask", torch.full((3, 3), float("-inf")).triu(1))  # a causal mask, infinite by design

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_fit_takes_a_buffer_infinite_by_design_for_no_divergence_but_one_that_becomes_so():
    torch.manual_seed(0)
    model = _Masked()
    inputs, targets = torch.randn(32, 4), torch.randint(0, 3, (32,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = GrowthPolicy(first=1, every=1, count=1, max_stages=1)
    grower = Grower(model, inputs[:2], [(inputs, targets)], policy=policy, loss_function=F.cross_entropy,
                    optimizer=optimizer)  # fmt: skip

    def train(epoch):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        if epoch == 2:
            model.a.bias.data[0] = float("inf")

    with pytest.raises(DivergenceError, match="training diverged in epoch 2: the model's 'a.bias' is not finite"):
        grower.fit(train, 4)
    assert len(grower.history) == 1


def test_exclude_given_as_a_generator_still_excludes_and_non_names_are_refused():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    net = SplittableNetwork(
        model, torch.randn(2, 4), exclude=(name for name, _ in model.named_modules() if name == "0")
    )
    assert net.exclude == ("0",) and not net.graph.sites["0"].splittable
    with pytest.raises(GraphError, match="exclude must list module names .strings., got 1"):
        SplittableNetwork(model, torch.randn(2, 4), exclude=[1])


def test_a_request_made_from_a_results_entries_as_they_are_is_accepted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    inputs, targets = torch.randn(8, 4), torch.randint(0, 3, (8,))
    net = SplittableNetwork(model, inputs[:2])
    result = net.splitting([(inputs, targets)], F.cross_entropy)["0"]
    channel = result.indexes.argmin()  # a 0-d integer tensor, as argmin gives it
    request = SplitRequest("0", channel, result.directions[channel], result.indexes[channel])
    assert request.channel == int(channel) and type(request.channel) is int
    report = net.split([request], 0.01)
    assert model[0].out_features == 7
    assert report.predicted_change == pytest.approx(0.5 * 0.01**2 * float(result.indexes[channel]))
    # a channel picked by numpy is the same channel; a bool or a fractional tensor is no channel
    assert SplitRequest("0", np.int64(3)) == SplitRequest("0", 3)
    for channel in (True, torch.tensor(1.0)):
        with pytest.raises(GraphError, match="^the channel of a split request must be an integer"):
            net.split([SplitRequest("0", channel)], 0.01)


@pytest.mark.parametrize("epsilon", [1e200, 10**400])
def test_a_step_size_whose_square_overflows_is_refused_everywhere(epsilon):
    with pytest.raises(ConfigError, match=r"epsilon \(the split step size\) must be a number in \[0, 1e\+150\]"):
        GrowthPolicy(count=1, epsilon=epsilon)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(GraphError, match="epsilon must be a finite number >= 0 .at most 1e.150."):
        SplittableNetwork(model, torch.randn(2, 4)).split([SplitRequest("0", 0)], epsilon)
    assert model[0].out_features == 6


class _IndexedBatches:
    """Batches that Python iterates by index (``__getitem__`` alone), as older data containers do."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __getitem__(self, index: int):
        return self.batches[index]


def test_batches_iterable_by_index_alone_are_statistics_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    inputs, targets = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    net = SplittableNetwork(model, inputs[:2])
    expected = net.splitting([(inputs, targets)], F.cross_entropy)["0"].indexes
    found = net.splitting(_IndexedBatches([(inputs, targets)]), F.cross_entropy)["0"].indexes
    torch.testing.assert_close(found, expected)
    with pytest.raises(ConfigError, match="data must be an iterable of batches"):
        net.splitting(3, F.cross_entropy)
    # a Dataset's items are single samples: each would pass for a batch of x.shape[0] samples
    samples = torch.utils.data.TensorDataset(inputs, targets)
    with pytest.raises(ConfigError, match=r"^data is a Dataset \(TensorDataset\), whose items are single samples"):
        net.splitting(samples, F.cross_entropy)
    loader = torch.utils.data.DataLoader(samples, batch_size=4)
    torch.testing.assert_close(net.splitting(loader, F.cross_entropy)["0"].indexes, expected)


def test_a_split_that_leaves_a_model_that_does_not_run_is_undone():
    # a check of the width that the traced graph cannot see (a forward hook): the split breaks the model, so it
    # must come back as it was, optimiser state and gradients included
    model, batches, optimizer = _setup()
    inputs, targets = batches[0]
    F.cross_entropy(model(inputs), targets).backward()  # a gradient to keep
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    before = _snapshot(model, optimizer)
    net = SplittableNetwork(model, inputs[:2])
    site = next(iter(net.graph.sites))
    module = net.graph.modules[site]

    width = module.weight.shape[0]

    def width_check(_module, _inputs, output):
        if output.shape[-1] != width:
            raise RuntimeError(f"expected {width} features, got {output.shape[-1]}")

    hook = module.register_forward_hook(width_check)
    with pytest.raises(
        GraphError, match=rf"^the split left a model that does not run \(RuntimeError: expected {width} "
    ):
        net.split([SplitRequest(site, 1, torch.randn(net.graph.sites[site].neuron_dim))], 0.1, optimizer=optimizer)
    assert _unchanged(model, before, optimizer) and module.weight.shape[0] == module.out_features == width
    assert all(torch.equal(p.grad, grads[name]) for name, p in model.named_parameters())
    hook.remove()
    net.split([SplitRequest(site, 1)], 0.1, optimizer=optimizer)  # the model still splits and trains
    optimizer.zero_grad()
    F.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    assert module.weight.shape[0] == width + 1


def test_a_model_cast_after_its_graph_was_traced_still_splits():
    # the graph keeps the example it was traced with; the split's run of the grown model casts it to the model's dtype
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    net = SplittableNetwork(model, torch.randn(2, 4))
    assert net.graph.sites["0"].splittable
    model.double()
    net.split([SplitRequest("0", 1)], 0.0)
    assert model[0].out_features == 7 and model(torch.randn(2, 4, dtype=torch.float64)).shape == (2, 3)


def test_statistics_inside_autocast_are_computed_in_the_models_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3))
    inputs, targets = torch.randn(16, 4), torch.randint(0, 3, (16,))
    net = SplittableNetwork(model, inputs[:2])
    plain = net.splitting([(inputs, targets)], F.cross_entropy)["0"].indexes
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a training loop's region, as users write it
        rounded = net.splitting([(inputs, targets)], F.cross_entropy)["0"].indexes
    torch.testing.assert_close(rounded, plain)


def test_a_lobpcg_tolerance_below_the_operators_precision_warns_with_the_fix():
    from splitgrow.errors import SplitgrowWarning
    from splitgrow.statistics.splitting import SolverOptions

    with pytest.warns(SplitgrowWarning, match=r"tolerance 1e-08 is below .* pass operator_dtype=torch.float64"):
        SolverOptions(solver="lobpcg", tolerance=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitgrowWarning)
        SolverOptions(solver="lobpcg", tolerance=1e-8, operator_dtype=torch.float64)
        SolverOptions(solver="dense", tolerance=1e-8)
