"""The zoo: widths as arguments, and grown models saved and rebuilt without pickling modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import zoo_model

from splitgrow.errors import SplitgrowError
from splitgrow.models import MODELS, VGG19, MobileNetV1, build_model, load_model, save_model, uniform_widths
from splitgrow.network import SplittableNetwork


def test_paper_architectures():
    vgg = VGG19()
    assert len(vgg.convs()) == 16 and vgg.config()["widths"] == [16] * 16
    mobilenet = MobileNetV1()
    depthwise = [m for m in mobilenet.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13 and mobilenet.config()["widths"] == [32] + [16] * 13
    assert uniform_widths("mobilenetv1", 16)["widths"][0] == 32  # the paper keeps the first conv at 32
    for name in MODELS:
        model = build_model(name, **uniform_widths(name, 4))
        assert model(model.example_input(2)).shape == (2, model.config()["num_classes"])
    with pytest.raises(ValueError, match="VGG19 needs 16 positive widths"):
        VGG19(widths=[4] * 15)
    with pytest.raises(SplitgrowError, match="unknown model 'lenet'"):
        build_model("lenet")


@pytest.mark.parametrize("architecture", sorted(MODELS))
def test_grown_model_round_trip(tmp_path, architecture):
    model, inputs, targets = zoo_model(architecture)
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], F.cross_entropy)
    report = net.split(net.select(results, 3, allow_inexact=True), 0.05, allow_inexact=True)
    assert report.parameters_after > report.parameters_before
    history = [{"step": 0, "parameters": report.parameters_after, "widths": net.widths()}]
    save_model(tmp_path / "grown", model, history)
    saved = json.loads((tmp_path / "grown.json").read_text())
    assert saved["architecture"] == architecture and saved["config"] == model.config()
    rebuilt, loaded_history = load_model(tmp_path / "grown")
    rebuilt = rebuilt.to(torch.float64).eval()
    assert loaded_history == history
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(inputs), model(inputs))
    assert not list(tmp_path.glob("*.tmp"))


def test_loading_reports_missing_and_corrupt_files(tmp_path):
    model, _, _ = zoo_model("mlp")
    with pytest.raises(SplitgrowError, match="missing .*nothing.json"):
        load_model(tmp_path / "nothing")
    save_model(tmp_path / "m", model)
    (tmp_path / "m.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SplitgrowError, match="not a valid saved splitgrow model"):
        load_model(tmp_path / "m")
    save_model(tmp_path / "m", model)
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(SplitgrowError, match="not a valid saved splitgrow model"):
        load_model(tmp_path / "m")


class _Custom(torch.nn.Module):
    """A model that is not from the zoo: rebuilt from its constructor and the saved shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)
        self.act = torch.nn.SiLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(2)
        self.fc = torch.nn.Linear(12, 5)
        self.fc_act = torch.nn.Tanh()
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x):
        x = self.pool(self.act(self.norm(self.conv(x))))
        return self.head(self.fc_act(self.fc(x.flatten(1))))


def test_a_grown_custom_model_reloads_from_its_constructor(tmp_path):
    import torch.nn.functional as F

    from splitgrow import SplittableNetwork

    torch.manual_seed(0)
    model = _Custom().eval()
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 2, (8,))
    net = SplittableNetwork(model, x)
    for _ in range(2):
        results = net.splitting([(x, y)], F.cross_entropy)
        net.split(net.select(results, max_count=3), 0.1)
    assert model.conv.out_channels > 3 or model.fc.out_features > 5
    save_model(tmp_path / "grown", model, [{"stage": 1}])
    with pytest.raises(SplitgrowError, match="pass model= a fresh instance"):
        load_model(tmp_path / "grown")
    rebuilt, history = load_model(tmp_path / "grown", model=_Custom())
    assert history == [{"stage": 1}]
    assert rebuilt.conv.out_channels == model.conv.out_channels and rebuilt.fc.in_features == model.fc.in_features
    assert rebuilt.norm.num_features == model.norm.num_features
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_a_saved_models_name_keeps_its_dots(tmp_path):
    """save_model("run.v2") wrote run.pt and run.json (the '.v2' taken for a suffix), beside any run.* already there."""
    from splitgrow.models import saved_model_paths

    model = build_model("mlp", in_features=2, widths=[3])
    save_model(tmp_path / "run.v2", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.v2.json", "run.v2.pt"]
    loaded, _ = load_model(tmp_path / "run.v2")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert saved_model_paths(tmp_path / "model.pt") == (tmp_path / "model.json", tmp_path / "model.pt")
    assert saved_model_paths("model") == (Path("model.json"), Path("model.pt"))
