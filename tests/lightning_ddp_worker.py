"""One process of the Lightning DDP test: ``python tests/lightning_ddp_worker.py OUT`` starts two CPU processes
(Lightning's own launcher runs this script again for the second) that grow a float64 module inside ``Trainer.fit``;
each writes ``OUT/rank<r>.pt`` with its final weights, its growth history and its weights just before the first
split."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F
from torch import nn

from splitgrow.growth import GrowthPolicy
from splitgrow.growth.lightning import GrowthCallback

EXAMPLES = 128


class Module(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 4)
        self.act = nn.Tanh()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc(x)))

    def training_step(self, batch, index):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def dataset() -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(EXAMPLES, 3, generator=generator, dtype=torch.float64)
    return torch.utils.data.TensorDataset(x, (x[:, 0] * x[:, 1] > 0).long())


class Snapshot(lightning.pytorch.callbacks.Callback):
    """The weights at the end of the first epoch, before the growth callback (after it in the list) splits."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_epoch_end(self, trainer, module) -> None:
        if self.state is None:
            self.state = copy.deepcopy(module.state_dict())


def main(out: Path) -> None:
    policy = GrowthPolicy(first=1, every=1, count=1, epsilon=0.05, statistics_batches=None)
    growth = GrowthCallback(torch.randn(2, 3, dtype=torch.float64), policy=policy, loss_function=F.cross_entropy)
    snapshot = Snapshot()
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        precision="64-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[snapshot, growth],
    )
    module = Module()
    trainer.fit(module, torch.utils.data.DataLoader(dataset(), batch_size=16))
    record = {"state": module.state_dict(), "history": [stage.to_dict() for stage in growth.history]}
    torch.save({**record, "snapshot": snapshot.state}, out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
