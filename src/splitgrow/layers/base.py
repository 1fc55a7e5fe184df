"""What splitgrow needs to know about one layer type, in one place: a :class:`LayerHandler`.

A handler answers four kinds of question about a module of its type:

* **graph**: how the module relates the channel dimension of its input to that of its output
  (:meth:`LayerHandler.channel_map`): it *produces* new channels (a Linear or a convolution: its output channels are
  neurons and its input channels are consumed), it acts *per channel* (BatchNorm, pooling, an activation: channel j
  in is channel j out), or splitgrow must *refuse* to grow through it, with the reason;
* **surgery**: which of its tensors are indexed by output channels and by input channels, and which size
  attributes change with them (:meth:`output_tensors`, :meth:`input_tensors`, :meth:`resize`);
* **cost**: its FLOPs for one sample (:meth:`flops`; a multiply-add counts 2);
* **statistics**, for producers only (:class:`NeuronHandler`): each output channel's parameter vector theta (the
  neuron), its input rows h for the closed-form splitting matrix sum c h h^T, and the products H V^T and their
  adjoint for the matrix-free operator.

Handlers are looked up by module type in :mod:`splitgrow.layers.registry`; users register their own with
:func:`~splitgrow.layers.registry.register_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

LINEAR = "linear"
PIECEWISE_LINEAR = "piecewise-linear"
SMOOTH = "smooth"

PRODUCE = "produce"
PER_CHANNEL = "per-channel"
REFUSE = "refuse"


@dataclass(frozen=True)
class ChannelMap:
    """How one call of a module links the channels of its input to those of its output.

    Attributes:
        kind: ``"produce"`` (output channels are new; the input's channels are consumed), ``"per-channel"``
            (channel j of the input is channel j of the output) or ``"refuse"``.
        input_dim: the dimension of the input tensor that holds its channels.
        output_dim: the dimension of the output tensor that holds its channels.
        nonlinearity: for a per-channel map: linear (BatchNorm, average pooling), piecewise-linear (ReLU, max
            pooling) or smooth (Tanh): whether the offspring of a split still add up linearly after it.
        neurons: for a per-channel map with parameters per channel (a depthwise convolution): those parameters are
            a neuron of the channel's coupling group too.
        reason: why a refused map is refused.
        input_growable: for a producer: whether its input channels can be duplicated (with its input columns
            duplicated and halved, which keeps a layer that is linear in its input unchanged); a layer that is not
            (a distance to prototypes) says False, and nothing upstream can then grow through it.
    """

    kind: str
    input_dim: int | None = None
    output_dim: int | None = None
    nonlinearity: str = LINEAR
    neurons: bool = False
    reason: str = ""
    input_growable: bool = True

    @classmethod
    def refuse(cls, reason: str) -> ChannelMap:
        return cls(REFUSE, reason=reason)


class LayerHandler:
    """How splitgrow sees modules of the types in :attr:`types` (see the module docstring)."""

    #: the module classes this handler is for (subclasses included, unless a more specific handler exists)
    types: tuple[type[nn.Module], ...] = ()

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        """The channel map of one call, from the shapes recorded when the model was traced."""
        return ChannelMap.refuse(f"{type(module).__name__} is not supported")

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        """(attribute, dimension) of every parameter or buffer indexed by the module's output channels."""
        return []

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        """(attribute, dimension) of every parameter or buffer indexed by the module's input channels."""
        return []

    def resize(self, module: nn.Module, *, outputs: int | None = None, inputs: int | None = None) -> None:
        """Update the size attributes (``out_features``, ``num_features``, ...) after the tensors grew."""

    def follows_channels(self, module: nn.Module) -> bool:
        """Whether a per-channel module must be updated when its channels grow: it has tensors indexed by them, or
        a size attribute that must match them (an instance norm's ``num_features``, checked against its input)."""
        return bool(self.output_tensors(module))

    def new_channel_value(self, module: nn.Module, name: str) -> float:
        """The value a brand-new channel gets in the output-indexed tensor ``name`` when it is not a neuron's own
        parameter (a new channel of a BatchNorm is the identity: weight and running variance 1)."""
        return 0.0

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        """FLOPs of one call for one sample (a multiply-add counts 2); 0 where negligible."""
        return 0


class NeuronHandler(LayerHandler):
    """A layer whose output channels are neurons: theta_j is row j of its weight (flattened), then its bias.

    The closed-form statistics read the layer as z = H theta for each output position: :meth:`rows` gives H for
    every group of channels that share their inputs, :meth:`apply` computes H V^T (a forward pass with the
    directions V as weights, no bias term unless V carries it) and :meth:`adjoint` computes (.)^T H (the gradient
    of that forward pass with respect to its weights). Subclasses implement these three with the layer's own
    operations; the defaults of the layout methods fit any layer with ``weight`` (out, ...) and an optional ``bias``.
    """

    #: the dimension of the output tensor that holds the channels (1 for convolutions, -1 for Linear)
    output_channel_dim: int = 1
    #: whether the output is a nonlinear function of theta (a custom neuron such as a prototype's distance): its
    #: own curvature then counts, and its statistics come from automatic differentiation
    nonlinear_in_theta: bool = False
    #: whether the statistics must differentiate the whole loss in the split (its outputs reach the loss through
    #: terms that couple the samples of a batch, such as a minimum over the batch): exact for any loss, at the cost
    #: of passes through the whole model (:mod:`splitgrow.statistics.loss_hessian`)
    whole_loss: bool = False

    def num_neurons(self, module: nn.Module) -> int:
        return int(module.weight.shape[0])

    def has_bias(self, module: nn.Module) -> bool:
        return getattr(module, "bias", None) is not None

    def neuron_dim(self, module: nn.Module) -> int:
        """d: parameters per neuron (the weight row, then 1 for the bias)."""
        return int(module.weight[0].numel()) + int(self.has_bias(module))

    def theta(self, module: nn.Module) -> Tensor:
        """(n, d): each neuron's parameters, the weight row flattened, then the bias."""
        rows = module.weight.detach().flatten(1)
        if self.has_bias(module):
            rows = torch.cat([rows, module.bias.detach()[:, None]], dim=1)
        return rows

    def parameters_from_theta(self, module: nn.Module, theta: Tensor) -> dict[str, Tensor]:
        """The module's parameters (by attribute name) for neuron parameters ``theta`` (k, d) (any k rows), each in
        the module's own layout with the k neurons along the dimension :meth:`output_tensors` names."""
        entries = module.weight[0].numel()
        found = {"weight": theta[:, :entries].reshape(theta.shape[0], *module.weight.shape[1:])}
        if self.has_bias(module):
            found["bias"] = theta[:, entries]
        return found

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("weight", 0)] + ([("bias", 0)] if self.has_bias(module) else [])

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("weight", 1)]

    def shares_inputs(self, module: nn.Module) -> bool:
        """Whether every neuron reads the same input rows h (not so for grouped or depthwise convolutions)."""
        return True

    def prepare_inputs(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """The inputs as :meth:`rows`, :meth:`apply` and :meth:`adjoint` read them (e.g. with 'same' padding
        applied explicitly); cached by the matrix-free operator."""
        return inputs

    def unprepare(self, module: nn.Module, prepared: Tensor) -> Tensor:
        """The adjoint of :meth:`prepare_inputs` for zero padding (a crop); the identity by default."""
        return prepared

    def input_adjoint(self, module: nn.Module, field: Tensor, directions: Tensor, input_shape: torch.Size) -> Tensor:
        """The adjoint of :meth:`apply` in its (prepared) input, for the weights of ``directions`` (needed by the
        closed form of depthwise-separable chains only)."""
        raise NotImplementedError

    def on_position_grid(self, module: nn.Module, steps: tuple[int, ...]) -> nn.Module | None:
        """A stand-in for ``module`` whose :meth:`apply` and :meth:`adjoint` compute only every ``steps[i]``-th
        output position along spatial axis i (from inputs cropped by :meth:`crop_to_grid`), for statistics that
        subsample positions; None for a layer without output positions (the default)."""
        return None

    def crop_to_grid(self, module: nn.Module, prepared: Tensor, offsets: tuple[int, ...]) -> Tensor:
        """The prepared input of :meth:`on_position_grid`'s stand-in for the grid that starts at output position
        ``offsets`` (one per spatial axis)."""
        raise NotImplementedError

    def rows(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """(P, G, d): the input rows h_p (a 1 appended for the bias) of each of the G groups of neurons that share
        their inputs (G = 1 for a Linear or an ordinary convolution, n for a depthwise one; group g serves neurons
        g n/G ... (g + 1) n/G - 1); P = samples x output positions, in the order of :meth:`coefficient_rows`."""
        raise NotImplementedError

    def coefficient_rows(self, module: nn.Module, field: Tensor) -> Tensor:
        """An output-shaped per-channel field (N, n, ...) or (N, ..., n) as (P, n) rows."""
        raise NotImplementedError

    def apply(self, module: nn.Module, inputs: Tensor, directions: Tensor) -> Tensor:
        """H V^T: the layer's output for weights given by ``directions`` (k, d), bias entries included."""
        raise NotImplementedError

    def adjoint(self, module: nn.Module, inputs: Tensor, field: Tensor) -> Tensor:
        """(field)^T H: (k, d) from an output-shaped ``field`` with k channels; the adjoint of :meth:`apply`."""
        raise NotImplementedError
