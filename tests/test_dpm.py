"""DPM: linear decay to zero, self-rectifying releases under the budget, wrapping SMART and baselines, resume."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from npu_compress import BudgetError, NpuCompressError, load_dataset, models
from npu_compress.graph import ParamSlice
from npu_compress.graph_cost import predict, unit_costs
from npu_compress.pruners.base import Pruner
from npu_compress.pruners.dpm import DecayConfigError, DecayPruning
from npu_compress.pruners.importance import unit_sq_norms
from npu_compress.pruners.select import measure, nm_keep
from npu_compress.training import Epochs, TrainConfig, clean_state_dict, train

PROFILE = "generic-4tops"
BUDGET = {"channel": "latency=60%", "block": "latency=60%", "nm": "memory=70%"}  # nm: 50% is below the floor


class _Magnitude(Pruner):
    """The smallest base: units ranked by the squared norm of their output-side weights."""

    def scores(self):
        return unit_sq_norms(self.graph, self.model)


def _model():
    return models.create("digits-cnn"), models.example_input("digits-cnn")


def _unit_norm(model, graph, u):
    """‖entries of unit u‖ from its slices (parameters only), independent of dpm.py's tables."""
    params = dict(model.named_parameters())
    total = 0.0
    for sl in graph.units[u].slices:
        if sl.param not in params:
            continue  # BN running statistics are buffers: not decayed
        w = params[sl.param].detach().double()
        part = (w.index_select(sl.dim, sl.indices()) if isinstance(sl, ParamSlice)
                else w.reshape(w.shape[0], -1)[sl.rows, sl.cols])
        total += float(part.pow(2).sum())
    return math.sqrt(total)


def _step(model, opt, pruner, extra=None):
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    loss = F.cross_entropy(model(x), y)
    if extra is not None:
        loss = loss + extra()
    opt.zero_grad()
    loss.backward()
    opt.step()
    pruner.step()


def _max_unit_cost(p, keep):
    """The most one budget unit can cost: a unit (channel / block), a whole weight's N:M conversion (nm)."""
    if p.graph.structure.value != "nm":
        return float(unit_costs(p.graph, p.profile, p.budget.kind, keep).max())
    dense, ones = measure(p.dense, p.budget.kind), torch.ones(p.graph.num_units, dtype=torch.double)
    return max(dense - measure(predict(p.graph, nm_keep(p.graph, ones, {name}), p.profile), p.budget.kind)
               for name, _, _ in p.graph.param_unit_ranges())


def _assert_budget(p, keep):
    """The true cost is within the budget, and within one unit's cost of it."""
    cost = measure(p.result.predicted, p.budget.kind)
    assert cost <= p.target * (1 + 1e-12)
    assert cost >= p.target - _max_unit_cost(p, keep) * (1 + 1e-9)


# ---------------------------------------------------------------- (1) Smooth Pruning

@pytest.mark.parametrize("structure", ["channel", "block", "nm"])
def test_chosen_units_decay_linearly_to_zero_while_training(structure):
    model, x = _model()
    n_steps, decide_at = 5, 2
    p = DecayPruning.wrap(_Magnitude(model, (x,), PROFILE, BUDGET[structure], structure), steps=n_steps,
                          decide_at=decide_at, mask_steps=decide_at + n_steps, t_rate=math.inf)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(decide_at):
        _step(model, opt, p)
    assert p.decided and p.k == 0
    chosen = p.decaying.nonzero().flatten().tolist()
    assert chosen and not p.decaying.all()
    if len(chosen) > 40:  # N:M: ~10^5 single weights; check a sample by slices, all of them by the tables
        chosen = [chosen[i] for i in torch.randperm(len(chosen))[:40].tolist()]
    x0 = {u: _unit_norm(model, p.graph, u) for u in chosen}
    assert all(v > 0 for v in x0.values())
    for k in range(1, n_steps + 1):
        _step(model, opt, p)
        assert p.k == k
        for u in chosen:
            want = (n_steps - k) / n_steps * x0[u]
            got = _unit_norm(model, p.graph, u)
            if k < n_steps:
                assert got == pytest.approx(want, rel=1e-6), (u, k)
            else:
                assert got == 0.0
    assert float(p.entries.norms()[p.decaying].max()) == 0.0
    result = p.finalize()
    assert torch.equal(result.keep, ~p.decaying)  # the decayed set is the hard mask
    _assert_budget(p, result.keep)


