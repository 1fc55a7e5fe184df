"""The interpretable prototype network of Li et al. (2018), grown by splitting its prototypes (paper Appendix B.2).

The model, as Li et al.'s code builds it for MNIST:

* an encoder e of four 3x3 convolutions of stride 2 and padding 1 (TensorFlow's 'same' gives the same sizes),
  32-32-32-10 channels, 28 -> 14 -> 7 -> 4 -> 2: the code e(x) is the 2 x 2 x 10 = 40 latent values;
* a decoder mirroring it with transposed convolutions, 10-32-32-32-1 channels, and a sigmoid output;
* a prototype layer of m vectors theta_k in R^40 with outputs d_k(x) = ||theta_k - e(x)|| (the paper's distance;
  ``distance="squared"`` gives Li et al.'s squared one), and the logits W d with a learned m x 10 matrix W
  (:class:`torch.nn.Linear` without bias).

The loss (:func:`prototype_loss`) is Li et al.'s: 20 cross-entropy + 1 reconstruction (squared error summed over
the pixels, mean over images) + R1 + R2, where R1 is the mean over prototypes of the distance to the nearest
encoded image of the batch and R2 the mean over images of the distance to the nearest prototype.

How the prototypes grow through splitgrow's engine, like any other layer:

* a prototype is a neuron sigma(theta, h) = ||theta - h|| (:class:`PrototypeHandler`); its statistics come from the
  Hessian of the whole loss in the split (``whole_loss``), exact although R1 couples the images of a batch;
* the prototype channels reach the loss only through *consumers* whose tensors indexed by the channel are
  duplicated and halved at a split: the columns of W, and the per-prototype weights omega_k of R1 and R2 (one at
  the start, halved at each split: "the mean over prototypes" is a weighted mean), which live in the modules
  :class:`NearestImage` and :class:`NearestPrototype` inside the model. With eps = 0 a split keeps the logits, the
  reconstruction and every loss term exactly;
* R2's minimum over prototypes is not smooth where two prototypes tie, and the two offspring of a split always tie:
  a split would lower it at first order, outside the theory. R2 uses a weighted *softmin* instead,
  -T log sum_k omega_k exp(-d_k / T), smooth at every split and kept exactly by one (the offspring's halved weights
  add up). Its value lies between min_k d_k and min_k d_k + T log(1 / omega_min); T -> 0 gives Li et al.'s minimum.
  In a split, each image adds p (H - u u^T / T) to the prototype's S, with p the prototype's share of the image,
  u the unit vector from the image's code to the prototype and H = (I - u u^T) / d the distance's own Hessian: the
  splitting index sees how spread out the images a prototype stands for are. T must lie well below the distances:
  where they are below T the softmin is a weighted mean, 1/d outweighs 1/T and S is positive definite;
* the encoder's channels cannot be duplicated (a distance is not linear in its input): the encoder does not grow.

Importing this module registers the three handlers (:func:`splitgrow.layers.register_layer`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import PRODUCE, ChannelMap, LayerHandler, NeuronHandler, register_layer

DISTANCES = ("euclidean", "squared")
ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU}
#: channels of the encoder's convolutions (the decoder's, in reverse order)
ENCODER_CHANNELS = (32, 32, 32, 10)
#: the latent code: 10 channels of 2 x 2
CODE_SHAPE = (10, 2, 2)
CODE_FEATURES = 40
CLASSES = 10
IMAGE_SIZE = 28
#: Li et al.'s weights of the four loss terms
LOSS_WEIGHTS = {"classification": 20.0, "reconstruction": 1.0, "nearest_image": 1.0, "nearest_prototype": 1.0}


class PrototypeLayer(nn.Module):
    """m prototype vectors theta_k; maps codes (N, features) to their distances (N, m) to every prototype.

    Args:
        count: m, the number of prototypes.
        features: the dimension of a code.
        distance: ``"euclidean"`` (||theta - h||, the paper's) or ``"squared"`` (Li et al.'s).
        generator: draws the prototypes U(0, 1), as Li et al. initialise them (None: the global generator).
    """

    def __init__(
        self, count: int, features: int, *, distance: str = "euclidean", generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        self.distance = distance
        self.prototypes = nn.Parameter(torch.rand(count, features, generator=generator))

    def forward(self, codes: Tensor) -> Tensor:
        squared = (codes.unsqueeze(1) - self.prototypes).square().sum(-1)
        if self.distance == "squared":
            return squared
        # sqrt's derivative is infinite at 0 and a prototype never sits exactly on a code: clamping at the smallest
        # normal number keeps a zero distance's gradient at 0 instead of NaN
        return squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt()


class NearestImage(nn.Module):
    """R1: the omega-weighted sum over prototypes of each prototype's distance to the nearest code of the batch.

    ``omega`` (m,) starts at 1/m (a plain mean); a split halves the parent's weight between its offspring. Returns a
    (1, 1) tensor: the term for the whole batch.
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        self.register_buffer("omega", torch.full((count,), 1.0 / count))

    def forward(self, distances: Tensor) -> Tensor:
        return (self.omega * distances.min(dim=0).values).sum().reshape(1, 1)


