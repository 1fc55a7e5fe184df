"""The growth loop among the tools real training combines it with: torch.compile, mixed precision and low-precision
models, channels_last, learning-rate schedulers and parameter groups, frozen layers, gradients left across a split
(accumulation, clipping), hook-based reparametrisations, saving and loading, and exact resumption."""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from splitgrow import SplittableNetwork
from splitgrow.firefly import FireflyOptions, new_neuron_candidates
from splitgrow.graph import GraphError
from splitgrow.growth import Grower, GrowthPolicy
from splitgrow.inspection import model_flops
from splitgrow.selection import FROZEN
from splitgrow.surgery import SplitRequest, resize_like

DTYPE = torch.float64


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = nn.Linear(4, 3), nn.Softplus()
        self.fc2, self.act2 = nn.Linear(3, 3), nn.Tanh()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act(self.fc(x)))))


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.act = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus()
        self.conv2, self.norm2, self.act2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh()
        self.pool, self.head = nn.AdaptiveAvgPool2d(2), nn.Linear(16, 3)

    def forward(self, x):
        x = self.act(self.norm(self.conv(x)))
        return self.head(torch.flatten(self.pool(self.act2(self.norm2(self.conv2(x)))), 1))


def _mlp_batches(dtype=DTYPE):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator, dtype=dtype)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def _cnn_batches(dtype=DTYPE):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 2, 6, 6, generator=generator, dtype=dtype)
    y = torch.randint(0, 3, (24,), generator=generator)
    return [(x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)]


def _grower(model, batches, optimizer=None, **policy) -> Grower:
    policy = GrowthPolicy(**{"count": 2, "epsilon": 0.05, **policy})
    return Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer)


def _train(model, optimizer, batches, scaler=None, autocast=False) -> None:
    for x, y in batches:
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's import warns about torch.jit
def test_a_compiled_model_grows_its_module_and_recompiles_to_the_eager_outputs():
    from torch._dynamo.testing import CompileCounter  # a backend that runs the captured graphs and counts them

    torch._dynamo.reset()
    torch.manual_seed(0)
    model, batches = _MLP().double(), _mlp_batches()
    compiles = CompileCounter()
    compiled = torch.compile(model, backend=compiles)
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.1, momentum=0.9)
    average = torch.optim.swa_utils.AveragedModel(compiled)  # holds a compiled copy
    grower = Grower(  # the compiled model as it is
        compiled,
        batches[0][0],
        batches,
        policy=GrowthPolicy(count=2, epsilon=0.0),
        loss_function=F.cross_entropy,
        optimizer=optimizer,
        averaged_models=[average],
    )
    _train(compiled, optimizer, batches)
    average.update_parameters(compiled)
    assert grower.model is model and compiles.frame_count == 1
    x = batches[0][0]
    before = average(x).detach()
    stage = grower.grow()
    assert sum(stage.widths_after.values()) == 3 + 3 + 2 and model.fc.out_features + model.fc2.out_features == 8
    compiled_before = compiles.frame_count
    assert torch.equal(compiled(x), model(x))  # the grown weights, not a stale graph
    assert compiles.frame_count == compiled_before + 1  # recompiled for the new shapes (same grad and train modes)
    torch.testing.assert_close(average(x), before, rtol=0, atol=1e-14)  # its copy grown the same way (eps = 0)
    _train(compiled, optimizer, batches)
    average.update_parameters(compiled)
    assert torch.equal(compiled(x), model(x))
    assert all(optimizer.state[p]["momentum_buffer"].shape == p.shape for p in model.parameters())
    torch._dynamo.reset()


