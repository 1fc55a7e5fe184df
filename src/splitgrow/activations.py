"""Activation functions with their first and second derivatives.

The splitting matrix of a neuron phi(theta^T h) is sum c h h^T with c = g * phi''(z), so every activation a
neuron may use needs phi''. Activations whose phi'' vanishes (identity, ReLU almost everywhere) make every
splitting matrix zero: :attr:`Activation.curvature_free` says so, so that callers can refuse or warn instead of
silently reporting "no neuron wants to split". A ReLU network can be given a smooth surrogate for phi'' with
:func:`relu_with_softplus_surrogate`; the surrogate is named in :attr:`Activation.surrogate` and must be
reported wherever the indexes are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation phi with phi' and phi''.

    Attributes:
        name: a short identifier, e.g. ``"softplus(beta=1)"``.
        phi, dphi, d2phi: elementwise functions of a tensor.
        curvature_free: phi'' is zero (everywhere, or almost everywhere as for ReLU); every splitting matrix of
            a neuron with this activation is zero.
        surrogate: when not None, ``d2phi`` is not the derivative of ``dphi`` but a smooth stand-in, described
            by this string (for reports).
    """

    name: str
    phi: Callable[[Tensor], Tensor]
    dphi: Callable[[Tensor], Tensor]
    d2phi: Callable[[Tensor], Tensor]
    curvature_free: bool = False
    surrogate: str | None = None

    def __call__(self, z: Tensor) -> Tensor:
        return self.phi(z)


def softplus(beta: float = 1.0) -> Activation:
    """phi(z) = log(1 + exp(beta z)) / beta, the paper's smooth replacement for ReLU."""
    if beta <= 0:
        raise ValueError(f"softplus beta must be > 0, got {beta}")

    def d2(z: Tensor) -> Tensor:
        s = torch.sigmoid(beta * z)
        return beta * s * (1.0 - s)

    return Activation(
        name=f"softplus(beta={beta:g})",
        # torch's softplus is exactly linear above beta*z = 20, where the true phi'' is below 2e-9 * beta.
        phi=lambda z: torch.nn.functional.softplus(z, beta=beta),
        dphi=lambda z: torch.sigmoid(beta * z),
        d2phi=d2,
    )


def sigmoid() -> Activation:
    def d1(z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1.0 - s)

    def d2(z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1.0 - s) * (1.0 - 2.0 * s)

    return Activation("sigmoid", torch.sigmoid, d1, d2)


def tanh() -> Activation:
    def d1(z: Tensor) -> Tensor:
        return 1.0 - torch.tanh(z) ** 2

    def d2(z: Tensor) -> Tensor:
        t = torch.tanh(z)
        return -2.0 * t * (1.0 - t * t)

    return Activation("tanh", torch.tanh, d1, d2)


def gaussian() -> Activation:
    """phi(z) = exp(-z^2 / 2): the radial basis unit of the paper's toy experiment (Appendix B.1)."""

    def phi(z: Tensor) -> Tensor:
        return torch.exp(-0.5 * z * z)

    return Activation(
        "gaussian",
        phi,
        lambda z: -z * phi(z),
        lambda z: (z * z - 1.0) * phi(z),
    )


def cosine() -> Activation:
    """phi(z) = cos(z), the random-feature unit of a shift-invariant kernel."""
    return Activation("cosine", torch.cos, lambda z: -torch.sin(z), lambda z: -torch.cos(z))


def silu() -> Activation:
    """phi(z) = z sigmoid(z) (also called swish)."""

    def d1(z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))

    def d2(z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))

    return Activation("silu", torch.nn.functional.silu, d1, d2)


def gelu() -> Activation:
    """The exact (erf) GELU, phi(z) = z Phi(z)."""

    def density(z: Tensor) -> Tensor:
        return _INV_SQRT_2PI * torch.exp(-0.5 * z * z)

    def cdf(z: Tensor) -> Tensor:
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))

    return Activation(
        "gelu",
        lambda z: z * cdf(z),
        lambda z: cdf(z) + z * density(z),
        lambda z: (2.0 - z * z) * density(z),
    )


def identity() -> Activation:
    """A linear unit: phi'' = 0, so its splitting matrix is exactly zero."""
    return Activation("identity", lambda z: z, torch.ones_like, torch.zeros_like, curvature_free=True)


def relu() -> Activation:
    """ReLU: phi'' = 0 almost everywhere, so a ReLU neuron never has a negative splitting index."""
    return Activation(
        "relu",
        torch.relu,
        lambda z: (z > 0).to(z.dtype),
        torch.zeros_like,
        curvature_free=True,
    )


def relu_with_softplus_surrogate(beta: float = 1.0) -> Activation:
    """ReLU whose phi'' is replaced by that of softplus(beta), an explicit approximation.

    The network still computes ReLU; only the splitting statistics use the surrogate curvature
    beta s (1 - s) with s = sigmoid(beta z), which tends to a delta at 0 as beta grows.
    """
    smooth = softplus(beta)
    return Activation(
        name=f"relu[surrogate softplus(beta={beta:g})]",
        phi=torch.relu,
        dphi=lambda z: (z > 0).to(z.dtype),
        d2phi=smooth.d2phi,
        surrogate=f"phi'' of softplus(beta={beta:g})",
    )


_FACTORIES: dict[str, Callable[..., Activation]] = {
    "softplus": softplus,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "gaussian": gaussian,
    "cosine": cosine,
    "silu": silu,
    "gelu": gelu,
    "identity": identity,
    "relu": relu,
}


def available_activations() -> list[str]:
    """Names accepted by :func:`get_activation`."""
    return sorted(_FACTORIES)


def get_activation(name: str, **kwargs: float) -> Activation:
    """Look an activation up by name (see :func:`available_activations`): ``get_activation("softplus", beta=2)``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(available_activations())}") from None
    return factory(**kwargs)


def activation_of_module(module: nn.Module) -> Activation:
    """The :class:`Activation` that an activation module computes, or ValueError if splitgrow has no table for it."""
    if isinstance(module, nn.Softplus):
        # Above `threshold` torch's Softplus is exactly linear; the exact softplus' phi'' there is below
        # beta * exp(-threshold), about 2e-9 for the default threshold of 20, so the difference is immaterial.
        return softplus(float(module.beta))
    if isinstance(module, nn.Sigmoid):
        return sigmoid()
    if isinstance(module, nn.Tanh):
        return tanh()
    if isinstance(module, nn.SiLU):
        return silu()
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ValueError(
                f"GELU(approximate={module.approximate!r}) has no derivative table; use approximate='none'"
            )
        return gelu()
    if isinstance(module, nn.ReLU):
        return relu()
    if isinstance(module, nn.Identity):
        return identity()
    raise ValueError(f"no derivative table for activation module {type(module).__name__}")
