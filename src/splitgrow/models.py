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

import inspect
import io
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .artifacts import atomic_write_bytes, atomic_write_json
from .checks import check_model_type, is_count
from .errors import ConfigError, SplitgrowError

_ACTIVATIONS = {"softplus": nn.Softplus, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "sigmoid": nn.Sigmoid}

VGG19_STAGES = (2, 2, 4, 4, 4)  # conv layers per stage; max pooling after each stage
VGG19_PAPER_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
MOBILENET_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # the 13 depthwise convs (CIFAR form)
MOBILENET_PAPER_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
DSCNN_PAPER_WIDTHS = (64, 64, 64, 64, 64, 64)
#: Hello Edge's DS-CNN L: every layer 276 channels wide
DSCNN_L_WIDTH = 276


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"unknown activation {name!r}; choose from {', '.join(_ACTIVATIONS)}") from None


def _check_widths(widths: Sequence[int], count: int, model: str) -> list[int]:
    if isinstance(widths, (str, bytes)) or not all(is_count(w, 1) for w in widths):
        raise ConfigError(f"{model}'s widths must be a list of positive integers, got {widths!r}")
    widths = [int(w) for w in widths]
    if len(widths) != count:
        raise ConfigError(f"{model} needs {count} positive widths, got {widths}")
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


@dataclass(frozen=True)
class ModelCost:
    """Parameters and multiply-accumulates per sample; operations = 2 x MACs (how Hello Edge and the paper count)."""

    parameters: int
    multiply_accumulates: int

    @property
    def operations(self) -> int:
        return 2 * self.multiply_accumulates


def _conv_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + padding - kernel) // stride + 1


@dataclass(frozen=True)
class _DSCNNLayout:
    stem_stride: tuple[int, int]
    stem_padding: tuple[int, int, int, int]  # (left, right, top, bottom), as ZeroPad2d takes it
    first_stride: int  # of the first block's depthwise conv


_DSCNN_LAYOUTS = {
    "compact": _DSCNNLayout((2, 2), (1, 1, 5, 5), 1),
    # TensorFlow 'same' for a 10x4 kernel at stride (2, 1) on 49 x 10: 9 rows (4 above, 5 below), 3 columns (1, 2)
    "L": _DSCNNLayout((2, 1), (1, 2, 4, 5), 2),
}
DSCNN_LAYOUTS = tuple(_DSCNN_LAYOUTS)


def _dscnn_layout(layout: str) -> _DSCNNLayout:
    try:
        return _DSCNN_LAYOUTS[layout]
    except KeyError:
        raise ConfigError(f"unknown DSCNN layout {layout!r}; choose one of {', '.join(DSCNN_LAYOUTS)}") from None


def dscnn_cost(
    widths: Sequence[int], layout: str = "compact", num_classes: int = 12, input_shape: Sequence[int] = (49, 10)
) -> ModelCost:
    """A DS-CNN's size as Hello Edge counts it, from its widths alone (no model is built).

    Hello Edge (TensorFlow slim) counts every weight, every conv bias and every BatchNorm shift (slim's BatchNorm
    has no scale). :class:`DSCNN` has no conv biases but BatchNorm scales instead: one per channel either way, so
    this count equals ``sum(p.numel() for p in model.parameters())``. MACs count convolutions and the classifier
    (no BatchNorm, activation or pooling), as Hello Edge's 28.3M for DS-CNN L.
    """
    widths = _check_widths(widths, 6, "DSCNN")
    spec = _dscnn_layout(layout)
    left, right, top, bottom = spec.stem_padding
    time = _conv_output(int(input_shape[0]), 10, spec.stem_stride[0], top + bottom)
    frequency = _conv_output(int(input_shape[1]), 4, spec.stem_stride[1], left + right)
    parameters = 40 * widths[0] + 2 * widths[0]  # 10x4 filters; bias and shift per channel
    macs = time * frequency * 40 * widths[0]
    for index, (previous, width) in enumerate(zip(widths, widths[1:])):
        stride = spec.first_stride if index == 0 else 1
        time, frequency = _conv_output(time, 3, stride, 2), _conv_output(frequency, 3, stride, 2)
        parameters += 9 * previous + 2 * previous + previous * width + 2 * width
        macs += time * frequency * (9 * previous + previous * width)
    parameters += widths[-1] * num_classes + num_classes
    macs += widths[-1] * num_classes
    return ModelCost(parameters, macs)


