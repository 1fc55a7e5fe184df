"""Helpers for the deep-network tests: zoo models in float64 with non-trivial BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn

from splitgrow.models import build_model, uniform_widths


def randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm running statistics and affine parameters away from (0, 1), so that the fold of
    eval-mode BatchNorm into the splitting matrix is really exercised."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            dtype = module.running_mean.dtype
            module.running_mean.copy_(torch.rand(n, generator=generator, dtype=dtype) - 0.5)
            module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator, dtype=dtype))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=generator, dtype=dtype))
            module.bias.data.copy_(torch.rand(n, generator=generator, dtype=dtype) - 0.5)


def zoo_model(architecture: str, width: int = 4, *, seed: int = 0, dtype: torch.dtype = torch.float64):
    """A tiny zoo model in eval mode, with a batch of inputs and integer targets."""
    torch.manual_seed(seed)
    model = build_model(architecture, **uniform_widths(architecture, width)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomise_batch_norms(model, generator)
    model.eval()
    inputs = model.example_input(12).to(dtype)
    targets = torch.randint(0, model.config()["num_classes"], (12,), generator=generator)
    return model, inputs, targets
