"""HBGS / HBGTS: LS compensation, redundant-channel selection, budget exactness, no test-split reads."""
import copy
import dataclasses
import logging

import pytest
import torch
from torch import nn

from npu_compress import load_dataset, models
from npu_compress.graph import apply_masks
from npu_compress.graph_cost import unit_costs
from npu_compress.pruners import PRUNERS
from npu_compress.pruners.base import Pruner
from npu_compress.pruners.hbgs import HbgsError, HbgsPruner, HbgtsPruner
from npu_compress.pruners.hbgs_select import Fit, gram, ls_coefficients, removal_order
from npu_compress.pruners.select import measure
from npu_compress.training import Epochs, TrainConfig, train


class TwoConv(nn.Module):
    """conv1 (3->16) [-> ReLU] -> conv2 (16->8): the output is conv2's, so only conv1's channels are prunable."""

    def __init__(self, relu: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.act(self.conv1(x)))


def _correlated(relu: bool, seed: int = 0) -> TwoConv:
    """conv1's 16 filters: 4 base filters, each repeated 4 times with a positive scale plus 5% noise.

    A positive scale commutes with ReLU, so every channel is nearly a multiple of 3 others."""
    gen = torch.Generator().manual_seed(seed)
    model = TwoConv(relu)
    base = torch.randn(4, 3, 3, 3, generator=gen)
    scale = torch.rand(16, 1, 1, 1, generator=gen) + 0.5
    with torch.no_grad():
        model.conv1.weight.copy_(base.repeat(4, 1, 1, 1) * scale + 0.05 * torch.randn(16, 3, 3, 3, generator=gen))
    return model


def _conv2_error(model, ref_model, x):
    with torch.no_grad():
        ref = ref_model(x)
        return float((model(x) - ref).square().sum() / ref.square().sum())


def _budget(name, profile, kind, frac=0.5):
    """A budget `frac` of the way from the smallest achievable cost to the dense cost."""
    model, x = models.create(name), models.example_input(name)
    probe = Pruner(model, (x,), profile, f"{kind}=100%")
    lo, hi = probe.minimum, measure(probe.dense, probe.budget.kind)
    return model, x, f"{kind}={100 * (lo + frac * (hi - lo)) / hi:.4f}%"


def _within_one_unit(p, result):
    cost = measure(result.predicted, p.budget.kind)
    top = float(unit_costs(p.graph, p.profile, p.budget.kind, result.keep).max())
    assert cost <= p.target * (1 + 1e-12)
    assert cost >= p.target - top * (1 + 1e-9)


@pytest.mark.parametrize("relu", [False, True])
def test_least_squares_compensation_beats_plain_removal_on_the_same_keep_set(relu):
    model = _correlated(relu)
    original = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    calib, fresh = torch.randn(64, 3, 8, 8), torch.randn(64, 3, 8, 8)
    p = HbgsPruner(model, (x,), "generic-4tops", "memory=60%", group_size=2, calibration=calib)
    result = p.finalize()
    assert 0 < int((~result.keep).sum()) < result.keep.numel()
    plain = apply_masks(copy.deepcopy(original), p.graph, result.keep)  # same keep-set, no compensation
    for batch in (calib, fresh):  # fitted on calib; holds on unseen inputs of the same distribution
        compensated, uncompensated = _conv2_error(model, original, batch), _conv2_error(plain, original, batch)
        assert compensated < uncompensated / 10, (compensated, uncompensated)


def test_compensate_false_gives_plain_removal():
    model = _correlated(True)
    original = copy.deepcopy(model)
    calib = torch.randn(64, 3, 8, 8)
    p = HbgsPruner(model, (calib[:1],), "generic-4tops", "memory=60%", group_size=2, calibration=calib,
                   compensate=False)
    keep = p.finalize().keep
    plain = apply_masks(original, p.graph, keep)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def _redundant_model() -> TwoConv:
    """No ReLU; conv1 channel 5 = 2·channel 1 + 0.5·channel 3 exactly: channels 1, 3, 5 are each redundant."""
    model = TwoConv(relu=False)
    with torch.no_grad():
        w = model.conv1.weight
        w[5] = 2 * w[1] + 0.5 * w[3]
    return model


