"""Activation functions with their first and second derivatives.

The splitting matrix of a neuron phi(theta^T h) is sum c h h^T with c = g * phi''(z), so every activation a
neuron may use needs phi''. Activations whose phi'' vanishes (identity, ReLU almost everywhere) make every
splitting matrix zero: :attr:`Activation.curvature_free` says so, so that callers can refuse or warn instead of
silently reporting "no neuron wants to split".

A *kink* is a point where phi' jumps (ReLU at 0, torch's Softplus at its threshold). There phi'' is a Dirac mass of
the jump's size, which a second-order prediction eps^2/2 v^T S v cannot see: an activation is *exact* only when
its kinks are negligible (:attr:`Activation.exact`). A network of piecewise-linear activations can be given a
smooth surrogate for phi'' with :func:`with_kink_surrogate` (each kink's mass spread as softplus(beta)'s
curvature); the surrogate is named in :attr:`Activation.surrogate` and must be reported wherever the indexes are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

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
        kinks: (z, jump) for every point where phi' jumps by ``jump``; ``d2phi`` does not include their masses.
        steps: (z, jump) for every point where phi itself jumps (torch's Softplus at its threshold).
    """

    name: str
    phi: Callable[[Tensor], Tensor]
    dphi: Callable[[Tensor], Tensor]
    d2phi: Callable[[Tensor], Tensor]
    curvature_free: bool = False
    surrogate: str | None = None
    kinks: tuple[tuple[float, float], ...] = ()
    steps: tuple[tuple[float, float], ...] = ()

    def __call__(self, z: Tensor) -> Tensor:
        return self.phi(z)

    @property
    def exact(self) -> bool:
        """Whether phi'' is the whole second derivative: no kink, or only kinks whose jump is below
        ``KINK_TOLERANCE`` (such as torch's default Softplus threshold, where phi' jumps by 2e-9)."""
        return self.surrogate is None and all(abs(jump) <= KINK_TOLERANCE for _, jump in self.kinks + self.steps)

    @property
    def inexact_reason(self) -> str:
        """Why :attr:`exact` is False ('' when it is True)."""
        if self.surrogate is not None:
            return f"its curvature is a surrogate ({self.surrogate})"
        for what, points in (("phi", self.steps), ("phi'", self.kinks)):
            largest = max(points, key=lambda point: abs(point[1]), default=None)
            if largest is not None and abs(largest[1]) > KINK_TOLERANCE:
                return f"{what} of {self.name} jumps by {largest[1]:.3g} at z = {largest[0]:g}"
        return ""


#: a kink whose jump in phi' is at most this is immaterial to a second-order prediction
KINK_TOLERANCE = 1e-6


def softplus(beta: float = 1.0, threshold: float = 20.0) -> Activation:
    """phi(z) = log(1 + exp(beta z)) / beta, the paper's smooth replacement for ReLU, as torch computes it: exactly
    z where beta z > threshold. There phi'' = 0, phi' jumps by 1 - sigmoid(threshold) and phi by
    -log(1 + exp(-threshold)) / beta (2e-9 for torch's default threshold of 20: immaterial; 0.27 and -0.31 for
    threshold 1: recorded, so that the activation is not exact)."""
    if beta <= 0:
        raise ValueError(f"softplus beta must be > 0, got {beta}")

    # phi' and phi'' are computed for every recorded activation of every statistics batch: one sigmoid each, masked
    # with scalars (torch.where against tensors of ones and zeros cost several times more on a CPU)
    def scaled(z: Tensor) -> Tensor:
        return z if beta == 1.0 else beta * z

    def d1(z: Tensor) -> Tensor:
        x = scaled(z)
        return torch.where(x > threshold, 1.0, torch.sigmoid(x))

    def d2(z: Tensor) -> Tensor:
        x = scaled(z)
        s = torch.sigmoid(x)
        curvature = s * (1.0 - s) if beta == 1.0 else beta * s * (1.0 - s)
        return torch.where(x > threshold, 0.0, curvature)

    slope_jump = 1.0 - 1.0 / (1.0 + math.exp(-threshold))
    value_jump = -math.log1p(math.exp(-threshold)) / beta
    name = f"softplus(beta={beta:g})" if threshold == 20.0 else f"softplus(beta={beta:g}, threshold={threshold:g})"
    return Activation(
        name=name,
        phi=lambda z: torch.nn.functional.softplus(z, beta=beta, threshold=threshold),
        dphi=d1,
        d2phi=d2,
        kinks=((threshold / beta, slope_jump),),
        steps=((threshold / beta, value_jump),),
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


def gelu(approximate: str = "none") -> Activation:
    """GELU: the exact phi(z) = z Phi(z) (``approximate="none"``) or torch's tanh approximation
    0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) (``approximate="tanh"``, GPT-2's)."""
    if approximate == "tanh":
        return _gelu_tanh()
    if approximate != "none":
        raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")

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


def _gelu_tanh() -> Activation:
    scale, cubic = math.sqrt(2.0 / math.pi), 0.044715

    def parts(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.tanh(scale * (z + cubic * z**3))
        du = scale * (1.0 + 3.0 * cubic * z * z)  # d/dz of the tanh's argument
        return t, du, 6.0 * scale * cubic * z  # and its second derivative

    def d1(z: Tensor) -> Tensor:
        t, du, _ = parts(z)
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du

    def d2(z: Tensor) -> Tensor:
        t, du, d2u = parts(z)
        return (1.0 - t * t) * (du - z * t * du * du + 0.5 * z * d2u)

    return Activation(
        "gelu(tanh)",
        lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
        d1,
        d2,
    )


def elu(alpha: float = 1.0) -> Activation:
    """ELU: z for z > 0, alpha (exp(z) - 1) below; phi' jumps by 1 - alpha at 0 (none for alpha = 1)."""

    def d1(z: Tensor) -> Tensor:
        return torch.where(z > 0, torch.ones_like(z), alpha * torch.exp(z))

    def d2(z: Tensor) -> Tensor:
        return torch.where(z > 0, torch.zeros_like(z), alpha * torch.exp(z))

    return Activation(
        f"elu(alpha={alpha:g})",
        lambda z: torch.nn.functional.elu(z, alpha=alpha),
        d1,
        d2,
        kinks=((0.0, 1.0 - alpha),),
    )


def mish() -> Activation:
    """phi(z) = z tanh(softplus(z))."""

    def d1(z: Tensor) -> Tensor:
        t, s = torch.tanh(torch.nn.functional.softplus(z)), torch.sigmoid(z)
        return t + z * (1.0 - t * t) * s

    def d2(z: Tensor) -> Tensor:
        t, s = torch.tanh(torch.nn.functional.softplus(z)), torch.sigmoid(z)
        sech2 = 1.0 - t * t
        return 2.0 * sech2 * s + z * sech2 * s * (1.0 - s) - 2.0 * z * t * sech2 * s * s

    return Activation("mish", torch.nn.functional.mish, d1, d2)


def exponential() -> Activation:
    return Activation("exp", torch.exp, torch.exp, torch.exp)


def sine() -> Activation:
    return Activation("sin", torch.sin, torch.cos, lambda z: -torch.sin(z))


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
        kinks=((0.0, 1.0),),
    )


def leaky_relu(negative_slope: float = 0.01) -> Activation:
    return Activation(
        f"leaky_relu({negative_slope:g})",
        lambda z: torch.nn.functional.leaky_relu(z, negative_slope),
        lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, negative_slope)),
        torch.zeros_like,
        curvature_free=True,
        kinks=((0.0, 1.0 - negative_slope),),
    )