class DSCNN(ZooModel):
    """DS-CNN (Zhang et al., Hello Edge) for 49 x 10 MFCC inputs: a 10x4 conv (widths[0]), then 5
    depthwise-separable blocks (pointwise widths widths[1:]), global average pooling and a Linear classifier.

    Layouts:

    * ``"compact"`` (the default): the conv has stride 2 x 2 and padding (5, 1), so every block sees 25 x 5 maps;
      all blocks have stride 1.
    * ``"L"``: Hello Edge's DS-CNN L (registered as ``dscnn-l``, :class:`DSCNNL`): the conv has stride (2, 1) and
      TensorFlow's 'same' padding (time 4 above / 5 below, frequency 1 left / 2 right, done by ``input_padding``
      on the input) -> 25 x 10; the first block's 3x3 depthwise conv has stride 2 -> 13 x 5; the others stride 1.
      At width 276 it has 413,736 parameters and 28.3M multiply-accumulates, Hello Edge's counts
      (:func:`dscnn_cost`). One difference from TensorFlow: that stride-2 depthwise conv pads frequency by 1 on
      each side where TensorFlow's 'same' pads 0 left / 1 right (a padding layer between the stem's activation
      and the depthwise conv would stop the stem's channels from growing); shapes, parameters and operations are
      the same, each frequency window starts one column earlier.
    """

    architecture = "dscnn"

    def __init__(
        self,
        widths: Sequence[int] = (16,) * 6,
        num_classes: int = 12,
        input_shape: Sequence[int] = (49, 10),
        activation: str = "softplus",
        layout: str = "compact",
    ) -> None:
        super().__init__()
        widths = _check_widths(widths, 6, "DSCNN")
        spec = _dscnn_layout(layout)
        self.layout = layout
        self.activation_name = activation
        self.input_shape = tuple(int(s) for s in input_shape)
        left, right, top, bottom = spec.stem_padding
        if (left, top) == (right, bottom):
            self.input_padding: nn.Module = nn.Identity()
            conv_padding = (top, left)
        else:  # a Conv2d pads both sides alike: pad the input instead (it never grows, so the graph allows it)
            self.input_padding = nn.ZeroPad2d(spec.stem_padding)
            conv_padding = (0, 0)
        self.stem = _conv_block(
            1, widths[0], activation, kernel_size=(10, 4), stride=spec.stem_stride, padding=conv_padding
        )
        strides = [spec.first_stride] + [1] * 4
        blocks = [
            DepthwiseSeparable(previous, width, stride, activation)
            for previous, width, stride in zip(widths, widths[1:], strides)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(self.input_padding(x)))), 1))

    def config(self) -> dict[str, Any]:
        widths = [self.stem[0].out_channels] + [block.pointwise[0].out_channels for block in self.blocks]
        return {
            "widths": widths,
            "num_classes": self.classifier.out_features,
            "input_shape": list(self.input_shape),
            "activation": self.activation_name,
            "layout": self.layout,
        }

    def cost(self) -> ModelCost:
        """Parameters and multiply-accumulates per sample at the current widths (:func:`dscnn_cost`)."""
        config = self.config()
        return dscnn_cost(config["widths"], self.layout, config["num_classes"], config["input_shape"])

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return torch.randn(batch, 1, *self.input_shape)


class DSCNNL(DSCNN):
    """Hello Edge's DS-CNN L, ``DSCNN(layout="L")``, under its own name (``dscnn-l``) for the command line and
    saved models. Hello Edge's model is ``DSCNNL(widths=[DSCNN_L_WIDTH] * 6, activation="relu")``."""

    architecture = "dscnn-l"

    def __init__(
        self,
        widths: Sequence[int] = (16,) * 6,
        num_classes: int = 12,
        input_shape: Sequence[int] = (49, 10),
        activation: str = "softplus",
    ) -> None:
        super().__init__(widths, num_classes, input_shape, activation, layout="L")

    def config(self) -> dict[str, Any]:
        config = super().config()
        del config["layout"]  # implied by the name
        return config


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
    cls.architecture: cls for cls in (MLP, VGG19, MobileNetV1, DSCNN, DSCNNL, ResidualNet, ConcatNet)
}


def build_model(architecture: str, **config: Any) -> ZooModel:
    """A zoo model by name (``mlp``, ``vgg19``, ``mobilenetv1``, ``dscnn``, ``dscnn-l``, ``resnet``, ``concat``)."""
    try:
        cls = MODELS[architecture]
    except (KeyError, TypeError):
        raise SplitgrowError(f"unknown model {architecture!r}; choose one of: {', '.join(MODELS)}") from None
    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no setting {', '.join(map(repr, unknown))}; its settings: {', '.join(sorted(known))}"
        )
    return cls(**config)