def test_autocast_training_with_a_grad_scaler_grows_exactly_like_unscaled_training():
    # scaling by a power of two is exact, so a run with a GradScaler (its state across the stage included) must give
    # the weights of the same run without one
    def run(scaler):
        torch.manual_seed(0)
        model, batches = _CNN(), _cnn_batches(torch.float32)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
        grower = _grower(model, batches, optimizer)
        _train(model, optimizer, batches, scaler, autocast=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stage = grower.grow()
        _train(model, optimizer, batches, scaler, autocast=True)
        return model, stage

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    scaled, scaled_stage = run(scaler)
    plain, plain_stage = run(None)
    assert scaled_stage.splits == plain_stage.splits and scaler.get_scale() == 2.0**15  # doubled every 2 of 6 steps
    assert scaled.conv.weight.dtype == torch.float32
    for (name, a), b in zip(scaled.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
def test_a_low_precision_model_grows_in_its_dtype_with_float64_statistics(dtype, tolerance):
    torch.manual_seed(0)
    reference, batches = _MLP().double(), _mlp_batches()
    model = copy.deepcopy(reference).to(dtype)
    exact = _grower(reference, batches).statistics()
    batches = [(x.to(dtype), y) for x, y in batches]
    x = batches[0][0]
    with torch.no_grad():
        before = model(x).double()
    grower = _grower(model, batches, epsilon=0.0)
    assert all(site.indexes.dtype == DTYPE for site in grower.statistics().values())
    stage = grower.grow()
    for split in stage.splits:  # float64 sums of low-precision products: the float64 model's indexes to ~1e-3
        assert split["index"] == pytest.approx(float(exact[split["site"]].indexes[split["channel"]]), abs=1e-3)
    assert {p.dtype for p in model.parameters()} == {dtype} and model.fc.out_features + model.fc2.out_features == 8
    with torch.no_grad():  # a split of eps = 0 keeps the function, up to the dtype's rounding
        torch.testing.assert_close(model(x).double(), before, rtol=0, atol=tolerance)


def test_a_channels_last_model_and_its_optimiser_state_stay_channels_last_and_match_a_contiguous_twin():
    torch.manual_seed(0)
    model, batches = _CNN().double().to(memory_format=torch.channels_last), _cnn_batches()
    batches = [(x.to(memory_format=torch.channels_last), y) for x, y in batches]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, foreach=True)
    _train(model, optimizer, batches)
    twin = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, foreach=True)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    generator = torch.Generator().manual_seed(1)
    requests = [SplitRequest("conv", 1, torch.randn(19, generator=generator, dtype=DTYPE))]
    requests.append(SplitRequest("conv2", 2, torch.randn(37, generator=generator, dtype=DTYPE)))
    SplittableNetwork(model, batches[0][0]).split(requests, 0.1, optimizer=optimizer)
    SplittableNetwork(twin, batches[0][0].contiguous()).split(requests, 0.1, optimizer=twin_optimizer)
    for weight in (model.conv.weight, model.conv2.weight):
        assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
        assert optimizer.state[weight]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last)
    _train(model, optimizer, batches)
    _train(twin, twin_optimizer, [(x.contiguous(), y) for x, y in batches])
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


SCHEDULERS = {
    "cosine": lambda optimizer: lr_scheduler.CosineAnnealingLR(optimizer, 6),
    "one-cycle": lambda optimizer: lr_scheduler.OneCycleLR(optimizer, [0.2, 0.1], total_steps=8),
    "lambda": lambda optimizer: lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.8**epoch),
    "sequential": lambda optimizer: lr_scheduler.SequentialLR(
        optimizer,
        [lr_scheduler.LinearLR(optimizer, 0.1, total_iters=2), lr_scheduler.ExponentialLR(optimizer, 0.9)],
        milestones=[2],
    ),
    "chained": lambda optimizer: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(optimizer, 0.5, total_iters=2), lr_scheduler.ExponentialLR(optimizer, 0.9)]
    ),
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_schedulers_and_parameter_groups_carry_on_across_splits(name):
    def run(grow):
        torch.manual_seed(0)
        model, batches = _MLP().double(), _mlp_batches()
        optimizer = torch.optim.SGD(
            [
                {"params": model.fc.parameters(), "lr": 0.2, "weight_decay": 1e-3},
                {"params": [*model.fc2.parameters(), *model.head.parameters()]},
            ],
            lr=0.1,
            momentum=0.9,
            nesterov=True,
        )
        scheduler = SCHEDULERS[name](optimizer)
        net = SplittableNetwork(model, batches[0][0])
        rates = []
        for epoch in range(4):
            _train(model, optimizer, batches[:1])
            scheduler.step()
            rates.append([group["lr"] for group in optimizer.param_groups])
            if grow:
                net.split([SplitRequest("fc", epoch % model.fc.out_features)], 0.05, optimizer=optimizer)
        return model, optimizer, rates

    model, optimizer, rates = run(grow=True)
    assert rates == run(grow=False)[2]  # the schedule does not see the splits
    first, second = optimizer.param_groups
    assert first["params"] == [model.fc.weight, model.fc.bias] and model.fc.weight.shape == (7, 4)
    assert (first["weight_decay"], second["weight_decay"]) == (1e-3, 0.0) and second["params"][0] is model.fc2.weight
    assert all(optimizer.state[p]["momentum_buffer"].shape == p.shape for p in model.parameters())


