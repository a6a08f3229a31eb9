"""Baselines (magnitude, Taylor, random; PDP; AC/DC): budgets, schedules, resume, the training driver."""
import math

import pytest
import torch

from npu_compress import models
from npu_compress.graph import unit_masks
from npu_compress.graph.masks import get_tensor
from npu_compress.graph_cost import predict, unit_costs
from npu_compress.pruners import PRUNERS
from npu_compress.pruners.acdc import AcdcPruner
from npu_compress.pruners.baselines import (MagnitudePruner, PrunerConfigError, RandomPruner, TaylorPruner,
                                            cubic_target, select_unpruned, unit_sums)
from npu_compress.pruners.pdp import PdpPruner
from npu_compress.pruners.select import measure
from npu_compress.training import Epochs, TrainConfig, clean_state_dict, train

PROFILE = "generic-4tops"
METHODS = {"magnitude": MagnitudePruner, "taylor": TaylorPruner, "random": RandomPruner, "pdp": PdpPruner,
           "acdc": AcdcPruner}
SCHEDULED = ["magnitude", "taylor", "random"]


def _make(method, budget, structure="channel", **kw):
    torch.manual_seed(0)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    return model, x, METHODS[method](model, (x,), PROFILE, budget, structure, **kw)


def _train_steps(model, x, pruner, n, lr=0.05, seed=1, each=None):
    """n SGD steps on random data, ``pruner.step()`` after each (as the driver does)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(n):
        loss = model(torch.randn(8, *x.shape[1:], generator=gen)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        pruner.step()
        if each is not None:
            each()


def _cost(p, keep):
    return measure(predict(p.graph, keep, p.profile), p.budget.kind)


def _assert_within_one_unit(p, result, target=None):
    target = p.target if target is None else target
    cost = measure(result.predicted, p.budget.kind)
    assert cost <= target * (1 + 1e-12)
    assert cost >= target - float(unit_costs(p.graph, p.profile, p.budget.kind, result.keep).max()) * (1 + 1e-9)


def _zeroed(model, graph, keep):
    """True when every entry a pruned unit touches is exactly zero."""
    return all(bool((get_tensor(model, name)[(mask == 0).expand(graph.param_shapes[name])] == 0).all())
               for name, mask in unit_masks(graph, keep.float()).items())


# ---------------------------------------------------------------- every method: the budget

def test_methods_are_registered():
    for name, cls in METHODS.items():
        assert PRUNERS[name] is cls and cls.name == name


@pytest.mark.parametrize("budget", ["latency=60%", "memory=50%"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_finalize_meets_budget_within_one_unit(method, budget):
    model, x, p = _make(method, budget, mask_steps=6)
    _train_steps(model, x, p, 6)
    result = p.finalize()
    _assert_within_one_unit(p, result)
    assert _zeroed(model, p.graph, result.keep) and result.achieved_ratio <= 1.0
    assert all(math.isfinite(v) for v in p.state().values())
    weights = {n: t.detach().clone() for n, t in model.state_dict().items()}
    _train_steps(model, x, p, 2)  # fine-tune: pruned units stay at zero
    assert _zeroed(model, p.graph, result.keep)
    assert any(not torch.equal(weights[n], t) for n, t in model.state_dict().items())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_block_structure(method):
    model, x, p = _make(method, "latency=60%", "block", mask_steps=4)
    _train_steps(model, x, p, 4)
    result = p.finalize()
    _assert_within_one_unit(p, result)
    assert _zeroed(model, p.graph, result.keep)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nm_structure(method):
    model, x, p = _make(method, "memory=80%", "nm", mask_steps=4)
    _train_steps(model, x, p, 4)
    result = p.finalize()
    n, m = p.graph.nm
    assert measure(result.predicted, p.budget.kind) <= p.target
    for name, first, count in p.graph.param_unit_ranges():
        kept = result.keep[first:first + count].view(-1, m).sum(1)
        assert bool((kept == n).all()) or bool((kept == m).all()), name  # N of every M, or dense


@pytest.mark.parametrize("method", SCHEDULED)
def test_nm_iterative_converts_weights_progressively(method):
    model, x, p = _make(method, "memory=80%", "nm", schedule="iterative", mask_steps=6, every=1)
    counts = []
    _train_steps(model, x, p, 6, each=lambda: counts.append(int(p.pruned.sum())))
    assert counts == sorted(counts) and counts[-1] > 0
    assert _cost(p, ~p.pruned) <= p.target
    result = p.finalize()
    assert not bool((result.keep & p.pruned).any()) and measure(result.predicted, p.budget.kind) <= p.target


# ---------------------------------------------------------------- iterative schedule

def test_cubic_target():
    assert cubic_target(10.0, 6.0, 0, 10) == 10.0
    assert cubic_target(10.0, 6.0, 5, 10) == pytest.approx(6.5)
    assert cubic_target(10.0, 6.0, 10, 10) == 6.0 == cubic_target(10.0, 6.0, 25, 10)


@pytest.mark.parametrize("budget", ["latency=60%", "memory=50%"])
@pytest.mark.parametrize("method", SCHEDULED)
def test_iterative_prunes_monotonically_along_the_cubic_schedule(method, budget):
    model, x, p = _make(method, budget, schedule="iterative", mask_steps=10, every=2)
    dense, counts = measure(p.dense, p.budget.kind), []

    def check():
        counts.append(int(p.pruned.sum()))
        keep = ~p.pruned
        assert _zeroed(model, p.graph, keep)  # pruned units are held at zero after every step
        if p.steps % 2 == 0:  # a re-selection step: cost follows T(s), within one unit below it
            target = cubic_target(dense, p.target, p.steps, 10)
            assert p.intermediate_target() == pytest.approx(target, rel=1e-12)
            cost = _cost(p, keep)
            assert cost <= target * (1 + 1e-12)
            assert cost >= target - float(unit_costs(p.graph, p.profile, p.budget.kind, keep).max()) * (1 + 1e-9)

    _train_steps(model, x, p, 10, each=check)
    assert counts == sorted(counts) and counts[0] == 0 < counts[-1]
    before = p.pruned.clone()
    result = p.finalize()
    assert torch.equal(result.keep, ~before)  # the schedule already ended at the budget
    _assert_within_one_unit(p, result)


@pytest.mark.parametrize("budget", ["latency=60%", "memory=50%"])
def test_select_unpruned_never_revives_a_pruned_unit(budget):
    _, _, p = _make("random", budget)
    pruned = torch.zeros(p.graph.num_units, dtype=torch.bool)
    pruned[[1, 5, 13]] = True
    dense = measure(p.dense, p.budget.kind)
    for frac in (1.0, 0.9, 0.7, 0.0):  # at the dense cost the shared selection would keep everything
        target = p.target + frac * (dense - p.target)
        keep = select_unpruned(p.graph, p.scores(), pruned, p.profile, p.budget, target)
        assert not bool((keep & pruned).any()) and _cost(p, keep) <= target
        slack = target - _cost(p, keep)  # and the slack is refilled: no unpruned unit still fits
        assert not bool((~keep & ~pruned & (unit_costs(p.graph, p.profile, p.budget.kind, keep) <= slack)).any())


# ---------------------------------------------------------------- Taylor

def test_taylor_scores_follow_gradients():
    model, x, p = _make("taylor", "latency=60%", ema_decay=0.5)
    with pytest.warns(RuntimeWarning, match="no gradient"):
        fallback = p.scores()  # nothing observed yet: magnitude
    assert torch.isfinite(fallback).all()
    _train_steps(model, x, p, 1, seed=1)
    first = p.scores()
    assert p.seen == 1 and float(first.sum()) > 0
    _train_steps(model, x, p, 1, seed=2)
    second = p.scores()
    assert not torch.allclose(first, second)
    for q in model.parameters():  # a step without backward: .grad is None, nothing to read
        q.grad = None
    p.step()
    assert torch.equal(p.scores(), second) and p.seen == 2


def test_taylor_score_is_the_ema_of_abs_weight_times_gradient():
    model, x, p = _make("taylor", "latency=60%", ema_decay=0.0)
    model(x).square().mean().backward()
    p.step()
    expected = unit_sums(p.graph, model, lambda _, q: q * q.grad, output_side=False).abs()
    assert torch.allclose(p.scores(), expected)


# ---------------------------------------------------------------- PDP

def test_pdp_has_no_parameters_and_meets_the_soft_budget():
    model, x, p = _make("pdp", "latency=60%", mask_steps=5)
    assert p.parameters() == []
    f = p.soft_keep()
    free = p._free  # the units held at f = 1 are outside the budget's sum
    assert abs(float((p.costs[free] * f.detach()[free]).sum()) - p.soft_budget) <= 1e-6 * p.soft_budget
    assert bool((f.detach()[p.fixed] == 1).all())
    assert f.requires_grad  # a function of the weights
    f[0].backward()
    conv = model.features[0][0].parametrizations.weight.original
    assert conv.grad is not None and float(conv.grad.abs().sum()) > 0


def test_pdp_mask_is_a_function_of_the_current_weights():
    model, x, p = _make("pdp", "memory=50%", mask_steps=5)
    with torch.no_grad():
        before = p.soft_keep()
        group = torch.tensor(list(p.graph.groups[-1]))  # the units of the last conv
        u = int(group[before[group].argmin()])
        rows = [s for s in p.graph.units[u].slices if s.param == "features.3.0.weight" and s.dim == 0]
        model.features[3][0].parametrizations.weight.original[rows[0].indices()] *= 10.0
        after = p.soft_keep()
    assert rows and float(after[u]) > float(before[u])
    tau0 = p.tau
    _train_steps(model, x, p, 5)
    assert p.tau == pytest.approx(tau0 * 1e-3, rel=1e-9)
    p.finalize()
    assert not hasattr(model.features[3][0], "parametrizations")


# ---------------------------------------------------------------- AC/DC

def _weights(p, model):
    """(n_units,) Σ|w| over each unit's conv / linear weight entries (channel: producer rows)."""
    return unit_sums(p.graph, model, lambda n, q: q.abs() if n.endswith(".0.weight") or n == "fc.weight" else None)