def test_decayed_units_are_held_at_zero_after_the_decay_and_in_fine_tune():
    model, x = _model()
    p = DecayPruning.wrap(_Magnitude(model, (x,), PROFILE, "latency=60%"), steps=2, mask_steps=6, decide_at=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):  # decay done at step 3; steps 4-6 must not let momentum regrow the units
        _step(model, opt, p)
        if p.k == p.steps:
            assert float(p.entries.norms()[p.decaying].max()) == 0.0
    p.finalize()
    for _ in range(2):
        _step(model, opt, p)
    assert float(p.entries.norms()[p.decaying].max()) == 0.0
    assert p.state()["decaying"] == float(p.decaying.sum()) and p.state()["decay_step"] == 2.0


# ---------------------------------------------------------------- (2) Self-Rectifying

def _resisting(p, model):
    """A decaying unit u of an 8-unit group, and a loss term whose large gradient grows u against the decay."""
    groups = p.graph.groups
    u = next(v for v in p.decaying.nonzero().flatten().tolist() if len(groups[p.graph.units[v].group]) == 8)
    params = dict(model.named_parameters())
    slices = [sl for sl in p.graph.units[u].slices if sl.param in params]

    def push():  # -2 Σ|w| over u's entries
        out = 0.0
        for sl in slices:
            w = params[sl.param].index_select(sl.dim, sl.indices())
            out = out - 2.0 * (w * w.sign().detach()).sum()
        return out

    return u, push