def test_a_frozen_site_does_not_grow_and_a_frozen_consumer_stays_frozen_outside_the_optimiser():
    """fc is frozen: its offspring would never train, so it does not grow (the stage says why); fc2 grows, which
    widens the frozen head's input: the head's grown weight keeps requires_grad=False and stays out of the
    optimiser, and training leaves it as it is."""
    torch.manual_seed(0)
    model, batches = _MLP().double(), _mlp_batches()
    model.fc.requires_grad_(False)
    model.head.requires_grad_(False)
    trainable = [{"params": [p for name, p in model.named_parameters() if p.requires_grad], "weight_decay": 0.1}]
    optimizer = torch.optim.AdamW(trainable, lr=0.01, fused=False, foreach=True)
    _train(model, optimizer, batches)
    stage = _grower(model, batches, optimizer, count=2).grow()
    assert {split["site"] for split in stage.splits} == {"fc2"} and len(stage.splits) == 2
    assert stage.skipped["fc"] == FROZEN and model.fc.out_features == 3
    head = copy.deepcopy(model.head)
    assert head.weight.shape == (2, 5) and not model.head.weight.requires_grad and not model.head.bias.requires_grad
    assert all(p.requires_grad for p in model.fc2.parameters())
    assert model.head.weight not in optimizer.state and len(optimizer.param_groups[0]["params"]) == 2
    _train(model, optimizer, batches)
    assert torch.equal(model.head.weight, head.weight) and torch.equal(model.head.bias, head.bias)
    assert optimizer.state[model.fc2.weight]["exp_avg"].shape == model.fc2.weight.shape == (5, 3)
    # Firefly's new neurons skip the frozen site as well
    graph = SplittableNetwork(model, batches[0][0]).graph
    options = FireflyOptions(candidates_per_site=1, steps=1)
    assert [c.site for c in new_neuron_candidates(model, graph, batches, F.cross_entropy, options=options)] == ["fc2"]


def test_gradients_left_on_the_parameters_are_carried_so_that_accumulation_and_clipping_span_a_stage():
    torch.manual_seed(0)
    model, batches = _CNN().double(), _cnn_batches()
    model.eval()  # BatchNorm by its running statistics, so that the batches' gradients add up
    twin = copy.deepcopy(model)
    (x0, y0), (x1, y1) = batches[:2]
    F.cross_entropy(model(x0), y0).backward()  # the first micro-batch before the stage
    stage = _grower(model, batches, epsilon=0.0, count=3).grow()
    F.cross_entropy(model(x1), y1).backward()  # the second after it
    twin_net = SplittableNetwork(twin, x0)
    requests = [SplitRequest(split["site"], split["channel"]) for split in stage.splits]
    twin_net.split(requests, 0.0)
    (F.cross_entropy(twin(x0), y0) + F.cross_entropy(twin(x1), y1)).backward()  # both on the grown network
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-14, msg=name)
    norm = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    assert float(norm) == pytest.approx(float(nn.utils.clip_grad_norm_(twin.parameters(), 0.1)), rel=1e-12)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert float(clipped) == pytest.approx(0.1, rel=1e-6) and float(norm) > 0.1


def _weight_norm(module):
    return nn.utils.weight_norm(module)


