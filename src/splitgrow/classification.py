"""Training and evaluation of image classifiers, as the paper's protocol does it.

SGD with Nesterov momentum and weight decay; the learning rate divided by 10 at 50% and 75% of a training phase's
epochs; cross-entropy loss. Network slimming's sparsity (an L1 penalty on BatchNorm scales) is applied as its
subgradient after each backward pass, as in Liu et al. (2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DivergenceError
from .modes import evaluating


def make_optimizer(
    model: nn.Module, learning_rate: float, *, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=learning_rate, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
    )


def make_scheduler(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.MultiStepLR:
    """Divide the learning rate by 10 at 50% and 75% of ``epochs`` (stepped once per epoch)."""
    milestones = sorted({max(1, epochs // 2), max(1, (3 * epochs) // 4)})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def restart_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    """Set every group's learning rate (and its scheduler base) back to ``learning_rate`` for a new phase."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
        group["initial_lr"] = learning_rate


def add_batch_norm_sparsity(model: nn.Module, strength: float) -> None:
    """Add the subgradient of strength * sum |gamma| over BatchNorm scales to their gradients."""
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.weight.grad is not None:
            module.weight.grad.add_(strength * torch.sign(module.weight.detach()))


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    sparsity: float = 0.0,
    on_batch: Callable[[float], None] | None = None,
    where: str = "",
    learning_rate: str = "the learning rate",
) -> float:
    """One pass of training; returns the mean training loss. Raises DivergenceError on a NaN or infinite loss,
    naming ``where`` it happened (e.g. the seed, task and epoch) and the ``learning_rate`` setting to lower."""
    model.train()
    total, count = 0.0, 0
    context = f"{where}, " if where else ""
    for index, (inputs, targets) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            if index == 0:
                raise DivergenceError(
                    f"the training loss was {value} before the epoch's first step",
                    f"{context}its first batch",
                    "the weights the epoch starts from or the data give a non-finite loss: check the "
                    f"initialisation and the data (if earlier epochs ran, lower {learning_rate})",
                )
            raise DivergenceError(
                f"the training loss became {value}", f"{context}batch {index}", f"lower {learning_rate}"
            )
        loss.backward()
        if sparsity:
            add_batch_norm_sparsity(model, sparsity)
        optimizer.step()
        total += value * inputs.shape[0]
        count += inputs.shape[0]
        if on_batch is not None:
            on_batch(value)
    return total / max(1, count)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, float]:
    """(accuracy, mean loss) in eval mode; the model's mode is restored. ``reduce`` sums the counts over the
    processes of a data-parallel run, each of which evaluated its shard of ``batches``."""
    correct, total, loss = 0, 0, 0.0
    with evaluating(model):
        for inputs, targets in batches:
            outputs = model(inputs)
            loss += float(F.cross_entropy(outputs, targets, reduction="sum"))
            correct += int((outputs.argmax(1) == targets).sum())
            total += targets.shape[0]
    if reduce is not None:
        correct, total, loss = reduce(torch.tensor([correct, total, loss], dtype=torch.float64)).tolist()
    return correct / max(1, total), loss / max(1, total)
