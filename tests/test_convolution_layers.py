"""Transposed and three-dimensional convolutions (decoders, U-Nets, upsampling audio nets; video and volumetric
nets), float64: each handler's reading of its layer (a transposed convolution as the stride-1 convolution of a
spread and padded input; a Conv3d's input rows gathered tap by tap) is the layer itself for every stride, padding,
output padding, dilation and bias; their sites split exactly (a 3-D depthwise-separable chain included); surgery,
optimisers, new neurons and resizing follow the transposed (in, out, *kernel) weight layout; and what cannot grow
is refused by name."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import assert_exact_splits, classification_loss, run_model
from test_user_architectures import assert_optimisers_continue
from torch import Tensor, nn

from splitgrow import ChannelGraph, SplittableNetwork
from splitgrow.firefly import FireflyOptions, new_neuron_candidates
from splitgrow.graph import GraphError
from splitgrow.inspection import added_cost, layer_flops
from splitgrow.layers import handler_for
from splitgrow.surgery import SplitRequest, resize_like

pytestmark = pytest.mark.filterwarnings("ignore::splitgrow.errors.SplitgrowWarning")

LAYERS = {
    "stride-2": lambda: nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1),
    "stride-1": lambda: nn.ConvTranspose2d(3, 5, 3),
    "dilated-no-bias": lambda: nn.ConvTranspose2d(3, 5, (3, 2), stride=(3, 2), padding=(2, 1), dilation=2, bias=False),
    "cropping": lambda: nn.ConvTranspose2d(3, 5, 3, padding=3),  # padding > dilation * (kernel - 1): a crop
    "1d": lambda: nn.ConvTranspose1d(3, 5, 4, stride=2, padding=1, output_padding=1),
    "3d": lambda: nn.ConvTranspose3d(3, 5, (2, 3, 2), stride=(1, 2, 2), padding=(0, 1, 1), output_padding=(0, 1, 0)),
    "3d-dilated-cropping": lambda: nn.ConvTranspose3d(3, 5, 2, stride=2, padding=(3, 1, 0), dilation=2, bias=False),
    "conv3d": lambda: nn.Conv3d(3, 5, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 2), dilation=(1, 1, 2)),
    "conv3d-replicate": lambda: nn.Conv3d(3, 5, 3, padding=1, padding_mode="replicate", bias=False),
}
#: the input's spatial shape for each number of spatial dimensions
SPATIAL = {1: [6], 2: [7, 6], 3: [4, 5, 6]}


@pytest.mark.parametrize("name", LAYERS)
def test_the_rows_product_and_adjoint_are_the_layer(name: str) -> None:
    """theta^T h_p at every output position, H V^T and its adjoint all reproduce the layer (and each other)."""
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    inputs = torch.randn(2, 3, *SPATIAL[len(layer.kernel_size)], dtype=torch.float64)
    handler = handler_for(layer)
    expected = layer(inputs)
    prepared = handler.prepare_inputs(layer, inputs)
    theta = handler.theta(layer)
    assert theta.shape == (5, handler.neuron_dim(layer))
    torch.testing.assert_close(handler.apply(layer, prepared, theta), expected)
    rows = handler.rows(layer, inputs)[:, 0]
    torch.testing.assert_close(rows @ theta.t(), handler.coefficient_rows(layer, expected))
    directions, field = torch.randn(3, theta.shape[1], dtype=torch.float64), torch.randn_like(expected[:, :3])
    inner = (handler.apply(layer, prepared, directions) * field).sum()
    torch.testing.assert_close((handler.adjoint(layer, prepared, field) * directions).sum(), inner)
    if layer.padding_mode == "zeros":  # unprepare is the adjoint of (zero) prepare_inputs
        probe = torch.randn_like(prepared)
        torch.testing.assert_close((prepared * probe).sum(), (inputs * handler.unprepare(layer, probe)).sum())
    rebuilt = handler.parameters_from_theta(layer, theta)
    torch.testing.assert_close(rebuilt["weight"], layer.weight.detach())


class Decoder(nn.Module):
    """An encoder convolution, then two transposed convolutions that upsample back (a small U-Net half)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up1 = nn.ConvTranspose2d(4, 5, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.up2 = nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up2(F.silu(self.bn(self.up1(F.softplus(self.down(x))))))
        return self.fc(torch.tanh(x).mean((2, 3)))


class AudioDecoder(nn.Module):
    def __init__(self, pool: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(2, 6, 5, stride=3, padding=2, output_padding=1)
        self.fc, self.pool = nn.Linear(6, 3), pool

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.up(x))
        return self.fc(hidden.amax(-1) if self.pool == "max" else hidden.mean(-1))


def _decoder() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = Decoder().double().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_(0.0, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model, torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,))