def _prune(module):
    from torch.nn.utils import prune

    return prune.l1_unstructured(module, "weight", amount=0.3)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "hook", [_weight_norm, nn.utils.spectral_norm, _prune], ids=["weight-norm", "spectral", "prune"]
)
def test_a_weight_a_forward_pre_hook_recomputes_is_refused_before_anything_changes(hook):
    torch.manual_seed(0)
    model, batches = _MLP().double(), _mlp_batches()
    hook(model.fc2)  # fc2's weight is computed from other tensors at every call: it is consumer of fc, member of fc2
    model.eval()
    x = batches[0][0]
    with torch.no_grad():
        before = model(x)
    net = SplittableNetwork(model, x)
    # the graph knows before any statistics: neither site that touches fc2's weight is one
    message = r"module 'fc2': its weight is recomputed at every call by a forward pre-hook .*remove_weight_norm"
    assert all(re.search(message, net.graph.skipped()[site]) for site in ("fc", "fc2"))
    for site in ("fc", "fc2"):
        with pytest.raises(GraphError, match=message):
            net.split([SplitRequest(site, 0)], 0.0)
    assert model.fc.out_features == model.fc2.out_features == 3
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_parametrized_layer_is_left_out_and_the_rest_grows():
    torch.manual_seed(0)
    model, batches = _MLP().double(), _mlp_batches()
    nn.utils.parametrizations.weight_norm(model.fc)
    with pytest.warns(UserWarning, match=r"'fc': module 'fc' has parametrizations .*remove_parametrizations"):
        stage = _grower(model, batches).grow()
    assert {split["site"] for split in stage.splits} == {"fc2"} and model.fc2.out_features == 5


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        ((), ""),
        (("2",), r"'2': excluded by the user; '0': its activation relu .*relu_surrogate"),
    ],
    ids=["relu", "relu-and-excluded"],
)
def test_a_model_with_no_layer_that_can_grow_is_an_error_not_splitting_stable(exclude, message):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    batches = _mlp_batches()
    policy = GrowthPolicy(count=2, epsilon=0.05)
    arguments = {"policy": policy, "loss_function": F.cross_entropy, "exclude": exclude}
    if not exclude:  # the Tanh layer grows
        assert Grower(model, batches[0][0], batches, **arguments).grow().splits
        return
    # refused when the grower is made, not at its first stage after epochs of training
    with pytest.raises(GraphError, match=rf"no layer of \w+ can grow \({message}.*describe\(\) lists"):
        Grower(model, batches[0][0], batches, **arguments)


def test_sync_batch_norm_grows_as_batch_norm_does():
    """DDP training converts BatchNorm to SyncBatchNorm; in eval mode (the statistics') it is the same map."""
    torch.manual_seed(0)
    plain, batches = _CNN().double(), _cnn_batches()
    with torch.no_grad():
        plain.norm.running_var.uniform_(0.5, 1.5)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(plain))
    stages = [_grower(model, batches).grow() for model in (plain, synced)]
    assert stages[0].splits == stages[1].splits and stages[0].splits
    assert synced.norm.num_features == plain.norm.num_features == plain.conv.out_channels
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(synced.state_dict()[name], tensor, rtol=0, atol=0)


def test_a_grown_model_saves_and_loads_as_a_state_dict_into_a_fresh_model_and_as_a_whole():
    torch.manual_seed(0)
    model, batches = _CNN().double().to(memory_format=torch.channels_last), _cnn_batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, optimizer, batches)
    _grower(model, batches, optimizer).grow()
    _train(model, optimizer, batches)
    model.eval()
    x = batches[0][0]
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    fresh = _CNN().double()
    assert resize_like(fresh, saved["model"]) == ["conv2", "norm2", "head"]  # count=2 split conv2 twice
    fresh.load_state_dict(saved["model"])
    fresh.eval()
    assert (fresh.conv2.out_channels, fresh.norm2.num_features, fresh.head.in_features) == (6, 6, 24)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=1e-14)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.9)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    assert all(fresh_optimizer.state[p]["momentum_buffer"].shape == p.shape for p in fresh.parameters())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    whole = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    with torch.no_grad():
        assert torch.equal(whole(x), model(x)) and whole.conv2.out_channels == 6