@pytest.mark.parametrize("structure", ["channel", "block"])
def test_acdc_alternates_and_ends_sparse(structure):
    model, x, p = _make("acdc", "latency=60%", structure, mask_steps=12, interval=2)
    assert [p.sparse_at(s) for s in range(1, 13)] == [False, False, True, True] * 3
    assert [p.sparse_at(s) for s in (13, 50)] == [True, True]
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for s in range(1, 13):
        loss = model(torch.randn(8, *x.shape[1:], generator=gen)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        before = {n: t.detach().clone() for n, t in model.state_dict().items()}
        p.step()  # step s has run; the model is now set up for step s + 1
        if p.sparse_at(s + 1):
            assert p.keep is not None and _zeroed(model, p.graph, p.keep)
        else:
            assert p.keep is None
        if s == 2:
            pruned, at_pruning = ~p.keep, before
            zeroed = {n: (m == 0).expand(p.graph.param_shapes[n]) for n, m in unit_masks(p.graph, p.keep.float()).items()}
            assert pruned.any()
        if s == 4:  # revived: block weights restart from zero, channel units resume where they were
            for name, where in zeroed.items():
                now = model.state_dict()[name][where]
                assert torch.equal(now, torch.zeros_like(now) if structure == "block" else at_pruning[name][where])
        if s == 5:  # one dense step later every pruned unit's weights are non-zero: regrown / resumed
            assert bool((_weights(p, model)[pruned] > 0).all())
    state = p.state()
    assert state["sparse"] == 1.0 and state["predicted"] <= p.target
    last = p.keep.clone()
    result = p.finalize()
    assert bool((result.keep | ~last).all())  # the final magnitude selection keeps the last sparse set
    _assert_within_one_unit(p, result)


def test_acdc_default_interval_and_short_phases():
    _, _, p = _make("acdc", "memory=50%", mask_steps=600)
    assert p.interval == 100 and not p.sparse_at(1) and p.sparse_at(600) and not p.sparse_at(500)
    _, _, q = _make("acdc", "memory=50%", mask_steps=3)  # interval 1: S D S, sparse from the first step
    assert q.interval == 1 and q.keep is not None and _zeroed(q.model, q.graph, q.keep)


# ---------------------------------------------------------------- resume and bad knobs

RESUME = [("magnitude", dict(schedule="iterative", every=1)), ("taylor", dict(schedule="iterative", every=2)),
          ("random", {}), ("pdp", {}), ("acdc", dict(interval=1))]


@pytest.mark.parametrize("done", [1, 2])  # acdc, interval 1: S D S D S; saved while dense (1) or sparse (2)
@pytest.mark.parametrize("method,kw", RESUME, ids=[m for m, _ in RESUME])
def test_state_dict_resumes_the_same_run(method, kw, done):
    model, x, p = _make(method, "memory=50%", mask_steps=5, **kw)
    _train_steps(model, x, p, done, seed=3)
    saved, weights = p.state_dict(), clean_state_dict(model)
    twin = models.create("digits-cnn")
    twin.load_state_dict(weights)
    q = METHODS[method](twin, (x,), PROFILE, "memory=50%", mask_steps=5, **kw)
    q.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(clean_state_dict(model).values(), clean_state_dict(twin).values()))
    torch.manual_seed(4)
    _train_steps(model, x, p, 3, seed=5)
    torch.manual_seed(4)
    _train_steps(twin, x, q, 3, seed=5)
    assert torch.equal(p.finalize().keep, q.finalize().keep)


