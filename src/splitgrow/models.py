"""The paper's networks, with their widths as constructor arguments, plus two for generality.

* :class:`MLP`: Linear layers with activations;
* :class:`VGG19`: the CIFAR form, 16 conv layers (3x3, BatchNorm, activation) in 5 stages with max pooling;
* :class:`MobileNetV1`: one 3x3 conv, then 13 depthwise (3x3) / pointwise (1x1) blocks;
* :class:`DSCNN`: Hello Edge's depthwise-separable CNN for keyword spotting: one conv, then 5 depthwise /
  pointwise blocks;
* :class:`ResidualNet`: a small ResNet (residual sums couple the channels of a stage);
* :class:`ConcatNet`: two branches concatenated along channels, then flattened into a Linear layer.

Softplus is the default activation, as the paper trains its networks. Every model reports its current widths
(:meth:`config`), so a grown model is saved as its config + state_dict + growth history and rebuilt without
pickling modules (:func:`save_model`, :func:`load_model`).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import atomic_write_bytes, atomic_write_json
from .errors import SplitgrowError

_ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "sigmoid": nn.Sigmoid}

VGG19_STAGES = (2, 2, 4, 4, 4)  # conv layers per stage; max pooling after each stage
VGG19_PAPER_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
MOBILENET_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # the 13 depthwise convs (CIFAR form)
MOBILENET_PAPER_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
DSCNN_PAPER_WIDTHS = (64, 64, 64, 64, 64, 64)


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(_ACTIVATIONS)}") from None


def _check_widths(widths: Sequence[int], count: int, model: str) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) != count or any(w < 1 for w in widths):
        raise ValueError(f"{model} needs {count} positive widths, got {widths}")
    return widths


class ZooModel(nn.Module):
    """Base class: a model that knows its architecture name and its constructor arguments."""

    architecture = "zoo"

    def config(self) -> dict[str, Any]:
        """Constructor arguments reproducing the current shapes (widths read from the layers)."""
        raise NotImplementedError

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A random input of the right shape (for tracing and tests)."""
        raise NotImplementedError


def _conv_block(in_channels: int, out_channels: int, activation: str, **conv: Any) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, bias=False, **conv),
        nn.BatchNorm2d(out_channels),
        _activation(activation),
    )


class MLP(ZooModel):
    """Inputs (flattened) -> [Linear -> activation] * len(widths) -> Linear -> outputs."""

    architecture = "mlp"

    def __init__(
        self,
        widths: Sequence[int] = (16, 16),
        in_features: int = 784,
        num_classes: int = 10,
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, len(widths) or 1, "MLP")
        self.activation_name = activation
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        previous = in_features
        for width in widths:
            layers += [nn.Linear(previous, width), _activation(activation)]
            previous = width
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(x))

    def config(self) -> dict[str, Any]:
        widths = [m.out_features for m in self.hidden if isinstance(m, nn.Linear)]
        return {
            "widths": widths,
            "in_features": self.in_features,
            "num_classes": self.classifier.out_features,
            "activation": self.activation_name,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_features)


