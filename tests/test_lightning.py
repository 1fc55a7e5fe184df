"""The Lightning callback grows a module inside Trainer.fit and resumes from a Lightning checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

lightning = pytest.importorskip("lightning")

from splitgrow.growth import GrowthPolicy  # noqa: E402
from splitgrow.growth.lightning import GrowthCallback  # noqa: E402


class _Module(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.act = nn.Tanh()
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))

    def training_step(self, batch, index):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.05)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5)}


def _loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=generator)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _trainer(tmp_path, epochs, callback):
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback, checkpoints],
    )


def test_the_callback_grows_inside_fit_and_resumes_from_a_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    policy = GrowthPolicy(first=1, every=2, count=1, epsilon=0.05)
    callback = GrowthCallback(torch.randn(2, 3), policy=policy, loss_function=F.cross_entropy)
    module = _Module()
    _trainer(tmp_path, 4, callback).fit(module, _loader())
    assert [stage.epoch for stage in callback.history] == [1, 3]
    assert module.fc.out_features == 4 and module.head.in_features == 4
    assert len(module.trainer.optimizers[0].state[module.fc.weight]["exp_avg"]) == 4  # carried, not rebuilt
    fresh = _Module()
    resumed = GrowthCallback(torch.randn(2, 3), policy=policy, loss_function=F.cross_entropy)
    _trainer(tmp_path, 6, resumed).fit(fresh, _loader(), ckpt_path=tmp_path / "last.ckpt")
    assert [stage.epoch for stage in resumed.history] == [1, 3, 5]  # the history came back with the checkpoint
    assert fresh.fc.out_features == 5


def test_two_ddp_processes_make_the_single_process_splits_and_end_with_the_same_weights(tmp_path):
    """Lightning's DDP strategy (two CPU processes, gloo): each process reads its half of the loader, yet the first
    stage's indexes are those of one process over all the data, and both processes grow identically."""
    import subprocess
    import sys
    from pathlib import Path

    from splitgrow import SplittableNetwork

    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    subprocess.run([sys.executable, str(worker), str(tmp_path)], check=True, timeout=300, capture_output=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), name
    history = ranks[0]["history"]
    assert [stage["epoch"] for stage in history] == [1, 2]
    assert ranks[0]["state"]["fc.weight"].shape == (6, 3)
    assert [stage["samples"] for stage in history] == [128.0] * 2  # both halves counted
    sys.path.insert(0, str(worker.parent))
    try:
        from lightning_ddp_worker import Module, dataset
    finally:
        sys.path.remove(str(worker.parent))
    module = Module().double()
    module.load_state_dict(ranks[0]["snapshot"])
    x, y = dataset().tensors
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]
    results = SplittableNetwork(module, x[:2]).splitting(batches, F.cross_entropy)
    (split,) = history[0]["splits"]
    assert split["index"] == pytest.approx(float(results[split["site"]].indexes[split["channel"]]), rel=1e-10)
    assert split["channel"] == int(results[split["site"]].indexes.argmin())


def test_a_strategy_that_spawns_its_processes_is_refused():
    from splitgrow.errors import SplitgrowError

    callback = GrowthCallback(torch.randn(2, 3), policy=GrowthPolicy(count=1), loss_function=F.cross_entropy)
    trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(SplitgrowError, match="strategy='ddp'"):
        callback.setup(trainer, _Module(), "fit")


def test_a_plateau_rule_on_a_metric_lightning_does_not_log_says_how_to_log_it(tmp_path):
    from splitgrow.errors import ConfigError

    policy = GrowthPolicy(plateau_patience=1, monitor="val_loss", count=1)
    callback = GrowthCallback(torch.randn(2, 3), policy=policy, loss_function=F.cross_entropy)
    with pytest.raises(
        ConfigError,
        match=r"monitors 'val_loss', which Lightning's callback_metrics do not have .*"
        r"\(they have: train_loss\): log it at every epoch \(self.log\('val_loss'",
    ):
        _trainer(tmp_path, 2, callback).fit(_Module(), _loader())
