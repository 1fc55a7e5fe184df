"""Models of your own named on the command line (``FILE.py:NAME`` or ``MODULE:NAME``): each form loads the model
it names, and every way of naming it wrongly is a ConfigError that says what to change."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from torch import nn

from splitgrow.errors import ConfigError
from splitgrow.model_import import import_model, is_model_spec, parse_input_shape

NETS = """
import torch
from torch import nn

from helpers_of_my_nets import hidden_width  # a neighbour of this file, importable as it is from its folder


class SmallNet(nn.Module):
    def __init__(self, width: int = hidden_width()) -> None:
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(4, width), nn.Softplus(), nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


class NeedsArguments(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()


def build():
    return SmallNet(width=5)


def broken():
    return [] + 1


def not_a_model():
    return "a string"


instance = SmallNet(width=6)


class TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc, self.head = nn.Embedding(20, 4), nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, ids):
        return self.head(torch.tanh(self.fc(self.embed(ids))).mean(1))
VERSION = "1.0"
COUNT = 3
"""


@pytest.fixture()
def nets(tmp_path: Path) -> Path:
    (tmp_path / "helpers_of_my_nets.py").write_text("def hidden_width():\n    return 7\n")
    path = tmp_path / "my_nets.py"
    path.write_text(NETS)
    return path


@pytest.mark.parametrize(("name", "width"), [("SmallNet", 7), ("build", 5), ("instance", 6)])
def test_a_class_a_factory_or_an_instance_in_a_file_is_the_model(nets: Path, name: str, width: int) -> None:
    model = import_model(f"{nets}:{name}")
    assert isinstance(model, nn.Module) and model.fc.out_features == width


def test_an_importable_module_names_a_model_too() -> None:
    model = import_model("torch.nn:Identity")
    assert isinstance(model, nn.Identity)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Missing", r"has no 'Missing'.*models defined there: NeedsArguments, SmallNet, TokenClassifier, instance"),
        ("NeedsArguments", r"NeedsArguments cannot be called without arguments.*name a factory function"),
        ("broken", r"building broken failed: TypeError: .* at .*my_nets.py:\d+.*fix that code"),
        ("not_a_model", r"not_a_model gave a str, not an nn.Module"),
        ("VERSION", r"'VERSION' is a str, not a model"),
        ("COUNT", r"'COUNT' is an int, not a model"),
    ],
)
def test_a_wrong_name_says_what_to_change(nets: Path, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        import_model(f"{nets}:{name}")


def test_an_instance_is_listed_whatever_its_class_and_a_failure_names_the_users_line(tmp_path: Path) -> None:
    """An nn.Sequential made in the file was not listed (its class is torch's); a constructor that fails inside
    torch was located at torch's line, not the user's."""
    path = tmp_path / "plain.py"
    path.write_text(
        "from torch import nn\n"
        "model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))\n"
        "def broken():\n"
        "    return nn.Linear(4, -3)\n"
    )
    with pytest.raises(ConfigError, match=r"models defined there: model\)"):
        import_model(str(path))
    with pytest.raises(ConfigError, match=r"building broken failed: RuntimeError: .* at .*plain.py:4 "):
        import_model(f"{path}:broken")


def test_a_file_without_a_name_lists_its_models_and_a_syntax_error_names_its_line(nets: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"name the model in the file .*:NAME \(models defined there: NeedsArg"):
        import_model(str(nets))
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\nclass Net(:\n    pass\n")
    with pytest.raises(ConfigError, match=r"SyntaxError: .* at .*broken.py:3"):
        import_model(f"{broken}:Net")


def test_a_wrong_place_says_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        import_model(f"{tmp_path / 'absent.py'}:Net")
    with pytest.raises(ConfigError, match="give MODULE:NAME"):
        import_model(":Net")
    with pytest.raises(ConfigError, match="no module named 'no_such_package_here.*give the path of a .py file"):
        import_model("no_such_package_here.nets:Net")
    failing = tmp_path / "failing.py"
    failing.write_text(
        textwrap.dedent("""
        import torch
        raise RuntimeError("my code is broken")
    """)
    )
    with pytest.raises(ConfigError, match=r"importing .*failing.py failed: RuntimeError: my code is broken at .*:3"):
        import_model(f"{failing}:Net")


def test_input_shapes_and_specs_are_read_or_refused() -> None:
    assert parse_input_shape("3,32,32") == (3, 32, 32) and parse_input_shape("3x8x8") == (3, 8, 8)
    assert parse_input_shape("16000") == (16000,)
    for text in ("", "3,,32", "3,-1", "a,b", "0", "3_2,32", "+3"):
        with pytest.raises(ConfigError, match="one sample's shape without the batch dimension"):
            parse_input_shape(text)
    assert is_model_spec("my_nets.py:SmallNet") and not is_model_spec("vgg19")


def _inspect(*args: str):
    from typer.testing import CliRunner

    from splitgrow.cli import app

    return CliRunner().invoke(app, ["inspect", *args])


def test_inspect_lists_the_sites_and_indexes_of_a_model_of_your_own(nets: Path, tmp_path: Path) -> None:
    table = tmp_path / "sites.json"
    result = _inspect(
        "--model", f"{nets}:SmallNet", "--input-shape", "4", "--data", "random", "--samples", "16", "--json", str(table)
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("| fc "))
    assert "| linear |" in row and "| 7 " in row  # 7 hidden units (the class's default width)
    assert f"{nets}:SmallNet: 1 site, 7 neurons" in result.stdout
    import json

    saved = json.loads(table.read_text())
    assert saved["model"] == f"{nets}:SmallNet" and saved["sites"][0]["min_index"] < 0
    recorded = (saved["input_shape"], saved["vocab_size"], saved["sites"][0]["activation"])
    assert recorded == ([4], None, "softplus(beta=1)")


def test_inspect_feeds_token_ids_to_a_model_that_reads_them(nets: Path) -> None:
    result = _inspect("--model", f"{nets}:TokenClassifier", "--input-shape", "6")
    assert result.exit_code == 2 and "give --vocab-size N if the model reads token ids" in result.stderr
    result = _inspect(
        "--model", f"{nets}:TokenClassifier", "--input-shape", "6", "--vocab-size", "20", "--data", "random"
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("| fc "))
    assert "| tanh " in row and "| 5 " in row and "| 100% " in row


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{nets}:SmallNet"], "a model of your own needs --input-shape"),
        (["{nets}:SmallNet", "--input-shape", "4", "--width", "8"], "--width sizes a zoo model"),
        (["mlp", "--input-shape", "4"], "--input-shape is for a model of your own"),
        (["{nets}:SmallNet", "--input-shape", "5"], "the model fails on a random input of shape (2, 5)"),
        (["{nets}:Missing", "--input-shape", "4"], "has no 'Missing'"),
        (["{nets}:SmallNet", "--input-shape", "4", "--relu-surrogate", "0"], "--relu-surrogate must be > 0"),
        (["mlp", "--relu-surrogate", "nan"], "--relu-surrogate must be > 0"),
        (["mlp", "--vocab-size", "20"], "--vocab-size is for a model of your own"),
        (["{nets}", "--input-shape", "4"], "name the model in the file"),
        (["lenet"], "or name your own as FILE.py:NAME with --input-shape"),
    ],
)
def test_inspect_refuses_a_wrongly_given_model_in_one_line(nets: Path, args: list[str], message: str) -> None:
    result = _inspect("--model", *(arg.format(nets=nets) for arg in args))
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.output
