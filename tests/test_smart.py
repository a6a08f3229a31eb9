"""SMART pruner: budgets met exactly by the true cost model; schedule; accuracy on digits; resume."""

import pytest
import torch

from npu_compress import BudgetError, list_profiles, load_dataset, models
from npu_compress.checkpoint import CheckpointError
from npu_compress.graph_cost import predict, unit_costs
from npu_compress.pruners import SmartPruner
from npu_compress.pruners.select import measure, nm_keep
from npu_compress.training import Epochs, TrainConfig, evaluate, train


def _budget_between(name, profile, kind, structure, frac=0.6):
    """A budget string `frac` of the way from the smallest achievable cost to the dense cost."""
    model, x = models.create(name), models.example_input(name)
    probe = SmartPruner(model, (x,), profile, f"{kind}=100%", structure, mask_steps=3)
    lo, hi = probe.minimum, measure(probe.dense, probe.budget.kind)
    probe._detach()
    return model, x, lo, hi, f"{kind}={100 * (lo + frac * (hi - lo)) / hi:.4f}%"


def _max_unit_cost(p, keep):
    if p.graph.structure.value != "nm":
        return float(unit_costs(p.graph, p.profile, p.budget.kind, keep).max())
    dense = measure(p.dense, p.budget.kind)
    scores = p.scores().double()
    return max(dense - measure(predict(p.graph, nm_keep(p.graph, scores, {name}), p.profile), p.budget.kind)
               for name, _, _ in p.graph.param_unit_ranges())


@pytest.mark.parametrize("structure", ["channel", "block", "nm"])
@pytest.mark.parametrize("kind", ["latency", "memory"])
@pytest.mark.parametrize("profile", sorted(list_profiles()))
@pytest.mark.parametrize("name", ["digits-cnn", "unet-small"])
def test_final_cost_within_one_unit_of_budget(name, profile, kind, structure):
    model, x, lo, hi, budget = _budget_between(name, profile, kind, structure)
    if hi - lo <= 1e-12 * hi:  # this profile cannot make this structure cheaper: any cut is infeasible
        with pytest.raises(BudgetError, match="infeasible"):
            SmartPruner(model, (x,), profile, f"{kind}=90%", structure)
        return
    p = SmartPruner(model, (x,), profile, budget, structure, mask_steps=3)
    opt = torch.optim.Adam(p.parameters(), lr=0.05)
    for _ in range(3):
        loss = model(torch.randn(4, *x.shape[1:])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        p.step()
    result = p.finalize()
    cost = measure(result.predicted, p.budget.kind)
    assert cost <= p.target * (1 + 1e-12)
    assert cost >= p.target - _max_unit_cost(p, result.keep) * (1 + 1e-9)
    assert result.predicted.latency_s <= result.dense.latency_s


def _pruner(**kw):
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    return model, x, SmartPruner(model, (x,), "generic-4tops", "latency=50%", **kw)


def test_soft_mask_meets_budget_and_temperature_decays_exponentially():
    model, x, p = _pruner(mask_steps=10, tau_end_ratio=1e-2)
    f = p.soft_keep()
    free = p._free  # the units held at f = 1 are outside the budget's sum
    assert abs(float((p.costs[free] * f.detach()[free]).sum()) - p.soft_budget) <= 1e-6 * p.soft_budget
    assert bool((f.detach()[p.fixed] == 1).all())
    tau0 = p.tau
    for _ in range(10):
        p.step()
    assert p.tau == pytest.approx(tau0 * 1e-2, rel=1e-9)
    frac = p.fractional()
    p.step()  # past mask_steps: keeps decaying only while units are fractional
    assert p.tau == pytest.approx(tau0 * 1e-2 * (p.gamma if frac > p.frac_tol else 1.0), rel=1e-9)


def test_soft_mask_gradient_reaches_logits_and_weights_stay_plain_after_finalize():
    model, x, p = _pruner(mask_steps=5)
    conv, norm = model.features[1][0], model.features[1][1]
    # the norm after the conv carries the mask (its output is scaled), the conv rows stay W
    assert not hasattr(conv, "parametrizations") and hasattr(norm, "parametrizations")
    w_before = conv.weight.detach().clone()
    g_before = norm.parametrizations.weight.original.detach().clone()
    model(x).sum().backward()
    assert p.logits.grad is not None and float(p.logits.grad.abs().sum()) > 0
    result = p.finalize()
    assert not hasattr(norm, "parametrizations")  # soft masks removed
    kept_rows = torch.zeros(128, dtype=torch.bool)
    for u in result.keep.nonzero().flatten().tolist():
        for s in result.graph.units[u].slices:
            if s.param == "features.1.0.weight" and s.dim == 0:
                kept_rows[s.indices()] = True
    for now, before in ((conv.weight.detach(), w_before), (norm.weight.detach(), g_before)):
        assert bool(((now == before) | (now == 0)).all())  # W (or pruned: 0), never W ⊙ f
        assert float(now[kept_rows].abs().sum()) > 0 and float(now[~kept_rows].abs().sum()) == 0.0
    state = p.state()
    assert state["predicted"] <= p.target and "tau" in state


def test_bad_arguments():
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    with pytest.raises(BudgetError, match="infeasible"):
        SmartPruner(model, (x,), "generic-4tops", "latency=1%")
    with pytest.raises(ValueError, match="mask_steps"):
        SmartPruner(model, (x,), "generic-4tops", "latency=50%", mask_steps=0)


def test_smart_on_digits_keeps_accuracy_at_half_latency(tmp_path):
    """Issue acceptance: within 1.5 points of dense (same total epochs), converged before finalize: at most
    1 % of the units fractional, or the one at the budget's boundary."""
    data = load_dataset("digits")
    epochs = Epochs(3, 4, 2)
    cfg = TrainConfig(epochs, progress=False, seed=0)
    torch.manual_seed(0)
    dense = models.create("digits-cnn")
    train(dense, data, TrainConfig(Epochs(epochs.total, 0, 0), progress=False, seed=0))
    dense_acc = evaluate(dense, data.loaders(256)[1])

    torch.manual_seed(0)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    steps = epochs.mask * len(data.loaders(cfg.batch_size)[0])
    seen = {}

    def make(m):
        p = SmartPruner(m, (x,), "generic-4tops", "latency=50%", mask_steps=steps)
        original = p.finalize

        def finalize():
            seen["fractional"] = p.fractional() * p.graph.num_units
            return original()
        p.finalize = finalize
        return p

    res = train(model, data, cfg, make_pruner=make)
    assert seen["fractional"] <= max(1, 0.01 * len(res.prune_result.keep)) + 1e-6
    assert res.prune_result.achieved_ratio <= 1.0
    assert res.accuracy >= dense_acc - 0.015, (res.accuracy, dense_acc)


def test_checkpoint_resume_continues_after_the_last_epoch(tmp_path):
    data = load_dataset("digits").subset(256, 64)
    x = models.example_input("digits-cnn")
    ckpt = tmp_path / "run.pt"

    def make(m):
        return SmartPruner(m, (x,), "generic-4tops", "latency=60%", mask_steps=8)

    first = train(models.create("digits-cnn"), data, TrainConfig(Epochs(1, 2, 0), progress=False, checkpoint=ckpt),
                  make_pruner=make)
    assert ckpt.is_file() and len(first.history) == 3
    resumed = train(models.create("digits-cnn"), data,
                    TrainConfig(Epochs(1, 2, 0), progress=False, checkpoint=ckpt, resume=True), make_pruner=make)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]  # nothing left to run: the saved run, as it ended
    assert torch.equal(resumed.prune_result.keep, first.prune_result.keep) and resumed.accuracy == first.accuracy
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and not any(".parametrizations." in k for k in saved["model"])
    with pytest.raises(CheckpointError, match="written for --epochs 1,2,0, this run is --epochs 1,2,2"):
        train(models.create("digits-cnn"), data,  # a longer plan is another run (other LR schedules)
              TrainConfig(Epochs(1, 2, 2), progress=False, checkpoint=ckpt, resume=True), make_pruner=make)



