"""The activation table: phi' and phi'' of every activation against automatic differentiation, kinks, surrogates,
and the lookup by module, function and method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DTYPE, SMOOTH_ACTIVATIONS
from torch import nn

from splitgrow.activations import (
    available_activations,
    gelu,
    get_activation,
    relu_with_softplus_surrogate,
    softplus,
    with_kink_surrogate,
)
from splitgrow.layers import activation_of_call, activation_of_module, register_activation


def autograd_derivatives(phi, z):
    z = z.clone().requires_grad_(True)
    (first,) = torch.autograd.grad(phi(z).sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)
    return first.detach(), second


SMOOTH_MODULES = [
    nn.Softplus(beta=2.0),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.SiLU(),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.ELU(alpha=1.0),
    nn.Mish(),
]


@pytest.mark.parametrize("name", SMOOTH_ACTIVATIONS + ["mish", "elu"])
def test_derivatives_match_autograd(name):
    activation = get_activation(name)
    z = torch.linspace(-6, 6, 241, dtype=DTYPE)
    z = z[z.abs() > 1e-9]  # ELU's phi'' jumps at 0
    first, second = autograd_derivatives(activation.phi, z)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)
    assert not activation.curvature_free and activation.exact


@pytest.mark.parametrize("module", SMOOTH_MODULES, ids=lambda m: repr(m))
def test_modules_compute_what_their_table_says(module):
    activation = activation_of_module(module)
    z = torch.linspace(-5, 5, 101, dtype=DTYPE)
    z = z[z.abs() > 1e-9]
    torch.testing.assert_close(activation.phi(z), module(z), rtol=1e-14, atol=1e-14)
    first, second = autograd_derivatives(module, z)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)


def test_the_tanh_gelu_is_gpt2s():
    z = torch.linspace(-4, 4, 81, dtype=DTYPE)
    activation = gelu("tanh")
    expected = 0.5 * z * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (z + 0.044715 * z**3)))
    torch.testing.assert_close(activation.phi(z), expected)
    assert activation.name == "gelu(tanh)"


@pytest.mark.parametrize("threshold", [1.0, 5.0])
def test_softplus_respects_its_threshold_and_records_the_kink(threshold):
    module = nn.Softplus(beta=2.0, threshold=threshold)
    activation = activation_of_module(module)
    z = torch.linspace(-3, 3, 121, dtype=DTYPE)
    z = z[(2 * z - threshold).abs() > 1e-6]
    torch.testing.assert_close(activation.phi(z), module(z))
    first, second = autograd_derivatives(module, z)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)  # 0 above the threshold
    assert not activation.exact and "jumps by" in activation.inexact_reason
    assert activation_of_module(nn.Softplus()).exact  # the default threshold's jump is 2e-9


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_softplus_beta(beta):
    activation = softplus(beta)
    z = torch.linspace(-4, 4, 81, dtype=DTYPE)
    first, second = autograd_derivatives(activation.phi, z)
    torch.testing.assert_close(activation.d2phi(z), second, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(activation.dphi(z), first, rtol=1e-12, atol=1e-12)


def test_curvature_free_activations_have_zero_second_derivative_and_their_kinks():
    z = torch.linspace(-3, 3, 13, dtype=DTYPE)
    for module, kinks in [
        (nn.ReLU(), ((0.0, 1.0),)),
        (nn.ReLU6(), ((0.0, 1.0), (6.0, -1.0))),
        (nn.LeakyReLU(0.1), ((0.0, 0.9),)),
        (nn.Hardtanh(), ((-1.0, 1.0), (1.0, -1.0))),
    ]:
        activation = activation_of_module(module)
        assert activation.curvature_free and activation.kinks == kinks
        assert torch.count_nonzero(activation.d2phi(z)) == 0
        torch.testing.assert_close(activation.phi(z), module(z))


def test_kink_surrogates_are_explicit_named_and_carry_each_kinks_jump():
    surrogate = relu_with_softplus_surrogate(beta=4.0)
    z = torch.linspace(-2, 2, 9, dtype=DTYPE)
    torch.testing.assert_close(surrogate.phi(z), torch.relu(z))
    torch.testing.assert_close(surrogate.d2phi(z), softplus(4.0).d2phi(z))
    assert surrogate.surrogate is not None and "softplus" in surrogate.surrogate and "surrogate" in surrogate.name
    assert get_activation("relu").surrogate is None
    relu6 = with_kink_surrogate(activation_of_module(nn.ReLU6()), 4.0)
    fine = torch.linspace(-20, 26, 46001, dtype=DTYPE)
    mass = torch.trapezoid(relu6.d2phi(fine), fine)  # +1 at 0, -1 at 6
    assert float(mass) == pytest.approx(0.0, abs=1e-9)
    assert float(torch.trapezoid(relu6.d2phi(fine[fine < 3]), fine[fine < 3])) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="no kink"):
        with_kink_surrogate(get_activation("tanh"))


def test_functions_and_methods_are_looked_up_with_their_arguments():
    assert activation_of_call("call_function", F.gelu, (None,), {"approximate": "tanh"}).name == "gelu(tanh)"
    assert activation_of_call("call_function", F.softplus, (None, 2.0), {}).name == "softplus(beta=2)"
    assert activation_of_call("call_function", F.leaky_relu, (None,), {"negative_slope": 0.2}).kinks == ((0.0, 0.8),)
    assert activation_of_call("call_method", "sigmoid", (None,), {}).name == "sigmoid"
    assert activation_of_call("call_function", torch.matmul, (None, None), {}) is None
    assert activation_of_module(nn.LayerNorm(3)) is None


def test_users_register_their_own_activation_module():
    class Cube(nn.Module):
        def forward(self, x):
            return x**3

    assert activation_of_module(Cube()) is None
    from splitgrow.activations import Activation

    register_activation(Cube, lambda module: Activation("cube", lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z))
    assert activation_of_module(Cube()).name == "cube"
    # the graph keeps the registered module as one call and uses its formulas, instead of tracing into forward
    from splitgrow import ChannelGraph

    graph = ChannelGraph(nn.Sequential(nn.Linear(3, 4), Cube(), nn.Linear(4, 2)), torch.randn(2, 3))
    assert graph.sites["0"].activation.name == "cube"


def test_unknown_activation_lists_known_ones():
    with pytest.raises(ValueError, match="known: .*softplus"):
        get_activation("swishy")
    assert set(SMOOTH_ACTIVATIONS) <= set(available_activations())
