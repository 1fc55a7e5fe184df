"""Hello Edge's DS-CNN L: TensorFlow 'same' padding, feature-map sizes, Hello Edge's counts, and exact splits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from splitgrow.cli import app
from splitgrow.models import DSCNN, DSCNN_L_WIDTH, DSCNNL, build_model, dscnn_cost, load_model, save_model
from splitgrow.network import SplittableNetwork
from splitgrow.surgery import parameter_count


def torch_flops(model: DSCNN) -> int:
    """FLOPs of one sample as torch counts them (2 per multiply-accumulate of convolutions and matmuls)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(model.example_input(1))
    return int(counter.get_total_flops())


def feature_map_shapes(model: DSCNN, inputs: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes = {}
    hooks = [
        module.register_forward_hook(lambda _, __, output, name=name: shapes.__setitem__(name, tuple(output.shape)))
        for name, module in model.named_modules()
        if name in ("stem", "blocks.0.depthwise", "blocks.4")
    ]
    model(inputs)
    for hook in hooks:
        hook.remove()
    return shapes


def test_l_layout_shapes():
    model = DSCNN(widths=[5, 6, 7, 8, 9, 10], layout="L")
    shapes = feature_map_shapes(model, model.example_input(3))
    assert shapes == {"stem": (3, 5, 25, 10), "blocks.0.depthwise": (3, 5, 13, 5), "blocks.4": (3, 10, 13, 5)}
    compact = DSCNN(widths=[5, 6, 7, 8, 9, 10])
    assert feature_map_shapes(compact, compact.example_input(3))["blocks.4"] == (3, 10, 25, 5)
    with pytest.raises(ValueError, match="unknown DSCNN layout 'XL'"):
        DSCNN(layout="XL")


def test_stem_pads_like_tensorflow_same():
    """TensorFlow 'same' at stride (2, 1): out[t, f] = sum_ij x[2t + i - 4, f + j - 1] w[i, j], zero outside."""
    model = DSCNN(widths=[2] * 6, layout="L").double()
    x = torch.randn(1, 1, 49, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    weight = model.stem[0].weight[0, 0].detach()
    actual = model.stem[0](model.input_padding(x))[0, 0].detach()
    for t, f in [(0, 0), (0, 9), (12, 5), (24, 0), (24, 9)]:
        expected = sum(
            float(x[0, 0, 2 * t + i - 4, f + j - 1] * weight[i, j])
            for i in range(10)
            for j in range(4)
            if 0 <= 2 * t + i - 4 < 49 and 0 <= f + j - 1 < 10
        )
        assert float(actual[t, f]) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hello_edge_counts_at_width_276():
    cost = dscnn_cost([DSCNN_L_WIDTH] * 6, "L")
    # Hello Edge: 413.7K parameters (weights, conv biases, BatchNorm shifts) and 28.3M multiply-accumulates
    assert cost.parameters == 413_736 and round(cost.multiply_accumulates / 1e5) == 283
    assert cost.operations == 2 * cost.multiply_accumulates and round(cost.operations / 1e5) == 567
    model = build_model("dscnn-l", widths=[DSCNN_L_WIDTH] * 6)
    assert model.cost() == cost and parameter_count(model) == cost.parameters
    assert torch_flops(model) == cost.operations


@pytest.mark.parametrize("layout", ["compact", "L"])
def test_cost_matches_the_built_model_at_uneven_widths(layout):
    widths = [3, 7, 2, 9, 4, 11]
    model = DSCNN(widths=widths, layout=layout, num_classes=5)
    cost = dscnn_cost(widths, layout, num_classes=5)
    assert parameter_count(model) == cost.parameters
    assert torch_flops(model) == cost.operations


def test_dscnn_l_name_round_trips(tmp_path):
    model = DSCNNL(widths=[3, 4, 5, 6, 7, 8], activation="tanh")
    assert model.config() == {
        "widths": [3, 4, 5, 6, 7, 8],
        "num_classes": 12,
        "input_shape": [49, 10],
        "activation": "tanh",
    }
    save_model(tmp_path / "m", model)
    rebuilt, _ = load_model(tmp_path / "m")
    assert isinstance(rebuilt, DSCNNL) and rebuilt.layout == "L"
    generic = DSCNN(**{**model.config(), "layout": "L"})
    generic.load_state_dict(model.state_dict())
    inputs = model.example_input(2)
    torch.testing.assert_close(generic.eval()(inputs), model.eval()(inputs))


def test_inspect_prints_hello_edge_parameter_count():
    result = CliRunner().invoke(app, ["inspect", "--model", "dscnn-l", "--width", "276"])
    assert result.exit_code == 0, result.output
    assert "413,736 parameters, 56,655,624 FLOPs per sample" in result.stdout


@pytest.mark.parametrize(("seed", "only_the_stem"), [(0, True), (1, False)])
def test_splits_change_the_loss_as_predicted(seed, only_the_stem):
    """The stem feeds block 1's stride-2 depthwise conv, so its splits need the depthwise correction to be exact;
    then several channels in several layers at once."""
    model, inputs, targets = zoo_model("dscnn-l", width=4, seed=seed)
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], F.cross_entropy)
    if only_the_stem:
        results = {"stem.0": results["stem.0"]}
    requests = net.select(results, max_count=2 if only_the_stem else 6, threshold=0.0)
    assert len({request.site for request in requests}) == 1 if only_the_stem else len(requests) == 6
    with torch.no_grad():
        before = float(F.cross_entropy(model(inputs), targets))
    report = net.split(requests, 1e-2)  # the indexes of this tiny random net are ~1e-8: 1e-3 would drown
    with torch.no_grad():
        after = float(F.cross_entropy(model(inputs), targets))
    assert report.predicted_change is not None and abs(report.predicted_change) > 1e-14  # well above rounding
    assert after - before == pytest.approx(report.predicted_change, rel=0.01)