@pytest.mark.parametrize("setup", ["adamw-sequential", "fused-adam-chained"])
def test_a_resumed_fit_with_param_groups_a_scheduler_a_grad_scaler_and_numpy_metrics_is_exact(tmp_path, setup):
    def run(stop=None, resume=False, name="run.pt"):
        torch.manual_seed(0)
        model, batches = _MLP().double(), _mlp_batches()
        if setup == "adamw-sequential":
            groups = [{"params": model.fc.parameters(), "lr": 0.02, "weight_decay": 0.1}]
            groups.append({"params": [*model.fc2.parameters(), *model.head.parameters()]})
            optimizer = torch.optim.AdamW(groups, lr=0.01, foreach=True)
        else:
            optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)

        def factory(optimizer, epochs):
            if setup == "adamw-sequential":
                warm_up = lr_scheduler.LinearLR(optimizer, 0.5, total_iters=1)
                return lr_scheduler.SequentialLR(optimizer, [warm_up, lr_scheduler.ExponentialLR(optimizer, 0.9)], [1])
            decays = [
                lr_scheduler.ConstantLR(optimizer, 0.5, total_iters=1),
                lr_scheduler.ExponentialLR(optimizer, 0.9),
            ]
            return lr_scheduler.ChainedScheduler(decays)

        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3)
        order = torch.Generator().manual_seed(3)
        grower = _grower(model, batches, optimizer, first=1, every=2, count=1, max_stages=2)

        def train_epoch(epoch):
            _train(model, optimizer, [batches[i] for i in torch.randperm(4, generator=order).tolist()], scaler)

        def evaluate():
            with torch.no_grad():  # a NumPy scalar, as many evaluation loops return
                return {"loss": np.float64(F.cross_entropy(model(batches[0][0]), batches[0][1]))}

        def stop_after(epoch):
            if stop is not None and epoch + 1 == stop:
                raise KeyboardInterrupt

        def get_state():
            return {"order": order.get_state(), "scaler": scaler.state_dict()}

        def set_state(state):
            order.set_state(state["order"])
            scaler.load_state_dict(state["scaler"])

        try:
            grower.fit(
                train_epoch,
                5,
                evaluate=evaluate,
                scheduler_factory=factory,
                checkpoint=tmp_path / name,
                resume=resume,
                on_epoch_end=stop_after,
                extra_state=(get_state, set_state),
            )
        except KeyboardInterrupt:
            return None
        return model, grower, optimizer, scaler

    whole, whole_grower, whole_optimizer, whole_scaler = run(name="whole.pt")
    assert run(stop=2) is None  # after the first stage
    resumed, grower, optimizer, scaler = run(resume=True)
    assert len(grower.history) == 2 and grower.metrics == whole_grower.metrics
    assert type(grower.metrics[0]["loss"]) is float and scaler.get_scale() == whole_scaler.get_scale()
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in whole_optimizer.param_groups]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_metric_that_is_not_a_number_is_a_config_error_naming_it():
    from splitgrow.errors import ConfigError

    model, batches = _MLP().double(), _mlp_batches()
    grower = _grower(model, batches, every=None, plateau_patience=2)
    with pytest.raises(ConfigError, match=r"metric 'curve' is not a single number \(list\)"):
        grower.epoch_end({"loss": 1.0, "curve": [1.0, 0.5]})
    grower.epoch_end({"loss": torch.tensor(0.5), "accuracy": np.float32(0.25)})
    assert grower.metrics[-1] == {"loss": 0.5, "accuracy": 0.25}


def test_statistics_tracing_and_measurements_give_every_module_its_own_mode_back():
    """Fine-tuning keeps a BatchNorm frozen in eval mode inside a model in training mode: a growth stage (tracing,
    statistics, the measured loss, FLOPs) evaluates the model and must not switch that BatchNorm back to training
    (``model.train(was_training)`` would), nor leave the rest in eval mode."""
    torch.manual_seed(0)
    model, batches = _CNN().double(), _cnn_batches()
    model.train()
    model.norm.eval()
    _grower(model, batches).grow()
    model_flops(model, batches[0][0])
    assert not model.norm.training
    assert all(module.training for name, module in model.named_modules() if name != "norm")
