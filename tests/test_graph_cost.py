"""The graph's predicted cost of a keep-set equals estimate() of the pruned model; unit costs are exact flips."""
import pytest
import torch

from npu_compress import WeightFormat, estimate, graph, load_profile, models
from npu_compress.graph_cost import predict, unit_costs, weight_formats


def _random_keep(g, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(len(g.units), generator=gen) > frac
    for group in g.groups:
        if not keep[list(group)].any():
            keep[group[0]] = True
    return keep


@pytest.mark.parametrize("name", models.names())
def test_predicted_cost_equals_estimate_of_pruned_model(name):
    p = load_profile("ethos-u55-128")
    model, x = models.create(name).eval(), models.example_input(name)
    g = graph.build(model, (x,), p)
    for frac in (0.3, 0.7):
        keep = _random_keep(g, frac, seed=int(frac * 10))
        actual = estimate(graph.remove_pruned(model, g, keep), x, p)
        predicted = predict(g, keep, p)
        assert predicted.latency_s == pytest.approx(actual.latency_s, rel=1e-12, abs=0)
        assert (predicted.memory_bytes, predicted.macs, predicted.params, predicted.peak_activation_bytes) == \
               (actual.memory_bytes, actual.macs, actual.params, actual.peak_activation_bytes)


@pytest.mark.parametrize("name,kind", [("resnet20", "latency"), ("vit-tiny", "memory"), ("unet-small", "latency")])
def test_unit_cost_is_the_cost_of_removing_that_unit(name, kind):
    p = load_profile("generic-4tops")
    model, x = models.create(name).eval(), models.example_input(name)
    g = graph.build(model, (x,), p)
    keep = _random_keep(g, 0.3, seed=1)
    c = unit_costs(g, p, kind, keep)
    assert c.shape == (len(g.units),) and bool((c >= 0).all()) and float(c.max()) > 0
    measure = (lambda r: r.latency_s) if kind == "latency" else (lambda r: r.memory_bytes)
    base = measure(predict(g, keep, p))
    for u in torch.randperm(len(g.units), generator=torch.Generator().manual_seed(0))[:6].tolist():
        flipped = keep.clone()
        flipped[u] = ~flipped[u]
        try:
            g.check_keep(flipped)
        except Exception:
            continue  # would empty a group
        assert abs(measure(predict(g, flipped, p)) - base) == pytest.approx(float(c[u]), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("structure", ["block", "nm"])
def test_block_and_nm_prediction_matches_packed_estimate(structure):
    p = load_profile("generic-4tops")
    model, x = models.create("resnet20").eval(), models.example_input("resnet20")
    g = graph.build(model, (x,), p, structure=structure)
    keep = torch.rand(len(g.units), generator=torch.Generator().manual_seed(0)) > 0.5
    formats = weight_formats(g, keep)
    assert formats and all(isinstance(f, WeightFormat) for f in formats.values())
    predicted = predict(g, keep, p)
    assert predicted.latency_s == pytest.approx(estimate(model, x, p, formats=formats).latency_s, rel=1e-12)
    dense = estimate(model, x, p)
    assert predicted.memory_bytes < dense.memory_bytes
    c = unit_costs(g, p, "memory", keep)
    assert c.shape == (len(g.units),) and float(c.min()) >= 0 and float(c.max()) > 0