def hardtanh(min_val: float = -1.0, max_val: float = 1.0) -> Activation:
    """Hardtanh (ReLU6 is hardtanh(0, 6)): linear between min_val and max_val, constant outside."""
    name = "relu6" if (min_val, max_val) == (0.0, 6.0) else f"hardtanh({min_val:g}, {max_val:g})"
    return Activation(
        name,
        lambda z: torch.nn.functional.hardtanh(z, min_val, max_val),
        lambda z: ((z > min_val) & (z < max_val)).to(z.dtype),
        torch.zeros_like,
        curvature_free=True,
        kinks=((min_val, 1.0), (max_val, -1.0)),
    )


def hardswish() -> Activation:
    """Hardswish (MobileNetV3): z relu6(z + 3) / 6, i.e. 0 below -3, z (z + 3) / 6 between -3 and 3 (phi'' = 1/3)
    and z above 3; phi' jumps by -1/2 at both ends of the quadratic piece (kinks, listed)."""

    def inside(z: Tensor) -> Tensor:
        return ((z > -3.0) & (z < 3.0)).to(z.dtype)

    return Activation(
        "hardswish",
        torch.nn.functional.hardswish,
        lambda z: torch.where(z >= 3.0, torch.ones_like(z), inside(z) * (2.0 * z + 3.0) / 6.0),
        lambda z: inside(z) / 3.0,
        kinks=((-3.0, -0.5), (3.0, -0.5)),
    )


def hardsigmoid() -> Activation:
    """Hardsigmoid (MobileNetV3's squeeze-excitation gate): relu6(z + 3) / 6, linear between -3 and 3."""
    return Activation(
        "hardsigmoid",
        torch.nn.functional.hardsigmoid,
        lambda z: ((z > -3.0) & (z < 3.0)).to(z.dtype) / 6.0,
        torch.zeros_like,
        curvature_free=True,
        kinks=((-3.0, 1.0 / 6.0), (3.0, -1.0 / 6.0)),
    )


def with_kink_surrogate(activation: Activation, beta: float = 1.0) -> Activation:
    """``activation`` with phi'' replaced by a smooth stand-in: each kink's jump J at z_k spread as
    J beta s (1 - s), s = sigmoid(beta (z - z_k)), the curvature of softplus(beta) (whose phi' rises by 1 across 0).

    The network still computes ``activation``; only the splitting statistics use the surrogate, which tends to the
    kinks' Dirac masses as beta grows. For ReLU this is softplus(beta)'s phi'' itself.
    """
    if beta <= 0:
        raise ValueError(f"the surrogate's beta must be > 0, got {beta}")
    if not activation.kinks:
        raise ValueError(f"{activation.name} has no kink to smooth")
    kinks = activation.kinks

    def d2(z: Tensor) -> Tensor:
        total = activation.d2phi(z)
        for at, jump in kinks:
            s = torch.sigmoid(beta * (z - at))
            total = total + jump * beta * s * (1.0 - s)
        return total

    return Activation(
        name=f"{activation.name}[surrogate softplus(beta={beta:g})]",
        phi=activation.phi,
        dphi=activation.dphi,
        d2phi=d2,
        surrogate=f"phi'' of softplus(beta={beta:g})",
        kinks=kinks,
    )


def relu_with_softplus_surrogate(beta: float = 1.0) -> Activation:
    """ReLU whose phi'' is replaced by that of softplus(beta), an explicit approximation (see
    :func:`with_kink_surrogate`)."""
    return with_kink_surrogate(relu(), beta)


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
    "elu": elu,
    "mish": mish,
    "leaky_relu": leaky_relu,
    "hardtanh": hardtanh,
    "hardswish": hardswish,
    "hardsigmoid": hardsigmoid,
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