def test_a_decoder_splits_exactly_through_its_transposed_convolutions() -> None:
    model, images, labels = _decoder()
    graph = ChannelGraph(model, images)
    assert {name: graph.sites[name].engine for name in ("up1", "up2")} == {"up1": "ridge", "up2": "ridge"}
    assert graph.sites["up1"].neuron_dim == 4 * 9 + 1 and graph.sites["up1"].num_neurons == 5
    # each of the 4 x 4 input positions meets every tap of every filter once (a multiply-add counts 2)
    assert layer_flops(graph)["up1"] == 2 * (4 * 4) * (4 * 5 * 3 * 3)
    assert graph.coupled_modules("up1") == {"producers": ["up1"], "per_channel": ["bn"], "consumers": ["up2"]}
    assert_exact_splits(model, images, labels, ["down", "up1", "up2"])
    dense = SplittableNetwork(copy.deepcopy(model), images).splitting([(images, labels)], classification_loss)
    free = SplittableNetwork(copy.deepcopy(model), images).splitting(
        [(images, labels)], classification_loss, solver="lobpcg", tolerance=1e-8, operator_dtype=torch.float64
    )
    for name in ("up1", "up2"):
        torch.testing.assert_close(free[name].indexes.min(), dense[name].indexes.min(), rtol=1e-5, atol=1e-10)


def test_a_one_dimensional_transposed_convolution_splits_exactly() -> None:
    torch.manual_seed(0)
    signals, labels = torch.randn(4, 2, 7, dtype=torch.float64), torch.randint(0, 3, (4,))
    # a max over time is a kink the prediction leaves out, and says so
    assert "amax" in ChannelGraph(AudioDecoder("max").double(), signals).sites["up"].kinks
    assert_exact_splits(AudioDecoder("mean"), signals, labels, ["up"])


def test_surgery_optimisers_and_resizing_follow_the_transposed_layout() -> None:
    model, images, labels = _decoder()
    assert_optimisers_continue(model, images, labels, "up1")
    grown = copy.deepcopy(model)
    net = SplittableNetwork(grown, images)
    before = net.graph
    direction = torch.randn(4 * 9 + 1, dtype=torch.float64)  # up1: 4 input channels x 3 x 3 taps, and the bias
    requests = [SplitRequest("up1", 2, direction / direction.norm()), SplitRequest("up2", 0, None)]
    expected_parameters = added_cost(before, requests)
    count = sum(p.numel() for p in grown.parameters())
    report = net.split(requests, 1e-2)
    assert (grown.up1.weight.shape, grown.up2.weight.shape, grown.bn.num_features) == ((4, 6, 3, 3), (6, 4, 4, 4), 6)
    assert (grown.up1.out_channels, grown.up2.in_channels, grown.up2.out_channels) == (6, 6, 4)
    assert sum(p.numel() for p in grown.parameters()) - count == expected_parameters
    # the offspring of up1's channel 2 are its filter +/- eps v: they differ, and their mean is the parent's filter
    (_, first, second), *_ = report.offspring[0]
    assert not torch.equal(grown.up1.weight[:, first], grown.up1.weight[:, second])
    torch.testing.assert_close(grown.up1.weight[:, [first, second]].mean(1), model.up1.weight[:, 2].detach())
    # and up2 reads each offspring with half the parent's input row
    old_outputs = [k for k in range(4) if k not in report.inserted["up2"]["outputs"]]
    torch.testing.assert_close(grown.up2.weight[first][old_outputs], model.up2.weight[2].detach() / 2)
    rebuilt = Decoder().double().eval()
    assert set(resize_like(rebuilt, grown.state_dict())) == {"up1", "bn", "up2", "fc"}
    rebuilt.load_state_dict(grown.state_dict())
    torch.testing.assert_close(run_model(rebuilt, images), run_model(grown, images))


def test_a_new_neuron_of_a_transposed_convolution_keeps_the_function() -> None:
    model, images, labels = _decoder()
    graph = ChannelGraph(model, images)
    options = FireflyOptions(candidates_per_site=2, steps=2)
    candidates = new_neuron_candidates(
        model, graph, [(images, labels)], classification_loss, sites=["up1"], options=options
    )
    assert len(candidates) == 2 and all(c.gradient_norm > 0 for c in candidates)
    grown = copy.deepcopy(model)
    SplittableNetwork(grown, images).split([candidates[0].new_neuron(0.0)], 0.0)
    assert grown.up1.weight.shape == (4, 6, 3, 3)
    torch.testing.assert_close(grown.up1.weight[:, -1].flatten(), candidates[0].parameters[:-1])
    torch.testing.assert_close(run_model(grown, images), run_model(model, images))