@pytest.mark.parametrize("method,kw,match", [
    ("magnitude", dict(schedule="cubic"), "schedule='cubic'.*'oneshot', 'iterative'"),
    ("magnitude", dict(norm="l3"), "norm='l3'.*'l1', 'l2'"),
    ("random", dict(every=0), "every must be a positive integer"),
    ("taylor", dict(mask_steps=0), "mask_steps must be a positive integer"),
    ("taylor", dict(ema_decay=1.0), r"ema_decay must be a number in \[0, 1\)"),
    ("taylor", dict(ema_decay="0.5"), "ema_decay"),
    ("random", dict(seed="a"), "seed must be an integer"),
    ("acdc", dict(interval=0), "interval must be a positive integer"),
    ("acdc", dict(norm="max"), "norm='max'"),
])
def test_bad_knobs_raise_config_errors(method, kw, match):
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    with pytest.raises(PrunerConfigError, match=match) as err:
        METHODS[method](model, (x,), PROFILE, "latency=60%", **kw)
    assert isinstance(err.value, ValueError)


# ---------------------------------------------------------------- the training driver


@pytest.mark.parametrize("method,kw", [("magnitude", dict(schedule="iterative")), ("taylor", {}), ("random", {}),
                                       ("pdp", {}), ("acdc", {})])
def test_end_to_end_through_the_driver(method, kw, digits_small):
    data, x = digits_small, models.example_input("digits-cnn")
    steps = 2 * len(data.loaders(64)[0])
    holder = {}

    def make(m):
        holder["p"] = METHODS[method](m, (x,), PROFILE, "latency=60%", mask_steps=steps, **kw)
        return holder["p"]

    torch.manual_seed(0)
    model = models.create("digits-cnn")
    res = train(model, data, TrainConfig(Epochs(1, 2, 1), progress=False), make_pruner=make)
    p = holder["p"]
    assert [h["phase"] for h in res.history] == ["warmup", "mask", "mask", "finetune"]
    assert res.prune_result is p.result and res.prune_result.achieved_ratio <= 1.0
    _assert_within_one_unit(p, res.prune_result)
    assert _zeroed(model, p.graph, res.prune_result.keep) and math.isfinite(res.accuracy)
