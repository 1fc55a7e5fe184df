"""The growth loop inside real training setups: kept loss graphs, several optimisers, averaged models, autocast,
plateau schedulers and the length of each phase's scheduler, exactly resumed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

from splitgrow.errors import ConfigError, SplitgrowError
from splitgrow.growth import Grower, GrowthPolicy


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.Softplus()
        self.fc2 = nn.Linear(3, 3)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act(self.fc(x)))))


def _batches(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator, dtype=dtype)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


def _quiet_trainer(lightning, tmp_path, epochs: int, callbacks: list, *, checkpoints: bool = True):
    """A CPU Trainer without logger, progress bar or summary; ``checkpoints`` adds one that keeps ``last.ckpt``."""
    if checkpoints:
        callbacks = [*callbacks, lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)]
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=checkpoints,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def _grower(model, batches, optimizer, policy=None, **options) -> Grower:
    policy = policy or GrowthPolicy(first=1, every=1, count=1, max_stages=2, epsilon=0.05)
    return Grower(
        model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy, optimizer=optimizer, **options
    )


def test_a_loss_kept_from_the_last_step_does_not_break_the_next_backward():
    # the loop's last `loss` keeps autograd's per-parameter accumulators (with the old shapes) alive across the split
    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grower = _grower(model, batches, optimizer)
    for _ in range(3):
        for x, y in batches:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        grower.epoch_end()
    assert len(grower.history) == 2
    x, y = batches[0]
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_every_optimiser_of_the_model_has_its_state_carried():
    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    first = torch.optim.SGD(model.fc.parameters(), lr=0.1, momentum=0.9)
    rest = torch.optim.Adam([*model.fc2.parameters(), *model.head.parameters()], lr=0.01)
    grower = _grower(model, batches, [first, rest])
    for x, y in batches:
        first.zero_grad(), rest.zero_grad()
        F.cross_entropy(model(x), y).backward()
        first.step(), rest.step()
    before = rest.state[model.fc2.weight]["exp_avg"].clone()
    stage = grower.grow()
    (channel,) = [split["channel"] for split in stage.splits if split["site"] == "fc"]
    carried = rest.state[model.fc2.weight]["exp_avg"]  # fc2 consumes fc: its columns are duplicated, state unchanged
    assert carried.shape == model.fc2.weight.shape
    torch.testing.assert_close(carried[:, channel + 1], before[:, channel], rtol=0, atol=0)
    first.step(), rest.step()  # no gradients yet: a no-op, but each optimiser's state must fit


def test_an_averaged_model_is_split_alongside_and_keeps_averaging():
    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    policy = GrowthPolicy(first=1, every=1, count=1, max_stages=1, epsilon=0.0)
    grower = _grower(model, batches, optimizer, policy, averaged_models=[ema])
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        ema.update_parameters(model)
    x = batches[0][0]
    with torch.no_grad():
        before = ema(x)
    assert grower.epoch_end() is not None
    assert ema.module.fc.weight.shape == model.fc.weight.shape == (4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ema(x), before, rtol=1e-12, atol=1e-12)  # eps = 0: the same function
    ema.update_parameters(model)  # the next update sees the grown shapes
    assert int(ema.n_averaged) == len(batches) + 1


def test_a_stage_whose_averaged_copy_cannot_split_leaves_the_model_and_its_copy_as_they_were():
    """A stage's splits are one change: when the copy's split fails after the model's, both are undone."""
    from splitgrow.graph import GraphError

    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    grower = _grower(model, batches, optimizer, GrowthPolicy(first=1, every=1, count=1), averaged_models=[ema])
    x, y = batches[0]
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    momenta = {name: optimizer.state[p]["momentum_buffer"].clone() for name, p in model.named_parameters()}
    shapes = {name: tuple(tensor.shape) for name, tensor in ema.module.state_dict().items()}

    def width_check(module, _inputs, _output):  # a check on the copy alone, which the trace cannot see
        if any(tuple(p.shape) != shapes[n] for n, p in ema.module.named_parameters()):
            raise RuntimeError("the averaged copy changed width")

    hook = ema.module.register_forward_hook(width_check)
    with pytest.raises(GraphError, match="the averaged copy changed width"):
        grower.epoch_end()
    assert grower.history == [] and {n: tuple(t.shape) for n, t in ema.module.state_dict().items()} == shapes
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in state.items())
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], momenta[n]) for n, p in model.named_parameters())
    hook.remove()
    assert grower.epoch_end() is not None and model.fc.weight.shape == ema.module.fc.weight.shape  # grows again