@pytest.mark.parametrize("selection", ["backward", "omp"])
def test_exactly_redundant_channel_is_dropped_first_with_zero_error(selection):
    model = _redundant_model()
    original = copy.deepcopy(model)
    calib = torch.randn(32, 3, 8, 8)
    target = f"memory={100 * (1 - 0.5 / 16):.4f}%"  # one channel of conv1 less than dense, at most
    p = HbgsPruner(model, (calib[:1],), "generic-4tops", target, group_size=1, calibration=calib,
                   selection=selection)
    result = p.finalize()
    assert p.removed[0] in (1, 3, 5) and len(p.removed) == 1
    assert _conv2_error(model, original, torch.randn(32, 3, 8, 8)) < 1e-9
    assert result.keep.sum() == result.keep.numel() - 1


@pytest.mark.parametrize("method", ["backward", "omp"])
def test_selection_math_finds_the_dependent_column(method):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, 6, generator=gen, dtype=torch.float64)
    x[:, 4] = x[:, 0] - 3 * x[:, 2]  # column 4 depends on 0 and 2; the rest are independent
    fit = Fit(gram(x), torch.tensor([0, 1, 2, 3, 4, 5]))
    order = removal_order([fit], [0, 1, 2, 3, 4, 5], 1, method)
    assert order[0] in (0, 2, 4)
    keep = torch.tensor([u for u in range(6) if u != order[0]])
    b = ls_coefficients(fit.gram, keep, torch.tensor([order[0]]))
    resid = x[:, [order[0]]] - x[:, keep] @ b
    assert float(resid.square().sum() / x[:, [order[0]]].square().sum()) < 1e-9


