"""SMART's start and mask placement (issue 16): norm-safe masks, activation importance, a uniform
per-group start, costs linearised at the hard guess, the frozen-logit control, one LR schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from npu_compress import PrunerConfigError, load_dataset, models
from npu_compress.graph_cost import predict
from npu_compress.pruners import SmartPruner
from npu_compress.pruners.select import measure
from npu_compress.pruners.smart_start import standardized
from npu_compress.training import Epochs, TrainConfig, _cosine, evaluate, train


def _trained_digits(epochs=2):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    train(model, data, TrainConfig(Epochs(epochs, 0, 0), progress=False, seed=0))
    return data, model, x


def _mask_steps(model, pruner, loader, mask_lr=0.002, epochs=1, lr=0.02):
    """The training driver's mask phase, step by step: the pruner's own optimiser and LR scale."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mask_opt = pruner.mask_optimizer(pruner.parameters(), mask_lr) if pruner.parameters() else None
    model.train()
    residuals = []
    for _ in range(epochs):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            if mask_opt:
                mask_opt.zero_grad()
            loss.backward()
            opt.step()
            if mask_opt:
                mask_opt.param_groups[0]["lr"] = mask_lr * pruner.mask_lr_scale()
                mask_opt.step()
            pruner.step()
            guess = measure(predict(pruner.graph, pruner._hard_guess(), pruner.profile), pruner.budget.kind)
            residuals.append(guess / pruner.target)
    return residuals


def test_the_norm_carries_the_mask_so_finalize_keeps_accuracy_without_reestimation():
    """Deliverable 4: the BatchNorm's output is masked, not the conv rows before it, so its running
    statistics stay those of the unmasked activations: accuracy right after finalize() is within a
    few points of right before it with no re-estimation of statistics at all."""
    data, model, x = _trained_digits()
    loader, test = data.loaders(64)
    p = SmartPruner(model, (x,), "generic-4tops", "latency=40%", mask_steps=3 * len(loader),
                    calibration=data.x_train[:256])
    masked = set(p._tables)
    assert masked and all(".1.weight" in n or ".1.bias" in n or n.startswith("classifier") for n in masked
                          if n.startswith("features")), masked  # BN (features.i.1), never conv (features.i.0)
    _mask_steps(model, p, loader, epochs=3)
    before = evaluate(model, test)
    p.finalize()
    after = evaluate(model, test)
    assert before > 0.8 and after >= before - 0.03, (before, after)


def test_global_start_is_the_shared_selection_as_a_threshold_set():
    """start="global": logits > 0 exactly on what the shared selection keeps on activation importance
    over its group's mean (with its fill), and finalize() of an untrained pruner keeps that set."""
    from npu_compress.pruners.importance import normalized_by_group
    from npu_compress.pruners.select import select_keep
    from npu_compress.pruners.importance import unit_sq_norms
    from npu_compress.pruners.smart_start import activation_importance

    data, model, x = _trained_digits(1)
    plain = copy.deepcopy(model)  # parameters under their own names (the pruner parametrizes the model)
    p = SmartPruner(model, (x,), "ethos-u55-128", "latency=40%", mask_steps=10, calibration=data.x_train[:128],
                    group_size=1)
    a = unit_sq_norms(p.graph, plain).sqrt()  # the magnitude method's score
    expected = select_keep(p.graph, normalized_by_group(a, p.graph), p.profile, p.budget, p.target)
    assert torch.equal(p.logits.detach() > 0, expected)
    act = SmartPruner(models.create("digits-cnn"), (x,), "ethos-u55-128", "latency=40%", mask_steps=10,
                      calibration=data.x_train[:128], group_size=1, importance="activation")
    a = activation_importance(act.graph, act.model, act._tables, act._energy, torch.ones(act.graph.num_units))
    expected_act = select_keep(act.graph, normalized_by_group(a, act.graph), act.profile, act.budget, act.target)
    assert torch.equal(act.logits.detach() > 0, expected_act)
    assert torch.equal(p.logits.detach() > 0, expected)
    result = p.finalize()
    assert bool(result.keep[expected].all()) and result.predicted.latency_s <= p.target


def test_uniform_start_keeps_the_same_share_of_every_group_and_fits_the_budget():
    data, model, x = _trained_digits(1)
    p = SmartPruner(model, (x,), "generic-4tops", "latency=50%", mask_steps=10, calibration=data.x_train[:128],
                    start="uniform")
    keep = p.logits.detach() > 0
    g = p.graph
    shares = [float(keep[list(grp)].float().mean()) for grp in g.groups]
    sizes = [len(grp) for grp in g.groups]
    # one share for every group, up to rounding to whole units
    ref = max(range(len(sizes)), key=lambda i: sizes[i])
    for share, size in zip(shares, sizes):
        assert abs(share - shares[ref]) <= 1.0 / size + 1.0 / sizes[ref] + 1e-9, (shares, sizes)
    assert measure(predict(g, keep, p.profile), p.budget.kind) <= p.target
    # the logits were standardised within each group before the shift: spread 1 around the cut
    z = standardized(torch.rand(g.num_units) + 0.1, g)
    for grp in g.groups:
        if len(grp) > 1:
            assert float(z[list(grp)].std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)