def test_an_averaged_model_of_other_shapes_is_refused_before_anything_changes():
    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    stranger = torch.optim.swa_utils.AveragedModel(nn.Sequential(nn.Linear(4, 2)).double())
    grower = _grower(model, batches, None, averaged_models=[stranger])
    message = r"averaged_models\[0\] \(AveragedModel\) does not have the parameters .* of the model or of one of its"
    with pytest.raises(SplitgrowError, match=message):
        grower.grow()
    assert model.fc.out_features == 3


def test_a_stage_inside_autocast_computes_in_the_models_own_dtype():
    torch.manual_seed(0)
    model, batches = _Net(), _batches(torch.float32)
    twin = copy.deepcopy(model)
    plain = _grower(model, batches, None).grow()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = _grower(twin, batches, None).grow()
    assert inside.loss_before == plain.loss_before and inside.loss_after == plain.loss_after
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def _fit(tmp_path, factory, policy, epochs, *, stop=None, resume=False, name="run.pt", losses=None):
    torch.manual_seed(0)
    model, batches = _Net().double(), _batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grower = _grower(model, batches, optimizer, policy)
    generator = torch.Generator().manual_seed(3)

    def train_epoch(epoch):
        for index in torch.randperm(len(batches), generator=generator).tolist():
            x, y = batches[index]
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    def evaluate():
        with torch.no_grad():
            return {"loss": losses[grower.epoch] if losses else 1.0}

    class Stop(Exception):
        pass

    def maybe_stop(epoch):
        if stop is not None and epoch + 1 == stop:
            raise Stop

    try:
        grower.fit(
            train_epoch,
            epochs,
            evaluate=evaluate,
            scheduler_factory=factory,
            checkpoint=tmp_path / name,
            resume=resume,
            on_epoch_end=maybe_stop,
            extra_state=(generator.get_state, generator.set_state),
        )
    except Stop:
        return None
    return model, grower, optimizer


def test_a_resumed_plateau_schedule_makes_the_same_scheduler(tmp_path):
    # the phase length a factory gets is checkpointed: a resumed run made LambdaLR(n=1) instead of n = epochs left
    policy = GrowthPolicy(first=1, every=None, plateau_patience=1, count=1, max_stages=2, epsilon=0.05)

    def factory(optimizer, epochs):
        return lr_scheduler.LambdaLR(optimizer, lambda epoch: 1 - epoch / (epochs + 1))

    whole, _, _ = _fit(tmp_path, factory, policy, 6, name="whole.pt")
    assert _fit(tmp_path, factory, policy, 6, stop=4) is None
    resumed, grower, _ = _fit(tmp_path, factory, policy, 6, resume=True)
    assert len(grower.history) == 2
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_last_phase_scheduler_spans_every_epoch_left(tmp_path):
    lengths = []

    def factory(optimizer, epochs):
        lengths.append(epochs)
        return lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs)  # refuses a step beyond its length

    policy = GrowthPolicy(first=2, every=2, count=1, max_stages=2, epsilon=0.05)
    _, grower, _ = _fit(tmp_path, factory, policy, 7)
    assert [stage.epoch for stage in grower.history] == [2, 4] and lengths == [2, 2, 3]