class VGG19(ZooModel):
    """VGG19 for 32x32 images: 16 conv layers in stages of 2, 2, 4, 4, 4 with max pooling after each stage,
    then global average pooling and a Linear classifier (the CIFAR form used by network slimming)."""

    architecture = "vgg19"

    def __init__(
        self,
        widths: Sequence[int] = (16,) * 16,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "softplus",
        image_size: int = 32,
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 16, "VGG19")
        self.activation_name = activation
        self.in_channels = in_channels
        self.image_size = image_size
        layers: list[nn.Module] = []
        previous, index = in_channels, 0
        for count in VGG19_STAGES:
            for _ in range(count):
                layers.append(_conv_block(previous, widths[index], activation, kernel_size=3, padding=1))
                previous, index = widths[index], index + 1
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def convs(self) -> list[nn.Conv2d]:
        return [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]

    def config(self) -> dict[str, Any]:
        return {
            "widths": [conv.out_channels for conv in self.convs()],
            "num_classes": self.classifier.out_features,
            "in_channels": self.in_channels,
            "activation": self.activation_name,
            "image_size": self.image_size,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv -> BN -> activation -> pointwise 1x1 conv -> BN -> activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.depthwise = _conv_block(
            in_channels, in_channels, activation, kernel_size=3, stride=stride, padding=1, groups=in_channels
        )
        self.pointwise = _conv_block(in_channels, out_channels, activation, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class MobileNetV1(ZooModel):
    """MobileNetV1 for 32x32 images: a 3x3 conv (widths[0]) and 13 depthwise-separable blocks whose pointwise
    widths are widths[1:], then global average pooling and a Linear classifier."""

    architecture = "mobilenetv1"

    def __init__(
        self,
        widths: Sequence[int] = (32,) + (16,) * 13,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "softplus",
        image_size: int = 32,
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 14, "MobileNetV1")
        self.activation_name = activation
        self.in_channels = in_channels
        self.image_size = image_size
        self.stem = _conv_block(in_channels, widths[0], activation, kernel_size=3, padding=1)
        blocks = []
        for previous, width, stride in zip(widths[:-1], widths[1:], MOBILENET_STRIDES):
            blocks.append(DepthwiseSeparable(previous, width, stride, activation))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    def config(self) -> dict[str, Any]:
        widths = [self.stem[0].out_channels] + [block.pointwise[0].out_channels for block in self.blocks]
        return {
            "widths": widths,
            "num_classes": self.classifier.out_features,
            "in_channels": self.in_channels,
            "activation": self.activation_name,
            "image_size": self.image_size,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size)


class DSCNN(ZooModel):
    """DS-CNN (Zhang et al., Hello Edge) for 49 x 10 MFCC inputs: a 10x4 conv with stride 2 (widths[0]), then 5
    depthwise-separable blocks (pointwise widths widths[1:]), global average pooling and a Linear classifier."""

    architecture = "dscnn"

    def __init__(
        self,
        widths: Sequence[int] = (16,) * 6,
        num_classes: int = 12,
        input_shape: Sequence[int] = (49, 10),
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 6, "DSCNN")
        self.activation_name = activation
        self.input_shape = tuple(int(s) for s in input_shape)
        self.stem = _conv_block(1, widths[0], activation, kernel_size=(10, 4), stride=2, padding=(5, 1))
        blocks = [DepthwiseSeparable(previous, width, 1, activation) for previous, width in zip(widths, widths[1:])]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    def config(self) -> dict[str, Any]:
        widths = [self.stem[0].out_channels] + [block.pointwise[0].out_channels for block in self.blocks]
        return {
            "widths": widths,
            "num_classes": self.classifier.out_features,
            "input_shape": list(self.input_shape),
            "activation": self.activation_name,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, 1, *self.input_shape)


class BasicBlock(nn.Module):
    """conv -> BN -> act -> conv -> BN, plus the shortcut, then act. The inner width is splittable; the
    stage width is coupled by the residual sum."""

    def __init__(self, in_channels: int, inner: int, out_channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = _activation(activation)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act2 = _activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResidualNet(ZooModel):
    """A small ResNet for 32x32 images: a stem conv, one basic block per stage (stage widths ``stages``, inner
    widths ``inner``; stride 2 from the second stage on), global average pooling, Linear."""

    architecture = "resnet"

    def __init__(
        self,
        stages: Sequence[int] = (16, 32, 64),
        inner: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "softplus",
        image_size: int = 32,
    ) -> None:
        super().__init__()
        stages = _check_widths(stages, len(stages) or 1, "ResidualNet")
        inner = _check_widths(inner, len(stages), "ResidualNet inner")
        self.activation_name = activation
        self.in_channels = in_channels
        self.image_size = image_size
        self.stem = _conv_block(in_channels, stages[0], activation, kernel_size=3, padding=1)
        blocks = []
        previous = stages[0]
        for index, (stage, width) in enumerate(zip(stages, inner)):
            blocks.append(BasicBlock(previous, width, stage, 1 if index == 0 else 2, activation))
            previous = stage
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    def config(self) -> dict[str, Any]:
        return {
            "stages": [block.conv2.out_channels for block in self.blocks],
            "inner": [block.conv1.out_channels for block in self.blocks],
            "num_classes": self.classifier.out_features,
            "in_channels": self.in_channels,
            "activation": self.activation_name,
            "image_size": self.image_size,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size)


class ConcatNet(ZooModel):
    """A stem conv, two branches (3x3 and 1x1 convs) concatenated along channels, max pooling, a conv, then the
    feature map flattened into a Linear layer (one channel = H*W features) and a Linear classifier."""

    architecture = "concat"

    def __init__(
        self,
        widths: Sequence[int] = (8, 8, 8, 8, 16),
        num_classes: int = 10,
        in_channels: int = 3,
        activation: str = "softplus",
        image_size: int = 16,
    ) -> None:
        super().__init__()
        stem, left, right, mixed, hidden = _check_widths(widths, 5, "ConcatNet")
        self.activation_name = activation
        self.in_channels = in_channels
        self.image_size = image_size
        self.stem = _conv_block(in_channels, stem, activation, kernel_size=3, padding=1)
        self.left = _conv_block(stem, left, activation, kernel_size=3, padding=1)
        self.right = _conv_block(stem, right, activation, kernel_size=1)
        self.pool = nn.MaxPool2d(2)
        self.mixed = _conv_block(left + right, mixed, activation, kernel_size=3, padding=1, stride=2)
        side = image_size // 4
        self.hidden = nn.Linear(mixed * side * side, hidden)
        self.hidden_activation = _activation(activation)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.mixed(self.pool(x))
        return self.classifier(self.hidden_activation(self.hidden(torch.flatten(x, 1))))

    def config(self) -> dict[str, Any]:
        return {
            "widths": [
                self.stem[0].out_channels,
                self.left[0].out_channels,
                self.right[0].out_channels,
                self.mixed[0].out_channels,
                self.hidden.out_features,
            ],
            "num_classes": self.classifier.out_features,
            "in_channels": self.in_channels,
            "activation": self.activation_name,
            "image_size": self.image_size,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.image_size, self.image_size)


MODELS: dict[str, type[ZooModel]] = {
    cls.architecture: cls for cls in (MLP, VGG19, MobileNetV1, DSCNN, ResidualNet, ConcatNet)
}


def build_model(architecture: str, **config: Any) -> ZooModel:
    """A zoo model by name (``mlp``, ``vgg19``, ``mobilenetv1``, ``dscnn``, ``resnet``, ``concat``)."""
    try:
        cls = MODELS[architecture]
    except KeyError:
        raise SplitgrowError(f"unknown model {architecture!r}; choose one of: {', '.join(MODELS)}") from None
    return cls(**config)


def uniform_widths(architecture: str, width: int) -> dict[str, Any]:
    """Constructor arguments giving every layer of a zoo model the same width (the paper's starting points use
    16; MobileNetV1 keeps its first conv at 32 when width is below 32, as in the paper)."""
    if architecture == "vgg19":
        return {"widths": [width] * 16}
    if architecture == "mobilenetv1":
        return {"widths": [max(32, width)] + [width] * 13}
    if architecture == "dscnn":
        return {"widths": [width] * 6}
    if architecture == "mlp":
        return {"widths": [width, width]}
    if architecture == "resnet":
        return {"stages": [width, 2 * width, 4 * width], "inner": [width, 2 * width, 4 * width]}
    if architecture == "concat":
        return {"widths": [width, width, width, width, 2 * width]}
    raise SplitgrowError(f"unknown model {architecture!r}; choose one of: {', '.join(MODELS)}")


def save_model(path: Path, model: ZooModel, history: list[dict[str, Any]] | None = None) -> None:
    """Write ``path``.json (architecture, config, growth history) and ``path``.pt (the state_dict), atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path.with_suffix(".pt"), buffer.getvalue())
    from . import __version__

    atomic_write_json(
        path.with_suffix(".json"),
        {
            "architecture": model.architecture,
            "config": model.config(),
            "history": history or [],
            "splitgrow": __version__,
        },
    )


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[ZooModel, list[dict[str, Any]]]:
    """Rebuild a model saved by :func:`save_model` (no module is unpickled: weights_only loading)."""
    path = Path(path)
    description_path, weights_path = path.with_suffix(".json"), path.with_suffix(".pt")
    for required in (description_path, weights_path):
        if not required.is_file():
            raise SplitgrowError(f"missing {required}: a saved model is a .json and a .pt file side by side")
    try:
        description = json.loads(description_path.read_text())
        model = build_model(description["architecture"], **description["config"])
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
        model.load_state_dict(state)
    except (json.JSONDecodeError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise SplitgrowError(f"{path}: not a valid saved splitgrow model ({type(error).__name__}: {error})") from None
    return model, description.get("history", [])
