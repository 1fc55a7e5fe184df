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