def _decided_after_one_step(n_steps):
    model, x = _model()
    p = DecayPruning.wrap(_Magnitude(model, (x,), PROFILE, "latency=60%"), steps=n_steps, decide_at=1,
                          mask_steps=1 + n_steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    _step(model, opt, p)
    return model, p, opt


def test_resisting_unit_is_released_and_a_replacement_decays_within_budget():
    n_steps = 6
    model, p, opt = _decided_after_one_step(n_steps)
    first = p.decaying.clone()
    u, push = _resisting(p, model)
    _step(model, opt, p, extra=push)
    assert bool(p.released[u]) and not bool(p.decaying[u])
    assert p.state()["released"] >= 1
    replacements = (p.decaying & ~first).nonzero().flatten().tolist()
    assert replacements, "the base must pick a replacement so the budget still holds"
    k0 = p.k
    x_start = {v: _unit_norm(model, p.graph, v) for v in replacements}
    for k in range(k0 + 1, n_steps + 1):
        _step(model, opt, p)
        for v in replacements:  # from the current norm to zero over the remaining steps
            assert _unit_norm(model, p.graph, v) == pytest.approx(
                x_start[v] * (n_steps - k) / (n_steps - k0), rel=1e-6, abs=1e-12)
    assert _unit_norm(model, p.graph, u) > 0
    result = p.finalize()
    assert bool(result.keep[u]) and torch.equal(result.keep, ~p.decaying)
    assert all(_unit_norm(model, p.graph, v) == 0.0 for v in p.decaying.nonzero().flatten().tolist())
    _assert_budget(p, result.keep)


def test_release_the_budget_cannot_afford_is_refused(monkeypatch):
    model, p, opt = _decided_after_one_step(4)
    u, push = _resisting(p, model)
    chosen = p.decaying.clone()

    def over_budget(scores):
        raise BudgetError("forced set over the budget")

    monkeypatch.setattr(p, "_choose", over_budget)
    _step(model, opt, p, extra=push)
    assert bool(p.decaying[u]) and not p.released.any() and torch.equal(p.decaying, chosen)
    monkeypatch.undo()
    for _ in range(3):
        _step(model, opt, p)
    assert _unit_norm(model, p.graph, u) == 0.0
    _assert_budget(p, p.finalize().keep)


# ---------------------------------------------------------------- (3) wrapping SMART and baselines

def test_wraps_smart_decision_after_its_steps_soft_masks_folded_then_decayed():
    model, x = _model()
    p = DecayPruning(model, (x,), PROFILE, "latency=60%", mask_steps=10, base="smart", steps=4)
    assert p.decide_at == 6 and p.base.mask_steps == 6  # SMART anneals over the steps before the decision
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mask_opt = torch.optim.Adam(p.parameters(), lr=0.05)
    assert p.parameters() and p.parameters()[0] is p.base.logits

    def step(before_pruner=lambda: None):
        xb, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
        loss = F.cross_entropy(model(xb), y)
        opt.zero_grad()
        mask_opt.zero_grad()
        loss.backward()
        opt.step()
        mask_opt.step()
        before_pruner()
        p.step()

    for _ in range(5):
        step()
    assert not p.decided and p.base.steps == 5
    tables = [(name, dim, idx, unit) for name, rows in p.base._tables.items() for dim, idx, unit in rows]
    originals = {}

    def snapshot():  # W right before the pruner's step that folds W ⊙ f
        originals.update({name: model.get_submodule(name.rpartition(".")[0]).parametrizations[
            name.rpartition(".")[2]].original.detach().clone() for name, *_ in tables})
    step(snapshot)  # step 6: SMART's last step, then the decision
    assert p.decided and p.base.steps == 6
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # soft masks removed
    f = p.base.soft_keep().detach().double()  # the soft mask at the decision, folded into the weights
    params = dict(model.named_parameters())
    for name, dim, idx, unit in tables:
        shape = [1] * originals[name].dim()
        shape[dim] = -1
        factor = torch.ones(originals[name].shape[dim], dtype=torch.float64).index_put((idx,), f[unit]).view(shape)
        torch.testing.assert_close(params[name].detach().double(), originals[name].double() * factor,
                                   rtol=1e-5, atol=1e-7)
    assert torch.equal(p.scores(), p.base.scores().double())  # SMART's ranking decides (fixed units first)
    chosen = p.decaying.nonzero().flatten().tolist()
    x0 = {u: _unit_norm(model, p.graph, u) for u in chosen}
    for k in range(1, 5):
        step()
        for u in chosen:
            assert _unit_norm(model, p.graph, u) == pytest.approx((4 - k) / 4 * x0[u], rel=1e-6, abs=1e-12)
    model.eval()
    with torch.no_grad():
        before = model(x)
        result = p.finalize()
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # nothing left to cut: no jump at the hard mask
    assert p.base.result is None and torch.equal(result.keep, ~p.decaying)
    _assert_budget(p, result.keep)


@pytest.mark.parametrize("base", ["magnitude", "taylor", "random"])
def test_wraps_registered_baselines_by_name(base):
    pytest.importorskip("npu_compress.pruners.baselines")  # registers them when present
    model, x = _model()
    p = DecayPruning(model, (x,), PROFILE, "memory=50%", mask_steps=4, base=base, steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        _step(model, opt, p)
    assert p.decided and p.k == 2 and float(p.entries.norms()[p.decaying].max()) == 0.0
    result = p.finalize()
    assert torch.equal(result.keep, ~p.decaying)
    _assert_budget(p, result.keep)


# ---------------------------------------------------------------- (4) end to end through the driver

@pytest.mark.parametrize("base", ["smart", "inline-magnitude"])
def test_train_end_to_end(base):
    data = load_dataset("digits").normalized().subset(256, 64)
    model, x = _model()
    mask_steps = 2 * len(data.loaders(64)[0])
    holder = {}

    def make(m):
        if base == "smart":
            holder["p"] = DecayPruning(m, (x,), PROFILE, "latency=60%", mask_steps=mask_steps, base="smart")
        else:
            holder["p"] = DecayPruning.wrap(_Magnitude(m, (x,), PROFILE, "latency=60%"), mask_steps=mask_steps)
        return holder["p"]

    res = train(model, data, TrainConfig(Epochs(1, 2, 1), progress=False), make_pruner=make)
    p = holder["p"]
    assert p.steps == mask_steps // 2 and p.k == p.steps  # the decay finished inside the mask phase
    assert torch.equal(res.prune_result.keep, ~p.decaying)
    assert float(p.entries.norms()[p.decaying].max()) == 0.0  # and fine-tune kept it at zero
    _assert_budget(p, res.prune_result.keep)
    assert res.history[-1]["decaying"] == float(p.decaying.sum()) and 0.0 <= res.accuracy <= 1.0


def test_state_dict_resumes_mid_decay_with_smart_base():
    model, x = _model()

    def build(m):
        return DecayPruning(m, (x,), PROFILE, "latency=60%", mask_steps=8, base="smart", steps=4)

    p = build(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    torch.manual_seed(1)
    for _ in range(6):  # decided at 4, two decay steps done
        _step(model, opt, p)
    saved_model, saved = clean_state_dict(model), p.state_dict()
    twin, _ = _model()
    twin.load_state_dict(saved_model)
    q = build(twin)  # SMART attaches fresh soft masks; loading a decided state removes them, unfolded
    q.load_state_dict(saved)
    assert not any(parametrize.is_parametrized(m) for m in twin.modules())
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    assert (q.t, q.k, q.decided) == (6, 2, True) and torch.equal(q.decaying, p.decaying)
    opt_q = torch.optim.SGD(twin.parameters(), lr=0.05)
    for net, pr, o in ((model, p, opt), (twin, q, opt_q)):
        torch.manual_seed(2)
        for _ in range(2):
            _step(net, o, pr)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)
    assert torch.equal(p.finalize().keep, q.finalize().keep)


# ---------------------------------------------------------------- (5) bad knobs

@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"steps": -3}, "steps must be an integer >= 1"),
    ({"steps": 11}, "longer than the mask phase"),
    ({"steps": 4, "decide_at": 8}, "runs past the mask phase"),
    ({"decide_at": -1}, "decide_at must be an integer >= 0"),
    ({"t_rate": -0.1}, "t_rate must be a number >= 0"),
    ({"t_len": -2.0}, "t_len must be a number >= 0"),
    ({"t_len": float("nan")}, "t_len must be a number >= 0"),
    ({"base": "dpm"}, "base must name another registered method"),
])
def test_bad_knobs_raise_a_typed_error_before_any_work(kwargs, match):
    model, x = _model()
    with pytest.raises(DecayConfigError, match=match):
        DecayPruning(model, (x,), PROFILE, "latency=60%", mask_steps=10, **kwargs)
    assert issubclass(DecayConfigError, NpuCompressError)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_bad_base_and_wrap_errors():
    model, x = _model()
    with pytest.raises(NpuCompressError, match="unknown method 'nope'"):
        DecayPruning(model, (x,), PROFILE, "latency=60%", mask_steps=10, base="nope")
    base = _Magnitude(model, (x,), PROFILE, "latency=60%")
    with pytest.raises(DecayConfigError, match="needs mask_steps"):
        DecayPruning.wrap(base, steps=3)
    with pytest.raises(DecayConfigError, match="longer than the mask phase"):
        DecayPruning.wrap(base, steps=12, mask_steps=10)
    with pytest.raises(DecayConfigError, match="wraps a pruner"):
        DecayPruning.wrap(DecayPruning.wrap(base, mask_steps=10), mask_steps=10)
