"""README's "Grow your own model" snippet runs, and grows the model the way it says.

The code between the markers is the snippet of the README section (kept identical to it)."""

from __future__ import annotations

import pytest
import torch


def test_the_grow_your_own_model_snippet_grows_inside_a_plain_training_loop():
    # --- README snippet: begin
    import torch.nn.functional as F
    from torch import nn

    from splitgrow.growth import Grower, GrowthPolicy

    torch.manual_seed(0)
    inputs, targets = torch.randn(256, 8), torch.randint(0, 3, (256,))
    batches = [(inputs[i : i + 32], targets[i : i + 32]) for i in range(0, 256, 32)]
    model = nn.Sequential(nn.Linear(8, 4), nn.Softplus(), nn.Linear(4, 4), nn.Softplus(), nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    grower = Grower(
        model,
        inputs[:2],  # an example batch, to trace the model
        batches,  # the splitting statistics' data
        policy=GrowthPolicy(first=2, every=2, count=2, max_stages=2),  # split 2 neurons every 2 epochs, twice
        loss_function=F.cross_entropy,
        optimizer=optimizer,  # its state is carried across every split
    )
    for epoch in range(6):
        for x, y in batches:  # your training loop, unchanged
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        stage = grower.epoch_end()  # grows when the policy says so
        if stage is not None:
            print(f"epoch {epoch}: widths {stage.widths_after}, predicted loss change {stage.predicted_change:.2e}")
    # --- README snippet: end

    first, second = grower.history
    assert (first.epoch, second.epoch) == (2, 4)  # every 2 epochs, then max_stages
    # 2 splits per stage, each one more neuron
    assert sum(first.widths_after.values()) == sum(first.widths_before.values()) + 2
    assert sum(second.widths_after.values()) == sum(first.widths_after.values()) + 2
    assert model[0].out_features + model[2].out_features == 12
    # the optimiser trains the grown parameters, with its momentum carried across the splits
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in model.parameters())
    assert all("momentum_buffer" in optimizer.state[p] for p in model.parameters())
    # the prediction is eps^2/2 times the sum of the split neurons' indexes, each below 0
    indexes = [split["index"] for split in second.splits]
    assert all(index < 0 for index in indexes)
    assert second.predicted_change == pytest.approx(0.01**2 / 2 * sum(indexes), rel=1e-6)
