"""The derivative table: phi' and phi'' of every activation agree with automatic differentiation."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPE, SMOOTH_ACTIVATIONS
from torch import nn

from splitgrow.activations import (
    activation_of_module,
    available_activations,
    get_activation,
    relu_with_softplus_surrogate,
    softplus,
)


def autograd_derivatives(phi, z):
    z = z.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(phi(z).sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)
    return first.detach(), second


@pytest.mark.parametrize("name", SMOOTH_ACTIVATIONS)
def test_derivatives_match_autograd(name):
    activation = get_activation(name)
    z = torch.linspace(-6, 6, 241, dtype=DTYPE)
    first, second = autograd_derivatives(activation.phi, z)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)
    assert not activation.curvature_free


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_softplus_beta(beta):
    activation = softplus(beta)
    z = torch.linspace(-4, 4, 81, dtype=DTYPE)
    first, second = autograd_derivatives(activation.phi, z)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)


def test_curvature_free_activations_have_zero_second_derivative():
    z = torch.linspace(-3, 3, 13, dtype=DTYPE)
    for name in ["relu", "identity"]:
        activation = get_activation(name)
        assert activation.curvature_free
        assert torch.count_nonzero(activation.d2phi(z)) == 0


def test_relu_surrogate_is_explicit_and_named():
    surrogate = relu_with_softplus_surrogate(beta=4.0)
    z = torch.linspace(-2, 2, 9, dtype=DTYPE)
    torch.testing.assert_close(surrogate.phi(z), torch.relu(z))
    torch.testing.assert_close(surrogate.d2phi(z), softplus(4.0).d2phi(z))
    assert surrogate.surrogate is not None and "softplus" in surrogate.surrogate
    assert "surrogate" in surrogate.name
    assert get_activation("relu").surrogate is None


def test_activation_of_module():
    assert activation_of_module(nn.Softplus(beta=2.0)).name == "softplus(beta=2)"
    assert activation_of_module(nn.Tanh()).name == "tanh"
    assert activation_of_module(nn.ReLU()).curvature_free
    with pytest.raises(ValueError, match="LeakyReLU"):
        activation_of_module(nn.LeakyReLU())
    with pytest.raises(ValueError, match="approximate"):
        activation_of_module(nn.GELU(approximate="tanh"))


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match="known: .*softplus"):
        get_activation("swishy")
    assert set(SMOOTH_ACTIVATIONS) <= set(available_activations())
