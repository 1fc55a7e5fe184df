"""Networks people actually train, written in the tests as their authors write them (shared in-place ReLU,
pre-LN transformer blocks, Conv1d audio stacks, gated MLPs), small enough for float64 Hessians."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: one in-place ReLU module, called twice."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = activation(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """torchvision's bottleneck block (1x1, 3x3, 1x1), one shared in-place ReLU."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = activation(inplace=True)
        self.downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * self.expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * self.expansion),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ResNet-18 layout (stem conv, max pooling, 4 stages of 2 basic blocks), with widths scaled by
    ``width`` (64 in torchvision) and a Bottleneck stage appended when ``bottleneck``."""

    def __init__(
        self,
        width: int = 4,
        num_classes: int = 10,
        in_channels: int = 3,
        activation: type[nn.Module] = nn.ReLU,
        bottleneck: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = activation(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        layers, inplanes = [], width
        for index, planes in enumerate([width, 2 * width, 4 * width, 8 * width]):
            stride = 1 if index == 0 else 2
            layers.append(
                nn.Sequential(
                    BasicBlock(inplanes, planes, stride, activation), BasicBlock(planes, planes, 1, activation)
                )
            )
            inplanes = planes
        if bottleneck:
            layers.append(nn.Sequential(Bottleneck(inplanes, width, 1, activation)))
            inplanes = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreLNBlock(nn.Module):
    """A GPT-2-style pre-LN transformer block on (N, T, D) tokens: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))
    with the tanh GELU; the head averages the tokens."""

    def __init__(self, dim: int = 6, hidden: int = 5, heads: int = 2, tokens: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.position = nn.Parameter(0.1 * torch.randn(1, tokens, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.position
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(self.act(self.fc1(self.ln2(x))))
        return self.head(x.mean(dim=1))


class GatedMLP(nn.Module):
    """A SwiGLU MLP on tokens: fc1 makes both halves, silu(a) * b, then fc2 (LLaMA's layout with one matrix)."""

    def __init__(self, dim: int = 4, hidden: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(a) * b).mean(dim=1)


class AudioNet(nn.Module):
    """A Conv1d keyword-spotting stack on raw waveforms: strided, dilated, 'same' and depthwise Conv1d layers."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 9, stride=2, padding=4)
        self.bn1 = nn.BatchNorm1d(width)
        self.act1 = nn.SiLU()
        self.conv2 = nn.Conv1d(width, width, 5, dilation=2, padding="same", padding_mode="reflect")
        self.act2 = nn.Softplus()
        self.depthwise = nn.Conv1d(width, width, 3, padding=1, groups=width, bias=False)
        self.act3 = nn.Tanh()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act3(self.depthwise(self.act2(self.conv2(x))))
        return self.head(self.pool(x).flatten(1))


class InPlaceSiLUNet(nn.Module):
    """A CNN whose activations overwrite their inputs (SiLU(inplace=True)) and whose residual add is in place."""

    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.SiLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.SiLU(inplace=True)
        self.conv3 = nn.Conv2d(width, width, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(width * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.conv2(x))
        y = self.conv3(y)
        y.add_(x)
        return self.head(self.pool(y).flatten(1))


def inputs_for(model: nn.Module, batch: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """A batch of random inputs of the shape each test network expects."""
    if isinstance(model, (PreLNBlock,)):
        return torch.randn(batch, 4, 3, generator=generator, dtype=dtype)
    if isinstance(model, GatedMLP):
        return torch.randn(batch, 5, 4, generator=generator, dtype=dtype)
    if isinstance(model, AudioNet):
        return torch.randn(batch, 1, 40, generator=generator, dtype=dtype)
    return torch.randn(batch, 3, 8, 8, generator=generator, dtype=dtype)