def test_activation_importance_ranks_a_silenced_unit_last():
    """A unit whose norm output is silenced (γ = β = 0) carries no activation: it starts last in its
    group, although its conv rows are as large as any (a weight norm would not see it)."""
    data, model, x = _trained_digits(1)
    bn = model.features[1][1]
    with torch.no_grad():
        bn.weight[:8] = 0.0
        bn.bias[:8] = 0.0
        model.features[1][0].weight[:8] *= 10.0
    p = SmartPruner(model, (x,), "generic-4tops", "latency=50%", mask_steps=10, calibration=data.x_train[:128],
                    importance="activation", start="uniform")
    unit = next(u for u, unit in enumerate(p.graph.units)
                if any(s.param == "features.1.1.weight" and int(s.indices()[0]) == 0 for s in unit.slices))
    group = list(p.graph.groups[int(p.graph.unit_group[unit])])
    assert int(torch.argmin(p.logits.detach()[group])) == group.index(unit)


def test_costs_are_relinearised_so_the_hard_guess_stays_near_the_budget():
    """Deliverable 3: costs linearised at the hard guess (a fixed point at construction, then as it
    moves): the soft mask's hard guess stays within a few percent of the budget while masks learn."""
    data, model, x = _trained_digits(1)
    loader, _ = data.loaders(64)
    p = SmartPruner(model, (x,), "ethos-u55-128", "latency=40%", mask_steps=2 * len(loader),
                    calibration=data.x_train[:256], relinearize_every=5, group_size=1)  # single channels:
    residuals = _mask_steps(model, p, loader, epochs=2)  # the budget's granularity is not the question here
    assert max(abs(r - 1) for r in residuals) <= 0.08, residuals  # the first, softest steps
    assert max(abs(r - 1) for r in residuals[10:]) <= 0.03, residuals
    assert abs(residuals[-1] - 1) <= 0.02, residuals[-1]


def test_frozen_logit_control_trains_nothing_of_its_own():
    data, model, x = _trained_digits(1)
    loader, _ = data.loaders(64)
    p = SmartPruner(model, (x,), "generic-4tops", "latency=50%", mask_steps=len(loader), learn=False,
                    calibration=data.x_train[:128])
    start = p.logits.detach().clone()
    assert p.parameters() == []
    tau0 = p.tau
    _mask_steps(model, p, loader)
    assert torch.equal(p.logits.detach(), start) and p.tau < tau0 * 0.01
    learned = SmartPruner(model.__class__(), (x,), "generic-4tops", "latency=50%", mask_steps=10)
    assert learned.parameters() == [learned.logits]


def test_bad_knobs_and_calibration():
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    for knob, value in (("tau_start", 0.0), ("tau_end_ratio", -1.0), ("relinearize_every", -1), ("start", "best"),
                        ("importance", "luck"), ("mask_update", "sgd")):
        with pytest.raises(PrunerConfigError, match=knob):
            SmartPruner(model, (x,), "generic-4tops", "latency=50%", **{knob: value})
    with pytest.raises(PrunerConfigError, match="calibration"):
        SmartPruner(model, (x,), "generic-4tops", "latency=50%", calibration=torch.zeros(4, 3, 8, 8))


def test_one_cosine_over_the_run_continues_across_phases(monkeypatch):
    """Deliverable 5: the fine-tune phase continues the decay where the mask phase left it."""
    data = load_dataset("digits").subset(256, 64)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    lrs = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        if len(self.param_groups[0]["params"]) > 1:  # the model's optimiser, not SMART's (one tensor of logits)
            lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    cfg = TrainConfig(Epochs(1, 1, 1), progress=False, lr=0.1)
    train(model, data, cfg, make_pruner=lambda m: SmartPruner(m, (x,), "generic-4tops", "latency=50%", mask_steps=4))
    n = len(lrs) // 3
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * s / (3 * n))) for s in range(3 * n)]
    assert lrs == pytest.approx(expected, rel=1e-9)  # no restart at either phase boundary
    monkeypatch.undo()
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _cosine(opt, 10, offset=5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))
    with pytest.raises(Exception, match="lr_schedule"):
        TrainConfig(Epochs(1, 1, 1), lr_schedule="sometimes")