def test_a_plateau_scheduler_steps_on_the_monitored_metric(tmp_path):
    policy = GrowthPolicy(first=1, every=1, count=1, max_stages=1, epsilon=0.05)
    losses = [1.0, 0.5, 0.5, 0.5]  # no improvement after epoch 2: patience 0 cuts the rate at each of epochs 3, 4

    def factory(optimizer, epochs):
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)

    _, _, optimizer = _fit(tmp_path, factory, policy, 4, losses=losses)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    wrong = GrowthPolicy(first=1, every=1, count=1, max_stages=1, monitor="val_loss")
    with pytest.raises(SplitgrowError, match="policy.monitor = 'val_loss'.*they have: loss"):
        _fit(tmp_path, factory, wrong, 2, name="wrong.pt")


def test_lightning_grows_with_two_optimisers(tmp_path):
    lightning = pytest.importorskip("lightning")
    from splitgrow.growth.lightning import GrowthCallback

    class TwoOptimisers(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.fc, self.act, self.head = nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.act(self.fc(x)))

        def training_step(self, batch, index):
            x, y = batch
            first, second = self.optimizers()
            first.zero_grad(), second.zero_grad()
            self.manual_backward(F.cross_entropy(self(x), y))
            first.step(), second.step()

        def configure_optimizers(self):
            return [torch.optim.Adam(self.fc.parameters(), lr=0.05), torch.optim.Adam(self.head.parameters())]

    torch.manual_seed(0)
    x, y = _batches(torch.float32)[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    policy = GrowthPolicy(first=1, every=1, count=1, epsilon=0.05)
    callback = GrowthCallback(x[:2], policy=policy, loss_function=F.cross_entropy)
    module = TwoOptimisers()
    trainer = _quiet_trainer(lightning, tmp_path, 3, [callback], checkpoints=False)
    trainer.fit(module, loader)
    assert len(callback.history) == 3 and module.head.in_features == 6
    assert trainer.optimizers[1].state[module.head.weight]["exp_avg"].shape == (2, 6)


def test_a_resumed_fit_restores_the_grown_averaged_model(tmp_path):
    def run(stop=None, resume=False, name="ema.pt"):
        torch.manual_seed(0)
        model, batches = _Net().double(), _batches()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
        policy = GrowthPolicy(first=1, every=2, count=1, max_stages=2, epsilon=0.05)
        grower = _grower(model, batches, optimizer, policy, averaged_models=[ema])

        def train_epoch(epoch):
            for x, y in batches:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                ema.update_parameters(model)

        def maybe_stop(epoch):
            if stop is not None and epoch + 1 == stop:
                raise KeyboardInterrupt

        try:
            grower.fit(train_epoch, 5, checkpoint=tmp_path / name, resume=resume, on_epoch_end=maybe_stop)
        except KeyboardInterrupt:
            return None
        return ema

    whole = run(name="whole.pt")
    assert run(stop=3) is None  # after the second stage's epoch: the checkpoint holds a grown average
    resumed = run(resume=True)
    assert resumed.module.fc.out_features + resumed.module.fc2.out_features == 3 + 3 + 2  # two stages of one split
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_lightning_splits_the_average_of_a_weight_averaging_callback_and_resumes(tmp_path):
    lightning = pytest.importorskip("lightning")
    callbacks = pytest.importorskip("lightning.pytorch.callbacks")
    if not hasattr(callbacks, "EMAWeightAveraging"):
        pytest.skip("EMAWeightAveraging needs lightning >= 2.6")
    from splitgrow.growth.lightning import GrowthCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.act, self.head = nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.act(self.fc(x)))

        def training_step(self, batch, index):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    x, y = _batches(torch.float32)[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def fit(epochs, checkpoint=None):
        torch.manual_seed(0)
        policy = GrowthPolicy(first=1, every=1, count=1, epsilon=0.05)
        growth = GrowthCallback(x[:2], policy=policy, loss_function=F.cross_entropy)
        average = callbacks.EMAWeightAveraging(decay=0.9)
        module = Module()
        trainer = _quiet_trainer(lightning, tmp_path, epochs, [average, growth])
        trainer.fit(module, loader, ckpt_path=checkpoint)
        return module, average._average_model.module

    module, average = fit(2)
    assert average.fc.weight.shape == module.fc.weight.shape == (5, 4)
    module, average = fit(3, tmp_path / "last.ckpt")  # the checkpoint's average has the grown shapes too
    assert average.fc.weight.shape == module.fc.weight.shape == (6, 4)


class _Outer(nn.Module):
    """A body whose average is kept, and a head outside it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh())
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_an_average_of_a_module_follows_the_splits_inside_it_and_refuses_one_that_reaches_outside():
    torch.manual_seed(0)
    batches = _batches()
    policy = GrowthPolicy(count=1, epsilon=0.05)
    model = _Outer().double()
    average = torch.optim.swa_utils.AveragedModel(model.body)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy,
                    averaged_models=[average], exclude=["body.2"])  # fmt: skip
    (split,) = grower.grow().splits
    assert split["site"] == "body.0" and average.module[0].weight.shape == model.body[0].weight.shape == (4, 4)
    assert average.module[2].weight.shape == (3, 4)  # the consumer inside the body grew too
    model = _Outer().double()
    average = torch.optim.swa_utils.AveragedModel(model.body)
    grower = Grower(model, batches[0][0], batches, policy=policy, loss_function=F.cross_entropy,
                    averaged_models=[average], exclude=["body.0"])  # fmt: skip
    with pytest.raises(SplitgrowError, match=r"a split of 'body.2' changes 'head', outside 'body', of which an aver"):
        grower.grow()
    assert model.body[2].weight.shape == average.module[2].weight.shape == (3, 3)  # nothing changed


def test_lightning_splits_a_modules_own_averaged_copy_and_resumes(tmp_path):
    """An EMA the LightningModule keeps itself (torch's AveragedModel, updated after every batch) is named to the
    callback: it grows with the module, keeps averaging, and a resumed run restores it with the grown shapes."""
    lightning = pytest.importorskip("lightning")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from splitgrow.growth.lightning import GrowthCallback

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(0.5), use_buffers=True)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, index):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def on_train_batch_end(self, outputs, batch, index):
            self.ema.update_parameters(self.net)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    x, y = _batches(torch.float32)[0]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)

    def fit(epochs, checkpoint=None):
        torch.manual_seed(0)
        policy = GrowthPolicy(first=1, every=1, count=1, epsilon=0.05)
        growth = GrowthCallback(
            x[:2], policy=policy, loss_function=F.cross_entropy, averaged_models=lambda module: [module.ema]
        )
        module = Module()
        trainer = _quiet_trainer(lightning, tmp_path, epochs, [growth])
        trainer.fit(module, loader, ckpt_path=checkpoint)
        return module

    module = fit(2)
    assert module.ema.module[0].weight.shape == module.net[0].weight.shape == (5, 4)
    assert module.ema.module[2].weight.shape == (2, 5)
    assert not torch.equal(module.ema.module[0].weight, module.net[0].weight)  # it averaged after the splits too
    module = fit(3, tmp_path / "last.ckpt")
    assert module.ema.module[0].weight.shape == module.net[0].weight.shape == (6, 4)


def test_a_generator_of_batches_is_refused_before_a_stage_uses_it_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    batches = ((x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4))
    with pytest.raises(ConfigError, match="iterator .*generator.*a list, a DataLoader"):
        Grower(model, x, batches, policy=GrowthPolicy(count=1), loss_function=F.cross_entropy)
    grower = Grower(model, x, [(x, y)], policy=GrowthPolicy(count=1), loss_function=F.cross_entropy)
    with pytest.raises(ConfigError, match="iterator"):
        grower.statistics_data = iter([(x, y)])
