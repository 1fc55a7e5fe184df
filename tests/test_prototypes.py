"""The prototype network grown by splitting: its splits in float64 (the function and every loss term kept at eps =
0, the second-order loss change, S against autograd's Hessian of the loss in the split), the baselines' surgery,
the elastic deformation against scipy, and tiny end-to-end runs, killed and resumed."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.ndimage import gaussian_filter, map_coordinates
from test_cli import assert_png, invoke, numbers
from test_data import write_mnist
from test_mnist_npm import write_folder
from torch.func import functional_call

from splitgrow import ChannelGraph, SplitRequest, SplittableNetwork, split_network, splitting_matrices
from splitgrow.config import build_config, load_config
from splitgrow.experiments.common import Reporter, torch_threads
from splitgrow.experiments.prototypes import (
    EXCLUDED,
    EXPERIMENT,
    SITE,
    PrototypesConfig,
    _baseline_stage,
    _Interrupted,
    children,
    elastic_deformation,
    interpretability_ranks,
    make_closure,
    run_seed,
)
from splitgrow.prototype_network import PrototypeNetwork, prototype_loss

DTYPE = torch.float64
D = 40

TINY = {
    "train_samples": 48,
    "test_samples": 16,
    "batch_size": 16,
    "prototypes": 3,
    "epochs_per_phase": 1,
    "statistics_batches": 2,
    "probe_prototypes": 2,
    "probe_epochs": 1,
}


def network(count: int, seed: int, distance: str = "euclidean", temperature: float = 0.5) -> PrototypeNetwork:
    """A float64 network whose prototypes sit among the codes of the test images (distances of order 1), with
    unequal weights omega (one random split first), so that no term of S is trivial."""
    generator = torch.Generator().manual_seed(seed)
    model = PrototypeNetwork(count, distance=distance, temperature=temperature, generator=generator).to(DTYPE)
    with torch.no_grad():
        codes = model.encode(images(8, seed))
        model.prototypes.prototypes.copy_(codes[:count] + 0.3 * torch.randn(count, D, generator=generator, dtype=DTYPE))
        model.classifier.weight.mul_(3.0)
    direction = torch.randn(D, generator=generator, dtype=DTYPE)
    SplittableNetwork(model, images(2, seed), exclude=EXCLUDED).split([SplitRequest(SITE, 0, direction)], 0.2)
    return model.eval()


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand((count, 1, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def labels(count: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 10, (count,), generator=torch.Generator().manual_seed(seed))


def everything(model: PrototypeNetwork, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's outputs and every loss term."""
    with torch.no_grad():
        outputs = model(x)
        loss, terms = prototype_loss(outputs, x, y)
    names = ("logits", "reconstruction", "nearest_image", "nearest_prototype")
    return {**dict(zip(names, outputs)), "loss": loss, **{f"term {k}": v for k, v in terms.items()}}


def test_the_prototype_layer_is_a_loss_site_and_nothing_else_grows():
    model = network(3, 0)
    graph = ChannelGraph(model, images(2, 0), exclude=EXCLUDED)
    splittable = {name: site for name, site in graph.sites.items() if site.splittable}
    assert list(splittable) == [SITE]
    site = splittable[SITE]
    assert (site.engine, site.num_neurons, site.neuron_dim) == ("loss", 4, D)
    consumers = graph.coupled_modules(SITE)["consumers"]
    assert sorted(consumers) == ["classifier", "nearest_image", "nearest_prototype"]


def test_a_split_with_eps_zero_keeps_the_function_and_every_loss_term(generator):
    model = network(3, 1)
    x, y = images(10, 2), labels(10, 2)
    before = everything(model, x, y)
    omega = model.nearest_image.omega.clone()
    net = SplittableNetwork(model, x[:2], exclude=EXCLUDED)
    requests = [SplitRequest(SITE, j, torch.randn(D, generator=generator, dtype=DTYPE)) for j in (1, 3)]
    net.split(requests, 0.0)
    assert model.num_prototypes == 6 and model.classifier.weight.shape == (10, 6)
    # the offspring's weights in R1 and R2 are the parent's, halved: they still add up to 1
    expected = torch.stack([omega[0], omega[1] / 2, omega[1] / 2, omega[2], omega[3] / 2, omega[3] / 2])
    for regulariser in (model.nearest_image, model.nearest_prototype):
        torch.testing.assert_close(regulariser.omega, expected, rtol=0, atol=0)
    after = everything(model, x, y)
    for name, value in before.items():
        torch.testing.assert_close(after[name], value, rtol=1e-13, atol=1e-12, msg=name)