def uniform_widths(architecture: str, width: int) -> dict[str, Any]:
    """Constructor arguments giving every layer of a zoo model the same width (the paper's starting points use
    16; MobileNetV1 keeps its first conv at 32 when width is below 32, as in the paper)."""
    if architecture == "vgg19":
        return {"widths": [width] * 16}
    if architecture == "mobilenetv1":
        return {"widths": [max(32, width)] + [width] * 13}
    if architecture in ("dscnn", "dscnn-l"):
        return {"widths": [width] * 6}
    if architecture == "mlp":
        return {"widths": [width, width]}
    if architecture == "resnet":
        return {"stages": [width, 2 * width, 4 * width], "inner": [width, 2 * width, 4 * width]}
    if architecture == "concat":
        return {"widths": [width, width, width, width, 2 * width]}
    raise SplitgrowError(f"unknown model {architecture!r}; choose one of: {', '.join(MODELS)}")


def save_model(path: Path, model: nn.Module, history: list[dict[str, Any]] | None = None) -> None:
    """Write ``path``.json (how to rebuild the model, its tensors' shapes, the growth history) and ``path``.pt (the
    state_dict), atomically.

    A zoo model is rebuilt from its architecture and config alone; any other model from its constructor and the
    recorded shapes (see :func:`load_model`).
    """
    from . import __version__

    check_model_type(model)
    if history is not None and not (isinstance(history, list) and all(isinstance(s, dict) for s in history)):
        raise ConfigError(
            f"history must be a list of dicts (e.g. [stage.to_dict() for stage in grower.history]), got "
            f"{type(history).__name__}"
        )
    path = Path(path)
    state = model.state_dict()
    zoo = isinstance(model, ZooModel)
    description = {
        "architecture": model.architecture if zoo else None,
        "config": model.config() if zoo else None,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "shapes": {name: list(tensor.shape) for name, tensor in state.items()},
        "history": history or [],
        "splitgrow": __version__,
    }
    try:  # before anything is written: a history that JSON cannot hold must not leave a .pt without its .json
        json.dumps(description, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"the history cannot be written as JSON ({error})",
            fix="give plain values (numbers, strings, lists, dicts): GrowthStage.to_dict() has them",
        ) from None
    buffer = io.BytesIO()
    torch.save(state, buffer)
    description_path, weights_path = saved_model_paths(path)
    atomic_write_bytes(weights_path, buffer.getvalue())
    atomic_write_json(description_path, description)


def saved_model_paths(path: Path | str) -> tuple[Path, Path]:
    """The ``.json`` and ``.pt`` files of a saved model at ``path``: its suffixes appended (``run.v2`` is
    ``run.v2.json`` and ``run.v2.pt``), or replaced when ``path`` already names one of the two files."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".pt") else path
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".pt")


def load_model(
    path: Path, map_location: str | torch.device = "cpu", *, model: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Rebuild a model saved by :func:`save_model` (nothing is unpickled: weights-only loading).

    Args:
        path: the saved model's path without suffix (``path``.json and ``path``.pt; see :func:`saved_model_paths`).
        map_location: where the tensors go.
        model: for a model that is not from the zoo, a fresh instance built by its own constructor as it was
            before growth: every layer is resized to the saved shapes (:func:`splitgrow.surgery.resize_like`), then
            the state is loaded.

    Returns:
        The model and its growth history.
    """
    from .checkpoints import damaged_record
    from .surgery import resize_like

    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a fresh instance of the saved model's class (an nn.Module), got {model!r}")
    path = Path(path)
    description_path, weights_path = saved_model_paths(path)
    for required in (description_path, weights_path):
        if not required.is_file():
            raise SplitgrowError(f"missing {required}: a saved model is a .json and a .pt file side by side")
    try:
        description = json.loads(description_path.read_text())
        with weights_path.open("rb") as stream:
            damaged = damaged_record(stream)
            if damaged is not None:
                raise ValueError(f"the bytes of its record '{damaged}' do not match their checksum")
            state = torch.load(stream, map_location=map_location, weights_only=True)
        if not isinstance(description, dict) or not isinstance(state, dict):
            raise TypeError(f"it holds a {type(description).__name__} and a {type(state).__name__}, not two dicts")
        if model is None:
            if description.get("architecture") is None:
                raise SplitgrowError(
                    f"{path} holds a {description.get('class', 'custom')} model, not a zoo model: pass model= a "
                    "fresh instance built by its constructor (as before growth) to rebuild it"
                )
            model = build_model(description["architecture"], **description["config"])
        resize_like(model, state)
        model.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        if isinstance(error, SplitgrowError):  # a config of the zoo's model that it refuses, named as such
            raise SplitgrowError(f"{path}: not a valid saved splitgrow model ({error})") from None
        raise SplitgrowError(f"{path}: not a valid saved splitgrow model ({type(error).__name__}: {error})") from None
    return model.to(map_location), description.get("history", [])