class VolumeDecoder(nn.Module):
    """A 3-D transposed convolution upsampling a volume, through InstanceNorm with running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose3d(2, 4, 3, stride=2, padding=1, output_padding=1)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.up2 = nn.ConvTranspose3d(4, 3, (1, 2, 2), stride=(1, 2, 2))
        self.fc = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.up2(F.silu(self.norm(self.up1(x))))
        return self.fc(torch.tanh(x).mean((2, 3, 4)))


def test_a_volume_decoder_splits_exactly_through_its_3d_transposed_convolutions() -> None:
    torch.manual_seed(0)
    model = VolumeDecoder().double().eval()
    volumes, labels = torch.randn(3, 2, 2, 3, 3, dtype=torch.float64), torch.randint(0, 3, (3,))
    graph = ChannelGraph(model, volumes)
    assert graph.sites["up1"].neuron_dim == 2 * 27 + 1 and graph.sites["up2"].engine == "ridge"
    # each input position meets every tap of every filter once (a multiply-add counts 2)
    assert layer_flops(graph)["up1"] == 2 * (2 * 3 * 3) * (2 * 4 * 27)
    assert_exact_splits(model, volumes, labels, ["up1", "up2"])
    assert_optimisers_continue(model, volumes, labels, "up1")
    grown = copy.deepcopy(model)
    SplittableNetwork(grown, volumes).split([SplitRequest("up1", 1, None)], 1e-2)
    assert (grown.up1.weight.shape, grown.norm.num_features, grown.up2.weight.shape[0]) == ((2, 5, 3, 3, 3), 5, 5)
    rebuilt = VolumeDecoder().double().eval()
    assert set(resize_like(rebuilt, grown.state_dict())) >= {"up1", "norm", "up2"}
    rebuilt.load_state_dict(grown.state_dict())
    torch.testing.assert_close(run_model(rebuilt, volumes), run_model(grown, volumes))


def test_a_grouped_transposed_convolution_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh(), nn.ConvTranspose2d(4, 4, 3, groups=2), nn.Tanh())
    inputs = torch.randn(2, 3, 4, 4)
    message = "ConvTranspose2d with groups=2: PyTorch needs channel counts divisible by groups"
    assert message in ChannelGraph(model, inputs).skipped()["0"]
    with pytest.raises(GraphError, match="groups=2"):
        SplittableNetwork(model, inputs).split([SplitRequest("0", 0, None)], 0.0)


class OutputSized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.up = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(torch.tanh(self.conv(x)), output_size=x.shape[2:]).mean((2, 3))


def test_a_call_with_an_output_size_that_changes_the_shape_is_refused() -> None:
    model, images = OutputSized(), torch.randn(2, 3, 8, 8)
    graph = ChannelGraph(model, images)
    assert (
        "called with an output_size that gives (8, 8) where its output_padding gives (7, 7)" in graph.skipped()["conv"]
    )


class VideoNet(nn.Module):
    """A strided 3-D stem, then a depthwise-separable 3-D block (pointwise -> BN -> Softplus -> depthwise -> BN ->
    SiLU), pooled over time and space."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 3, stride=(1, 2, 2), padding=1)
        self.pointwise, self.bn1 = nn.Conv3d(4, 6, 1, bias=False), nn.BatchNorm3d(6)
        self.depthwise, self.bn2 = nn.Conv3d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm3d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.softplus(self.stem(x))
        x = F.silu(self.bn2(self.depthwise(F.softplus(self.bn1(self.pointwise(x))))))
        return self.fc(F.adaptive_avg_pool3d(x, 1).flatten(1))


def test_a_video_net_splits_exactly_through_its_3d_convolutions_and_depthwise_chain() -> None:
    torch.manual_seed(0)
    model = VideoNet().double().eval()
    with torch.no_grad():
        for norm in (model.bn1, model.bn2):
            norm.running_mean.normal_(0.0, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
    clips, labels = torch.randn(2, 3, 3, 4, 4, dtype=torch.float64), torch.randint(0, 3, (2,))
    graph = ChannelGraph(model, clips)
    assert (graph.sites["stem"].engine, graph.sites["pointwise"].engine) == ("ridge", "chain")
    assert graph.sites["pointwise"].neuron_dim == 4 + 27  # the pointwise filter and its depthwise kernel
    assert_exact_splits(model, clips, labels, ["stem", "pointwise"])
    dense = SplittableNetwork(copy.deepcopy(model), clips).splitting([(clips, labels)], classification_loss)
    free = SplittableNetwork(copy.deepcopy(model), clips).splitting(
        [(clips, labels)], classification_loss, solver="lobpcg", tolerance=1e-8, operator_dtype=torch.float64
    )
    for name in ("stem", "pointwise"):
        torch.testing.assert_close(free[name].indexes.min(), dense[name].indexes.min(), rtol=1e-5, atol=1e-10)
    assert_optimisers_continue(model, clips, labels, "pointwise")
