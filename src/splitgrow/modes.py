"""Running a model in eval mode for a while, then giving every module back its own mode.

``model.eval()`` then ``model.train(was_training)`` is not a round trip: ``train(True)`` also switches the modules
the user keeps in eval mode (a frozen BatchNorm while fine-tuning) back to training. splitgrow evaluates the model
for its statistics, traces and measurements, so it restores each module's own flag instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module has the mode it had before."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