class NearestPrototype(nn.Module):
    """R2: each image's smooth (weighted softmin) distance to the nearest prototype, (N, 1).

    softmin_T(d) = -T log sum_k omega_k exp(-d_k / T) (see the module docstring); ``omega`` as in
    :class:`NearestImage`.
    """

    def __init__(self, count: int, temperature: float) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"the softmin temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = temperature
        self.register_buffer("omega", torch.full((count,), 1.0 / count))

    def forward(self, distances: Tensor) -> Tensor:
        scores = self.omega.log() - distances / self.temperature  # a zero weight is log 0 = -inf: no share
        return -self.temperature * torch.logsumexp(scores, dim=1, keepdim=True)


class PrototypeNetwork(nn.Module):
    """Encoder, prototype layer, logits W d, decoder (see the module docstring).

    ``forward(images)`` returns ``(logits, reconstruction, nearest_image, nearest_prototype)``: (N, 10), (N, 1, 28,
    28), R1 as (1, 1) and R2 per image as (N, 1). Every term that depends on the prototypes is computed inside the
    model, so that only channel-free tensors leave it (a tensor of distances returned by ``forward`` would make the
    prototypes a model output, which cannot grow).

    Args:
        prototypes: m, the number of prototypes.
        distance: ``"euclidean"`` (the paper's) or ``"squared"`` (Li et al.'s).
        temperature: T of R2's softmin.
        activation: of the encoder and decoder's hidden layers, ``"softplus"`` or ``"relu"`` (Li et al.'s).
        generator: draws every initial parameter (None: the global generator).
    """

    def __init__(
        self,
        prototypes: int,
        *,
        distance: str = "euclidean",
        temperature: float = 0.01,
        activation: str = "softplus",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]
        encoder: list[nn.Module] = []
        channels = 1
        for width in ENCODER_CHANNELS:
            encoder += [nn.Conv2d(channels, width, 3, stride=2, padding=1), act()]
            channels = width
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = []
        # output padding 1 doubles a size; 4 -> 7 needs 0 (Li et al. crop instead)
        widths = (*reversed(ENCODER_CHANNELS[:-1]), 1)
        for index, (width, padding) in enumerate(zip(widths, (1, 0, 1, 1))):
            last = index == len(widths) - 1
            decoder += [
                nn.ConvTranspose2d(channels, width, 3, stride=2, padding=1, output_padding=padding),
                nn.Sigmoid() if last else act(),
            ]
            channels = width
        self.decoder = nn.Sequential(*decoder)
        self.prototypes = PrototypeLayer(prototypes, CODE_FEATURES, distance=distance, generator=generator)
        self.classifier = nn.Linear(prototypes, CLASSES, bias=False)
        self.nearest_image = NearestImage(prototypes)
        self.nearest_prototype = NearestPrototype(prototypes, temperature)
        if generator is not None:
            _initialise(self, generator)

    @property
    def num_prototypes(self) -> int:
        return int(self.prototypes.prototypes.shape[0])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        latent = self.encoder(images)
        distances = self.prototypes(torch.flatten(latent, 1))
        return (
            self.classifier(distances),
            self.decoder(latent),
            self.nearest_image(distances),
            self.nearest_prototype(distances),
        )

    @torch.no_grad()
    def decode_prototypes(self) -> Tensor:
        """Every prototype decoded to an image, (m, 28, 28) in [0, 1]."""
        codes = self.prototypes.prototypes.reshape(-1, *CODE_SHAPE)
        return self.decoder(codes).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """The codes e(x), (N, 40)."""
        return torch.flatten(self.encoder(images), 1)