def matrices_of(model: PrototypeNetwork, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The prototypes' splitting matrices by splitgrow's loss engine (dense, float64)."""
    closure = make_closure(build_config(PrototypesConfig, {}))
    graph = ChannelGraph(model, x[:2], exclude=EXCLUDED)
    return splitting_matrices(model, graph, [(x, y)], closure=closure, sites=[SITE])[SITE]


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_the_loss_change_of_a_small_split_is_second_order(generator, distance):
    model = network(3, 3, distance=distance)
    x, y = images(12, 4), labels(12, 4)
    matrices = matrices_of(model, x, y)
    epsilon = 1e-3
    directions = {j: torch.randn(D, generator=generator, dtype=DTYPE) for j in (0, 2)}
    directions = {j: v / v.norm() for j, v in directions.items()}
    predicted = sum(0.5 * epsilon**2 * float(v @ matrices[j] @ v) for j, v in directions.items())
    before = float(everything(model, x, y)["loss"])
    SplittableNetwork(model, x[:2], exclude=EXCLUDED).split(
        [SplitRequest(SITE, j, v) for j, v in directions.items()], epsilon
    )
    measured = float(everything(model, x, y)["loss"]) - before
    assert abs(predicted) > 1e-8
    assert measured == pytest.approx(predicted, rel=0.02)


def split_hessian(model: PrototypeNetwork, channel: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian in delta (40,) of the loss of the network whose prototype ``channel`` is replaced by theta + delta
    and theta - delta (columns of W and weights omega halved), at delta = 0, by autograd through the whole model."""
    grown = copy.deepcopy(model)
    report = split_network(grown, ChannelGraph(grown, x[:2]), [SplitRequest(SITE, channel)], 0.0)
    ((_, plus, minus),) = report.offspring[0]
    parameters = {name: p.detach() for name, p in grown.named_parameters()}
    key = "prototypes.prototypes"

    def loss(delta: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([plus, minus])
        shift = torch.zeros_like(parameters[key]).index_put((rows,), torch.stack([delta, -delta]))
        moved = {**parameters, key: parameters[key] + shift}
        return prototype_loss(functional_call(grown, moved, (x,)), x, y)[0]

    return torch.autograd.functional.hessian(loss, torch.zeros(D, dtype=DTYPE), vectorize=True)


def test_splitting_matrices_equal_the_hessian_of_the_loss_in_the_split():
    model = network(3, 5)
    x, y = images(10, 6), labels(10, 6)
    matrices = matrices_of(model, x, y)
    assert matrices.shape == (4, D, D)
    for channel in (0, 3):
        expected = split_hessian(model, channel, x, y)
        scale = float(expected.abs().max())
        assert scale > 1e-3
        torch.testing.assert_close(matrices[channel], expected, rtol=0, atol=1e-9 * scale)


def test_each_baseline_grows_as_described(generator):
    config = build_config(PrototypesConfig, {"epsilon": 0.1})
    x, y = images(6, 7), labels(6, 7)
    reference = network(3, 8)
    grown = {}
    for method in ("random_split", "net2net", "new_init"):
        model = copy.deepcopy(reference)
        optimizer = torch.optim.Adam(model.parameters())
        net = SplittableNetwork(model, x[:2], exclude=EXCLUDED)
        stage = _baseline_stage(method, net, optimizer, config, torch.Generator().manual_seed(0))
        grown[method] = (model, stage)
        assert model.num_prototypes == 5 and model.classifier.weight.shape == (10, 5), method
        # the weights in R1 and R2 still add up to what they did (1, up to float32 rounding of the initial 1/m)
        for regulariser in (model.nearest_image, model.nearest_prototype):
            assert float(regulariser.omega.sum()) == pytest.approx(float(reference.nearest_image.omega.sum())), method
    old = reference.prototypes.prototypes
    model, stage = grown["net2net"]  # an exact copy: the same function
    j = stage["channel"]
    torch.testing.assert_close(model.prototypes.prototypes[j + 1], old[j], rtol=0, atol=0)
    torch.testing.assert_close(everything(model, x, y)["loss"], everything(reference, x, y)["loss"])
    model, stage = grown["random_split"]  # offspring 2 eps apart, around the parent
    j = stage["channel"]
    offspring = model.prototypes.prototypes[j : j + 2]
    assert float((offspring[0] - offspring[1]).detach().norm()) == pytest.approx(0.2)
    torch.testing.assert_close(offspring.mean(0), old[j])
    model, stage = grown["new_init"]  # a new U(0, 1) prototype last, with a random column of W and weight 1/5
    assert stage == {"kind": "new", "channel": 4}
    new = model.prototypes.prototypes[4]
    assert bool(((new >= 0) & (new <= 1)).all()) and not torch.equal(new, old[3])
    assert float(model.classifier.weight[:, 4].detach().abs().min()) > 0
    assert float(model.nearest_prototype.omega[4]) == pytest.approx(0.2)
    torch.testing.assert_close(model.classifier.weight[:, :4], reference.classifier.weight)


def test_the_tree_follows_the_surgery():
    """A split inserts its copy right after the original: the tree's children are where the surgery put them."""
    model = network(3, 9)
    report = SplittableNetwork(model, images(2, 9), exclude=EXCLUDED).split([SplitRequest(SITE, 2)], 0.0)
    assert report.offspring == [[(SITE, 2, 3)]]
    assert children(4, {"kind": "split", "channel": 2}) == [[0], [1], [2, 3], [4]]
    assert children(2, {"kind": "new", "channel": 2}) == [[0], [1]]


def test_interpretability_ranks_count_the_chosen_prototype_among_the_phase():
    measures = {"nearest_code_distance": [0.5, 2.0, 1.0], "grayness": [0.1, 0.1, 0.3], "class_entropy": [1, 2, 3]}
    run = {
        "phases": [{"phase": 0, "prototypes": 1}, {"phase": 1, "prototypes": 3, **measures}],
        "stages": [{"kind": "split", "channel": 0}, {"kind": "split", "channel": 1}],
    }
    assert interpretability_ranks(run) == [
        {"phase": 1, "prototypes": 3, "ranks": {"nearest_code_distance": 1, "grayness": 2, "class_entropy": 2}}
    ]


def test_elastic_deformation_is_scipys_inside_the_image():
    x = images(3, 10)
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    deformed = elastic_deformation(x, 4.0, 20.0, generator)
    generator.set_state(state)  # the same draws, as Li et al.'s scipy code would smooth and sample them
    field = torch.rand((6, 1, 28, 28), generator=generator, dtype=DTYPE).numpy() * 2 - 1
    grid = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    compared = 0
    for n in range(3):
        shifts = [20.0 * gaussian_filter(field[2 * n + k, 0], 4.0, mode="constant") for k in (0, 1)]
        coordinates = [grid[k] + shifts[k] for k in (0, 1)]
        expected = map_coordinates(x[n, 0].numpy(), coordinates, order=1, mode="constant")
        inside = (coordinates[0] >= 0) & (coordinates[0] <= 27) & (coordinates[1] >= 0) & (coordinates[1] <= 27)
        np.testing.assert_allclose(deformed[n, 0].numpy()[inside], expected[inside], rtol=0, atol=1e-12)
        compared += int(inside.sum())
    assert compared > 1000  # most pixels move by less than the border
    assert not torch.allclose(deformed, x, atol=0.05)
    torch.testing.assert_close(elastic_deformation(x, 4.0, 0.0, generator), x)


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mnist-npm")
    rng = np.random.default_rng(0)
    write_folder(root, [rng.integers(0, 256, (8, 784), dtype=np.uint8) for _ in range(10)])
    return root


def tiny_config(**changes) -> PrototypesConfig:
    return build_config(PrototypesConfig, {**TINY, **changes})


def test_run_prototypes_end_to_end_on_the_offline_digits(digits_root, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in TINY.items()))
    out = tmp_path / "out"
    result = invoke(
        "run", "prototypes", "--config", str(config), "--set", f"data_root={digits_root}", "--out", str(out), "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert "Data: the 10,000 MNIST digits of the npm package mnist@1.1.0" in result.stdout
    assert "splitting (ours)" in result.stdout and "Figure 2b, at 2 prototypes" in result.stdout
    results = json.loads((out / "seed-0" / "results.json").read_text())
    assert results["data"] == {
        "description": "the 10,000 MNIST digits of the npm package mnist@1.1.0",
        "train_images": 48,
        "test_images": 16,
        "statistics_images": 32,
    }
    methods = results["methods"]
    assert list(methods) == ["splitting", "random_split", "net2net", "new_init", "scratch"]
    for method, run in methods.items():
        assert run["prototypes"] == 3, method
        assert [p["prototypes"] for p in run["phases"]] == ([3] * 3 if method == "scratch" else [1, 2, 3]), method
        assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3], method
        assert len(run["stages"]) == (0 if method == "scratch" else 2), method
        assert np.asarray(run["phases"][-1]["decoded"]).shape == (3, 28, 28), method
    splitting = methods["splitting"]
    for stage, phase in zip(splitting["stages"], splitting["phases"]):
        # the grower split the prototype with the smallest index of the phase, and said so
        assert stage["channel"] == int(np.argmin(stage["indexes"])) and stage["index"] == min(stage["indexes"])
        assert len(stage["indexes"]) == phase["prototypes"]
    probe = splitting["probe"]
    assert probe["prototypes"] == 2 and len(probe["trained_decrease"]) == 2
    assert probe["indexes"] == pytest.approx(splitting["stages"][1]["indexes"])
    # at probe_epsilon the decrease of a split is second order: -eps^2/2 lambda
    assert probe["immediate_decrease"] == pytest.approx(probe["predicted_immediate_decrease"], rel=0.05, abs=1e-9)
    for name in ("tree.png", "trees.png", "training_loss.png", "indexes.png"):
        assert_png(out / "seed-0" / name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["scratch"]["final_training_loss"] == [methods["scratch"]["epochs"][-1]["loss"]]
    assert summary["interpretability"]["splitting"]["stages"] == 1  # the split at 1 prototype is no choice
    # the same seed gives the same numbers (with the experiment's thread count), and each method's are its own
    config = tiny_config(data_root=str(digits_root), methods=["splitting", "new_init"])
    with torch_threads(EXPERIMENT.threads):
        again = json.loads(json.dumps(run_seed(config, 0, Reporter(False), workdir=tmp_path / "again")))
    assert again["methods"] == {method: methods[method] for method in ("splitting", "new_init")}


def test_a_killed_run_resumes_to_the_same_numbers(digits_root, tmp_path):
    config = tiny_config(data_root=str(digits_root), methods=["splitting", "new_init"], probe_prototypes=0)
    with torch_threads(EXPERIMENT.threads):
        whole = run_seed(config, 3, Reporter(False), workdir=tmp_path / "whole")
        with pytest.raises(_Interrupted):  # killed after the splitting run's second epoch, mid-growth
            run_seed(config, 3, Reporter(False), workdir=tmp_path / "killed", stop_after_epochs=2)
        resumed = run_seed(config, 3, Reporter(False), workdir=tmp_path / "killed", resume=True)
    assert numbers(resumed) == numbers(whole)


def test_full_mnist_through_the_idx_loader(tmp_path):
    write_mnist(tmp_path, train=40, test=12)
    config = tiny_config(
        dataset="mnist", data_root=str(tmp_path), train_samples=32, test_samples=0, methods=["scratch"], prototypes=2
    )
    with torch_threads(EXPERIMENT.threads):
        results = run_seed(config, 0, Reporter(False), workdir=tmp_path / "seed-0")
    assert results["data"]["description"] == "MNIST (the IDX files)"
    assert (results["data"]["train_images"], results["data"]["test_images"]) == (32, 12)


def test_user_errors_are_one_line(tmp_path):
    cases = [
        (["--set", f"data_root={tmp_path / 'nowhere'}"], "the data folder does not exist"),
        (["--set", "probe_prototypes=9"], "probe_prototypes must be 0 (no probe) or between"),
        (["--set", "distance=manhattan"], "distance must be one of euclidean, squared"),
        (["--set", "download=true"], "download applies to dataset mnist only"),
        (["--set", "start_prototypes=7"], "need 1 <= start_prototypes <= prototypes"),
        (["--set", "methods=[splitting, pruning]"], "unknown method(s) ['pruning'] in methods"),
    ]
    for arguments, message in cases:
        result = invoke("run", "prototypes", *arguments, "--out", str(tmp_path / "out"), "--quiet")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("splitgrow: error:") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_the_shipped_configs_list_every_setting():
    folder = Path(__file__).resolve().parents[1] / "configs"
    settings = {f.name for f in dataclasses.fields(PrototypesConfig)}
    for name in ("prototypes.yaml", "prototypes-paper.yaml"):
        assert set(yaml.safe_load((folder / name).read_text())) == settings, name
    assert load_config(PrototypesConfig, folder / "prototypes.yaml") == PrototypesConfig()
    paper = load_config(PrototypesConfig, folder / "prototypes-paper.yaml")
    assert (paper.prototypes, paper.epochs_per_phase, paper.dataset, paper.train_samples) == (15, 60, "mnist", 0)
