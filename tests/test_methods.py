"""Every registered method, on equal terms: same budget, same cost model, same exporter."""
import inspect

import pytest
import torch

from npu_compress import PRUNERS, models
from npu_compress.export import export_onnx
from npu_compress.graph_cost import unit_costs
from npu_compress.pruners.select import measure
from npu_compress.pruners import plan
from npu_compress.pruning import run_config
from npu_compress.training import Epochs, TrainConfig, train

METHODS = sorted(PRUNERS)


@pytest.mark.parametrize("kind,budget", [("latency", "latency=60%"), ("memory", "memory=50%")])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_the_budget_and_exports(method, kind, budget, tmp_path, digits_small):
    data = digits_small
    x = models.example_input("digits-cnn")
    cls = PRUNERS[method]
    holder = {}

    def make(m):
        config = run_config(cls.Config(), 2 * len(data.loaders(64)[0]), data)
        holder["p"] = cls(plan(m, (x,), "generic-4tops", budget, "channel"), config)
        return holder["p"]

    torch.manual_seed(0)
    model = models.create("digits-cnn")
    res = train(model, data, TrainConfig(Epochs(1, 2, 1), progress=False), make_pruner=make)
    p, r = holder["p"], res.prune_result
    cost = measure(r.predicted, p.budget.kind)
    assert cost <= p.target * (1 + 1e-12)
    assert cost >= p.target - float(unit_costs(p.graph, p.profile, kind, r.keep).max()) * (1 + 1e-9)
    report = export_onnx(model, tmp_path / f"{method}.onnx", example_inputs=(x,), samples=data.x_test[:16], result=r)
    assert report.verification.passed
    assert report.pruned.latency_s == pytest.approx(r.predicted.latency_s, rel=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_cli_prune_runs_each_method(method, tmp_path, capsys):
    from npu_compress.cli import main

    code = main(["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%", "--method", method,
                 "--epochs", "0,1,0", "--no-progress", "-o", str(tmp_path / "m.ckpt")])
    out = capsys.readouterr().out
    assert code == 0 and f"pruned with {method}" in out and (tmp_path / "m.ckpt").is_file()


@pytest.mark.parametrize("kind,budget", [("latency", "latency=60%"), ("memory", "memory=50%")])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_unet_without_labels(method, kind, budget, tmp_path):
    """Second model: concat skips and upsampling; a few steps on random inputs (a loss on the output)."""
    torch.manual_seed(0)
    model, x = models.create("unet-small"), models.example_input("unet-small")
    cls = PRUNERS[method]
    calib = torch.randn(16, *x.shape[1:])
    kwargs = {k: v for k, v in {"mask_steps": 4, "calibration": calib}.items()
              if k in inspect.signature(cls).parameters}
    p = cls(model, (x,), "ethos-u55-128", budget, "channel", **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    extra = torch.optim.Adam(p.parameters(), lr=0.05) if p.parameters() else None
    for _ in range(4):
        loss = model(torch.randn(4, *x.shape[1:])).square().mean()
        opt.zero_grad()
        if extra:
            extra.zero_grad()
        loss.backward()
        opt.step()
        if extra:
            extra.step()
        p.step()
    r = p.finalize()
    cost = measure(r.predicted, p.budget.kind)
    assert p.target - float(unit_costs(p.graph, p.profile, kind, r.keep).max()) * (1 + 1e-9) <= cost <= p.target
    assert export_onnx(model, tmp_path / "u.onnx", example_inputs=(x,), result=r).verification.passed