@pytest.mark.parametrize("method", ["backward", "omp"])
def test_units_move_together(method):
    """Column 5 is an exact copy of column 4, but both belong to unit 2: dropping unit 2 loses column 4.
    Units 0 and 1 are near copies of each other, so one of them is the unit to drop."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=gen, dtype=torch.float64)
    x[:, 2:4] = x[:, 0:2] + 0.05 * torch.randn(400, 2, generator=gen, dtype=torch.float64)
    x[:, 5] = x[:, 4]
    fit = Fit(gram(x), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert removal_order([fit], [0, 1, 2], 1, method) in ([0], [1])


@pytest.mark.parametrize("kind", ["latency", "memory"])
@pytest.mark.parametrize("name,profile", [("digits-cnn", "generic-4tops"), ("digits-cnn", "ethos-u55-128"),
                                          ("resnet20", "ethos-u55-128")])
def test_final_cost_within_one_unit_of_budget(name, profile, kind):
    model, x, budget = _budget(name, profile, kind)
    p = HbgsPruner(model, (x,), profile, budget, calibration=torch.randn(16, *x.shape[1:]), p=2)
    result = p.finalize()
    _within_one_unit(p, result)
    assert len(p.removed) == int((~result.keep).sum()) > 0
    masked = apply_masks(copy.deepcopy(model), p.graph, result.keep)  # the dropped units are zero in the model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), masked.state_dict().values()))


class _TestSplit(torch.Tensor):
    """The test split, armed while pruner code runs: any torch op on it then fails the test."""

    armed = False

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if _TestSplit.armed:
            raise AssertionError(f"the pruner read the test split ({getattr(func, '__name__', func)})")
        return super().__torch_function__(func, types, args, kwargs or {})


def _armed(method):
    def call(self, *args, **kwargs):
        _TestSplit.armed = True
        try:
            return method(self, *args, **kwargs)
        finally:
            _TestSplit.armed = False
    return call


class _Guarded(HbgsPruner):
    __init__ = _armed(HbgsPruner.__init__)
    step = _armed(HbgsPruner.step)
    finalize = _armed(HbgsPruner.finalize)
    state = _armed(HbgsPruner.state)


def test_training_run_prunes_in_the_mask_phase_and_never_reads_the_test_split():
    data = load_dataset("digits").subset(256, 64).normalized()
    data = dataclasses.replace(data, x_test=data.x_test.as_subclass(_TestSplit))
    x = models.example_input("digits-cnn")
    model = models.create("digits-cnn")
    budget = _budget("digits-cnn", "generic-4tops", "latency", 0.4)[2]
    cfg = TrainConfig(Epochs(1, 2, 1), batch_size=64, progress=False)
    made = []

    def make(m):
        made.append(_Guarded(m, (x,), "generic-4tops", budget, calibration=data.x_train[:128], rounds=4,
                             mask_steps=2 * 4))
        return made[0]

    _TestSplit.armed = True  # the guard works: an armed read fails
    try:
        with pytest.raises(AssertionError, match="test split"):
            data.x_test[:1] + 0
    finally:
        _TestSplit.armed = False
    run = train(model, data, cfg, make_pruner=make)
    p = made[0]
    assert p.calibration.untyped_storage().data_ptr() == data.x_train.untyped_storage().data_ptr()
    assert p.events == 4 and run.history[2]["phase"] == "mask"
    assert run.history[2]["predicted"] <= p.target  # all pruning done by the end of the mask phase
    _within_one_unit(p, run.prune_result)
    masked = apply_masks(copy.deepcopy(model), p.graph, run.prune_result.keep)  # fine-tune kept them at zero
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), masked.state_dict().values()))
    assert run.accuracy > 0.2  # chance is 0.1: the pruned, compensated model still works


def test_step_schedule_prunes_towards_the_budget_in_events():
    model, x, budget = _budget("digits-cnn", "ethos-u55-128", "latency", 0.3)
    p = HbgsPruner(model, (x,), "ethos-u55-128", budget, calibration=torch.randn(16, 1, 8, 8), rounds=2,
                   mask_steps=4)
    dense = measure(p.dense, p.budget.kind)
    p.step()
    assert p.cost == dense and not p.removed
    p.step()
    assert p.target < p.cost <= dense - (dense - p.target) / 2
    half = list(p.removed)
    state = p.state_dict()
    resumed = HbgsPruner(copy.deepcopy(model), (x,), "ethos-u55-128", budget, calibration=torch.randn(16, 1, 8, 8),
                         rounds=2, mask_steps=4)
    resumed.load_state_dict(state)
    assert resumed.removed == half and resumed.cost == p.cost
    p.step(), p.step()
    assert p.cost <= p.target and p.events == 2
    assert torch.equal(p.finalize().keep, p.keep)


def test_hbgts_and_hbgs_both_meet_the_budget():
    assert PRUNERS["hbgs"] is HbgsPruner and PRUNERS["hbgts"] is HbgtsPruner
    _, x, budget = _budget("digits-cnn", "ethos-u55-128", "latency")
    calib = torch.randn(32, 1, 8, 8)
    results = {}
    for cls in (HbgsPruner, HbgtsPruner):
        model = models.create("digits-cnn")
        p = cls(model, (x,), "ethos-u55-128", budget, calibration=calib)
        results[cls.name] = p.finalize()
        _within_one_unit(p, results[cls.name])
    assert results["hbgs"].keep.numel() == results["hbgts"].keep.numel()


@pytest.mark.parametrize("structure", ["block", "nm"])
def test_block_and_nm_structures_are_refused(structure):
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    with pytest.raises(HbgsError, match="channels only"):
        HbgsPruner(model, (x,), "generic-4tops", "latency=80%", structure)


def test_bad_knobs_and_calibration_are_refused_and_missing_calibration_warns(caplog):
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    with pytest.raises(HbgsError, match="selection"):
        HbgsPruner(model, (x,), "generic-4tops", "latency=80%", selection="lasso")
    with pytest.raises(HbgsError, match="p must be"):
        HbgsPruner(model, (x,), "generic-4tops", "latency=80%", p=0)
    with pytest.raises(HbgsError, match="calibration has shape"):
        HbgsPruner(model, (x,), "generic-4tops", "latency=80%", calibration=torch.randn(4, 3, 8, 8))
    with caplog.at_level(logging.WARNING, logger="npu_compress.pruners.hbgs"):
        p = HbgsPruner(model, (x,), "generic-4tops", "latency=80%")
    assert "no calibration batch" in caplog.text
    assert p.calibration.shape == (32, 1, 8, 8)
