"""Helpers for the deep-network tests: zoo models in float64 with non-trivial BatchNorm statistics."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from splitgrow.graph import ChannelGraph
from splitgrow.models import build_model, uniform_widths
from splitgrow.surgery import SplitRequest, split_network


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


def loss_of(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cross_entropy(model(inputs), targets))


def split_hessian(model, graph, site_name, channel, inputs, targets) -> torch.Tensor:
    """The Hessian in delta (d,) of the loss of the network whose neuron ``channel`` is split into theta + delta and
    theta - delta (offspring output weights halved), at delta = 0, by autograd on the whole network."""
    grown = copy.deepcopy(model)
    report = split_network(grown, ChannelGraph(grown, inputs), [SplitRequest(site_name, channel)], 0.0)
    site = graph.sites[site_name]
    modules = dict(grown.named_modules())
    base = {name: p.detach() for name, p in grown.named_parameters()}

    def loss(delta: torch.Tensor) -> torch.Tensor:
        parameters = dict(base)
        for (member, columns), (module_name, plus, minus) in zip(site.member_slices(), report.offspring[0]):
            module = modules[module_name]
            rows = member.handler.parameters_from_theta(module, delta[columns].unsqueeze(0))
            dims = dict(member.handler.output_tensors(module))  # a transposed convolution's neurons are dim 1
            for attribute, rows_of in rows.items():  # in the module's layout, the one row along its neurons' dim
                dim = dims.get(attribute, 0)
                row = rows_of.movedim(dim, 0)[0]
                key = f"{module_name}.{attribute}" if module_name else attribute
                shift = torch.zeros_like(parameters[key])
                along = shift.movedim(dim, 0)  # a view: writing it writes shift
                along[plus] = row
                along[minus] = -row
                parameters[key] = parameters[key] + shift
        return F.cross_entropy(functional_call(grown, parameters, (inputs,)), targets)

    return torch.autograd.functional.hessian(loss, torch.zeros(site.neuron_dim, dtype=torch.float64), vectorize=True)


# ---------------------------------------------------------------------------------------- models users bring


def logits_of(outputs: torch.Tensor | tuple | dict) -> torch.Tensor:
    """The logits of a tensor, an HF-style dict (its first value) or a tuple (its first entry)."""
    if isinstance(outputs, dict):
        return next(iter(outputs.values()))
    return outputs[0] if isinstance(outputs, tuple) else outputs


def classification_loss(outputs: torch.Tensor | tuple | dict, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits_of(outputs), targets)


def run_model(model: nn.Module, inputs: torch.Tensor | tuple) -> torch.Tensor:
    """The logits of ``model`` on one input or a tuple of positional inputs."""
    return logits_of(model(*inputs) if isinstance(inputs, tuple) else model(inputs))


def split_copy(model: nn.Module, inputs, request: SplitRequest, epsilon: float, **options) -> nn.Module:
    """A copy of ``model`` with ``request`` split at step ``epsilon``."""
    from splitgrow import SplittableNetwork

    twin = copy.deepcopy(model)
    SplittableNetwork(twin, inputs, **options).split([request], epsilon)
    return twin


def assert_exact_splits(
    model: nn.Module,
    inputs,
    targets: torch.Tensor,
    sites: list[str],
    *,
    loss_function=F.cross_entropy,
    allow_kinks: bool = False,
    index_below: float = 0.0,
) -> None:
    """For the most negative index of every listed site (the model in float64, eval mode; one input or a tuple of
    them; tensor, tuple or dict outputs, scored by ``loss_function`` of their logits): a split with eps = 0 keeps the
    outputs, and the loss changes by eps^2/2 * index to second order (the same ratio at two step sizes). A site with
    kinks (max pooling, Hardswish) passes only with ``allow_kinks``, checked at a third, smaller step too: an input
    within 1e-3 of a kink is crossed by the largest one. Every index checked must lie below ``index_below``."""
    import pytest

    from splitgrow import SplittableNetwork

    model = model.double().eval()
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], lambda outputs, labels: loss_function(logits_of(outputs), labels))
    with torch.no_grad():
        outputs = run_model(model, inputs)
        loss = float(loss_function(outputs, targets))
    for name in sites:
        site = net.sites[name]
        assert site.splittable and site.exact and (allow_kinks or not site.kinks), (
            name,
            site.reason,
            site.inexact_reason,
        )
        channel = int(results[name].indexes.argmin())
        index = float(results[name].indexes[channel])
        assert index < index_below, (name, index)
        request = SplitRequest(name, channel, results[name].directions[channel], index)
        with torch.no_grad():
            same = run_model(split_copy(model, inputs, request, 0.0), inputs)
        torch.testing.assert_close(same, outputs, rtol=0, atol=1e-12)
        ratios = {}
        for epsilon in (1e-3, 1e-4, 1e-5) if site.kinks else (1e-3, 1e-4):
            with torch.no_grad():
                measured = float(loss_function(run_model(split_copy(model, inputs, request, epsilon), inputs), targets))
            ratios[epsilon] = (measured - loss) / (0.5 * epsilon**2 * index)
        # a kink as close as 1e-3 to some input (a ReLU's) is crossed by the largest step: two steps must agree
        agreeing = [epsilon for epsilon, ratio in ratios.items() if ratio == pytest.approx(1.0, abs=1e-2)]
        assert 1e-4 in agreeing and len(agreeing) >= 2, (name, ratios)