def test_batchnorm_statistics_are_reestimated_after_finalize():
    """Right after finalize() the kept units' masks jump to 1 and every BatchNorm downstream sees
    other activations than its statistics were tracked on; re-estimating them on training batches
    (what the training driver does) keeps accuracy within a few points of right before finalize."""
    from npu_compress.training import recalibrate_norms

    data = load_dataset("digits")
    torch.manual_seed(0)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    train(model, data, TrainConfig(Epochs(2, 0, 0), progress=False, seed=0))
    loader, test = data.loaders(64)
    p = SmartPruner(model, (x,), "generic-4tops", "latency=40%", mask_steps=4 * len(loader))
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    mask_opt = torch.optim.Adam(p.parameters(), lr=0.05)
    model.train()
    for _ in range(4):
        for xb, yb in loader:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            mask_opt.zero_grad()
            loss.backward()
            opt.step()
            mask_opt.step()
            p.step()
    before = evaluate(model, test)
    result = p.finalize()
    assert recalibrate_norms(model, loader, 20) == 20
    after = evaluate(model, test)
    assert before > 0.8 and after >= before - 0.03, (before, after)
    # still exactly the pruned model: statistics of removed channels stay those of zeros
    from npu_compress.graph import remove_pruned
    small = remove_pruned(model, result.graph, result.keep)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), small.eval()(x), atol=1e-5)


def test_the_training_driver_recalibrates_once_after_finalize(monkeypatch):
    from npu_compress import training

    calls = []
    real = training.recalibrate_norms
    monkeypatch.setattr(training, "recalibrate_norms", lambda m, loader, n: calls.append(n) or real(m, loader, n))
    data = load_dataset("digits").subset(256, 64)
    model, x = models.create("digits-cnn"), models.example_input("digits-cnn")
    train(model, data, TrainConfig(Epochs(1, 1, 1), progress=False, recalibrate_batches=3),
          make_pruner=lambda m: SmartPruner(m, (x,), "generic-4tops", "latency=50%", mask_steps=4))
    assert calls == [3]
    with pytest.raises(Exception, match="recalibrate_batches"):
        TrainConfig(Epochs(1, 1, 1), recalibrate_batches=-1)