def _initialise(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of every convolution and of W, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from
    ``generator`` so that a run never depends on the global random state."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                # torch's fan-in: dimension 1 of the weight times the kernel (of a transposed conv: its outputs)
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)


def prototype_loss(
    outputs: tuple[Tensor, Tensor, Tensor, Tensor],
    images: Tensor,
    labels: Tensor,
    weights: dict[str, float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The training loss of one batch and its four terms (unweighted), from the model's outputs.

    Args:
        outputs: what :class:`PrototypeNetwork` returns for ``images``.
        images: the batch the model saw (N, 1, 28, 28), in [0, 1]: the reconstruction's target.
        labels: (N,) class indices.
        weights: of the terms, by name (default: Li et al.'s :data:`LOSS_WEIGHTS`).
    """
    logits, reconstruction, nearest_image, nearest_prototype = outputs
    terms = {
        "classification": F.cross_entropy(logits, labels),
        "reconstruction": (reconstruction - images).square().flatten(1).sum(1).mean(),
        "nearest_image": nearest_image.sum(),
        "nearest_prototype": nearest_prototype.mean(),
    }
    weights = LOSS_WEIGHTS if weights is None else weights
    return sum(weights[name] * value for name, value in terms.items()), terms


# ------------------------------------------------------------------------------------------ handlers


class PrototypeHandler(NeuronHandler):
    """A prototype is a neuron: theta_k is its vector, its output channel k is the distance to it."""

    types = (PrototypeLayer,)
    output_channel_dim = -1
    nonlinear_in_theta = True
    whole_loss = True  # R1's minimum over the batch couples the samples: differentiate the whole loss

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        # a distance is not linear in its input: a duplicated input feature cannot be halved back
        return ChannelMap(
            PRODUCE, input_dim=len(input_shape) - 1, output_dim=len(output_shape) - 1, input_growable=False
        )

    def num_neurons(self, module: nn.Module) -> int:
        return int(module.prototypes.shape[0])

    def has_bias(self, module: nn.Module) -> bool:
        return False

    def neuron_dim(self, module: nn.Module) -> int:
        return int(module.prototypes.shape[1])

    def theta(self, module: nn.Module) -> Tensor:
        return module.prototypes.detach()

    def parameters_from_theta(self, module: nn.Module, theta: Tensor) -> dict[str, Tensor]:
        return {"prototypes": theta}

    def output_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("prototypes", 0)]

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return []

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        count, features = module.prototypes.shape
        return 3 * int(count) * int(features)  # a difference, a square and a sum per entry


class PrototypeWeightsHandler(LayerHandler):
    """R1 and R2 consume the prototype channels: their weights omega are duplicated and halved at a split."""

    types = (NearestImage, NearestPrototype)

    def channel_map(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ChannelMap:
        return ChannelMap(PRODUCE, input_dim=len(input_shape) - 1, output_dim=len(output_shape) - 1)

    def input_tensors(self, module: nn.Module) -> list[tuple[str, int]]:
        return [("omega", 0)]

    def flops(self, module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
        return 3 * int(input_shape[-1])


register_layer(PrototypeHandler())
register_layer(PrototypeWeightsHandler())
