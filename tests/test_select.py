"""Hard selection on channel graphs: the incremental sweep (ChannelCosts) against whole-model predictions."""
import pytest
import torch

from npu_compress import Budget, graph, load_profile, models
from npu_compress.graph_cost import ChannelCosts, predict, unit_costs
from npu_compress.hardware.budget import measure
from npu_compress.pruners.select import mandatory_keep, select_by_bisection, select_keep

PROFILE = load_profile("ethos-u55-128")


def _graph(name):
    torch.manual_seed(0)
    model, x = models.create(name).eval(), models.example_input(name)
    return graph.build(model, (x,), PROFILE)


@pytest.mark.parametrize("name,kind", [("resnet20", "latency"), ("vit-tiny", "memory"), ("unet-small", "latency")])
def test_flips_move_the_total_exactly_as_predict_does(name, kind):
    g = _graph(name)
    gen = torch.Generator().manual_seed(3)
    keep = torch.ones(g.num_units, dtype=torch.bool)
    state = ChannelCosts(g, PROFILE, kind, keep)
    assert state.total == pytest.approx(measure(predict(g, keep, PROFILE), kind), rel=1e-12)
    flips = 0
    for u in torch.randint(g.num_units, (60,), generator=gen).tolist():
        trial = state.keep.clone()
        trial[u] = ~trial[u]
        if not all(trial[list(grp)].any() for grp in g.groups):
            continue  # would empty a group
        before, d = state.total, state.delta(u)
        state.flip(u)
        flips += 1
        truth = measure(predict(g, state.keep, PROFILE), kind)
        assert state.total == pytest.approx(truth, rel=1e-9)
        assert before + d == pytest.approx(truth, rel=1e-9)
    assert flips >= 30
    # unit_costs is the same state's deltas: each the exact cost of that flip
    c = unit_costs(g, PROFILE, kind, state.keep)
    assert c.shape == (g.num_units,) and float(c.max()) > 0


@pytest.mark.parametrize("name", ["resnet20", "vit-tiny", "unet-small"])
@pytest.mark.parametrize("kind,frac", [("latency", 0.7), ("latency", 0.35), ("memory", 0.5)])
def test_sweep_selects_what_bisection_and_fill_select(name, kind, frac):
    """Same units as the general path (bisect the prefix, fill round by round), every unit in budget,
    and no unkept unit still fits."""
    g = _graph(name)
    scores = torch.rand(g.num_units, generator=torch.Generator().manual_seed(1)).double()
    dense = measure(predict(g, torch.ones(g.num_units, dtype=torch.bool), PROFILE), kind)
    budget = Budget.parse(f"{kind}={int(frac * 100)}%")
    target = frac * dense
    keep = select_keep(g, scores, PROFILE, budget, target)
    # the general path run to completion (its default stops filling after 64 rounds)
    assert torch.equal(keep, select_by_bisection(g, scores, PROFILE, budget, target, max_fill_rounds=10_000))
    cost = measure(predict(g, keep, PROFILE), kind)
    assert cost <= target
    assert bool((keep | ~mandatory_keep(g, scores)).all())  # the best unit of every group stays
    slack = target - cost
    assert not bool((~keep & (unit_costs(g, PROFILE, kind, keep) <= slack)).any())
