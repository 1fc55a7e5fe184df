"""Firefly growth: new neurons scored by their first-order loss decrease, ranked with splits (float64)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from deep_helpers import loss_of, zoo_model

from splitgrow import SplittableNetwork
from splitgrow.firefly import FireflyOptions, new_neuron_candidates, select_growth
from splitgrow.graph import ChannelGraph, GraphError
from splitgrow.surgery import NewNeuron, split_network


def _candidates(architecture: str, steps: int, seed: int = 1, per_site: int = 2):
    model, inputs, targets = zoo_model(architecture, seed=seed)
    graph = ChannelGraph(model, inputs)
    options = FireflyOptions(candidates_per_site=per_site, steps=steps)
    found = new_neuron_candidates(model, graph, [(inputs, targets)], F.cross_entropy, options=options, seed=seed)
    return model, inputs, targets, found


@pytest.mark.parametrize(("architecture", "steps"), [("mlp", 2), ("resnet", 1), ("concat", 2), ("mobilenetv1", 0)])
def test_a_new_neurons_first_order_score_is_the_loss_change_of_a_small_step(architecture, steps):
    model, inputs, targets, candidates = _candidates(architecture, steps=steps, per_site=1 if steps < 2 else 2)
    before = loss_of(model, inputs, targets)
    # every site's best candidate (the deep sites of the random zoo networks have vanishing gradients)
    best = {}
    for candidate in candidates:
        if candidate.gradient_norm > best.get(candidate.site, (0.0, None))[0]:
            best[candidate.site] = (candidate.gradient_norm, candidate)
    checked = 0
    for norm, candidate in best.values():
        if norm < 1e-6:
            continue
        step = 1e-4
        trial = copy.deepcopy(model)
        split_network(trial, ChannelGraph(trial, inputs), [candidate.new_neuron(step)], 0.0, allow_inexact=True)
        assert loss_of(trial, inputs, targets) - before == pytest.approx(-step * norm, rel=0.01), candidate.site
        checked += 1
        untouched = copy.deepcopy(model)  # with a zero step the function is unchanged
        split_network(untouched, ChannelGraph(untouched, inputs), [candidate.new_neuron(0.0)], 0.0, allow_inexact=True)
        assert loss_of(untouched, inputs, targets) == pytest.approx(before, abs=1e-14)
    assert checked >= 2


def test_a_few_ascent_steps_raise_the_candidates_scores():
    *_, drawn = _candidates("mlp", steps=0)
    *_, tuned = _candidates("mlp", steps=5)
    assert [c.site for c in drawn] == [c.site for c in tuned]
    assert sum(c.gradient_norm for c in tuned) > 1.5 * sum(c.gradient_norm for c in drawn)
    for candidate, start in zip(tuned, drawn):  # the ascent keeps the norm it started with
        assert float(candidate.parameters.norm()) == pytest.approx(float(start.parameters.norm()), rel=1e-12)


def test_splits_and_new_neurons_are_ranked_together_by_their_predicted_change():
    model, inputs, targets, candidates = _candidates("mlp", steps=2)
    net = SplittableNetwork(model, inputs)
    results = net.splitting([(inputs, targets)], F.cross_entropy, sites=["hidden.3"])
    splits = int((results["hidden.3"].indexes < 0).sum())
    assert splits > 0
    common = {"epsilon": 0.1, "graph": net.graph}
    only_splits = select_growth(results, candidates, max_count=50, options=FireflyOptions(new_step=0.0), **common)
    assert len(only_splits) == splits and not any(isinstance(r, NewNeuron) for r in only_splits)
    large = FireflyOptions(new_step=10.0)
    first = select_growth(results, candidates, max_count=2, options=large, **common)
    assert all(isinstance(r, NewNeuron) for r in first)  # a first-order gain this large comes first
    mixed = select_growth(results, candidates, max_count=50, **common)
    before = loss_of(model, inputs, targets)
    report = net.split(mixed, 0.1)
    assert report.parameters_after > report.parameters_before
    assert loss_of(model, inputs, targets) < before
    new = [r for r in mixed if isinstance(r, NewNeuron)]
    assert len(mixed) - len(new) == splits and {r.site for r in new} == {"hidden.1"}
    # hidden.3 has every channel split in this step: its new neurons wait for the next one, and say so
    assert "every channel is already split" in mixed.skipped["hidden.3 (a new neuron)"]


def test_output_weights_of_the_wrong_shape_are_refused_before_anything_changes():
    model, inputs, _ = zoo_model("mlp")
    graph = ChannelGraph(model, inputs)
    site = graph.sites["hidden.1"]
    wrong = NewNeuron(
        site.name, torch.ones(site.neuron_dim, dtype=torch.float64), output={"hidden.3.weight": torch.ones(3)}
    )
    with pytest.raises(GraphError, match=r"hidden.3.weight' must be finite with shape"):
        split_network(model, graph, [wrong], 0.0)
    unknown = NewNeuron(
        site.name, torch.ones(site.neuron_dim, dtype=torch.float64), output={"classifier.weight": torch.ones(1)}
    )
    with pytest.raises(GraphError, match="its consumers: hidden.3.weight"):
        split_network(model, graph, [unknown], 0.0)
    assert model.hidden[1].out_features == 4


def test_an_empty_batch_changes_no_candidate():
    model, inputs, targets = zoo_model("mlp", width=4, seed=1)
    graph = ChannelGraph(model, inputs)
    options = FireflyOptions(candidates_per_site=2, steps=1)
    plain = new_neuron_candidates(model, graph, [(inputs, targets)], F.cross_entropy, options=options)
    empty = (inputs[:0], targets[:0])
    padded = new_neuron_candidates(model, graph, [empty, (inputs, targets), empty], F.cross_entropy, options=options)
    assert [c.gradient_norm for c in padded] == [c.gradient_norm for c in plain] and plain
