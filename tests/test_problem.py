"""The pruning problem built once, methods as (problem, config), and a method defined outside the package."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import npu_compress as nc
from npu_compress import models
from npu_compress.cli import main
from npu_compress.errors import PrunerConfigError
from npu_compress.pruners import (PRUNERS, DecayPruning, MagnitudePruner, MethodConfig, Pruner, SmartConfig,
                                  SmartPruner, register, unregister)
from npu_compress.pruners.problem import config_from_text


@pytest.fixture
def digits():
    return models.create("digits-cnn"), models.example_input("digits-cnn")


def test_plan_is_frozen_and_priced_once(digits):
    model, x = digits
    problem = nc.plan(model, (x,), "generic-4tops", "latency=60%")
    assert problem.structure is nc.graph.Structure.CHANNEL and isinstance(problem.profile, nc.HardwareProfile)
    assert problem.minimum < problem.target == pytest.approx(0.6 * problem.dense.latency_s, rel=1e-12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        problem.target = 1.0
    with pytest.raises(nc.BudgetError, match="infeasible"):
        problem.with_budget("latency=1%")
    tighter = problem.with_budget("latency=50%")
    assert tighter.graph is problem.graph and tighter.target < problem.target


def test_methods_share_the_problem_and_dpm_shares_it_with_its_base(digits, monkeypatch):
    model, x = digits
    problem = nc.plan(model, (x,), "generic-4tops", "latency=60%")
    calls = []
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: calls.append(1))  # nothing may trace again
    smart = SmartPruner(problem, SmartConfig(mask_steps=5, frac_tol=0.5))
    assert smart.graph is problem.graph and smart.config.frac_tol == 0.5 and smart.config.steps == 5
    dpm = DecayPruning(problem, {"base": "smart", "mask_steps": 4, "steps": 2})
    assert dpm.base.problem is dpm.problem is problem and dpm.base.graph is dpm.graph
    assert dpm.base.config.mask_steps == 2  # the base decides at decide_at = mask_steps - steps
    assert calls == []
    with pytest.raises(PrunerConfigError, match="no knob 'tau'"):
        SmartPruner(problem, {"tau": 1.0})


def test_step_after_finalize_only_holds_the_mask(digits):
    model, x = digits
    p = MagnitudePruner(nc.plan(model, (x,), "generic-4tops", "latency=60%"))
    seen = []
    p._step = lambda: seen.append(1)
    p.step()
    result = p.finalize()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)  # an optimiser step that touches pruned weights
    p.step()
    assert seen == [1]  # the method's own step ran before finalize only
    small = nc.graph.remove_pruned(model, result.graph, result.keep)
    assert torch.allclose(model(x), small(x), atol=1e-5)  # pruned units back at zero


def test_prune_traces_the_model_once(monkeypatch, digits_small):
    calls = []
    real = torch.export.export

    def counting(*args, **kwargs):
        calls.append(type(args[0]).__name__)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counting)
    out = nc.prune("resnet20", _rgb(digits_small), "generic-4tops", "latency=70%", method="magnitude",
                   config=nc.TrainConfig(nc.Epochs(0, 1, 0), batch_size=128, progress=False))
    assert calls == ["CifarResNet"]
    assert out.result.achieved_ratio <= 1.0


def _rgb(data):
    """digits as 3 x 32 x 32 images (what resnet20 takes), a few samples."""
    up = lambda t: torch.nn.functional.interpolate(t, size=32).repeat(1, 3, 1, 1)  # noqa: E731
    d = data.subset(128, 32)
    return dataclasses.replace(d, x_train=up(d.x_train), x_test=up(d.x_test), input_shape=(3, 32, 32),
                               mean=None, std=None)


def test_prune_takes_a_module(digits_small):
    model = models.create("digits-cnn")
    out = nc.prune(model, digits_small, "generic-4tops", "latency=60%", method="magnitude",
                   config=nc.TrainConfig(nc.Epochs(0, 1, 1), progress=False), input_shape=(1, 1, 8, 8),
                   method_config={"schedule": "iterative"})
    assert out.model is model and out.result.achieved_ratio <= 1.0
    assert out.train.pruner.config.schedule == "iterative" and out.train.pruner.config.mask_steps == 4


# ---------------------------------------------------------------- a method from outside the package

SEEN: list = []


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    """Keep the units with the largest (index * slope) mod 7."""

    slope: int = 1
    bias: float = 0.0
    loud: bool = False


class ToyPruner(Pruner):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        SEEN.append(self.config)

    def scores(self) -> torch.Tensor:
        idx = torch.arange(self.graph.num_units, dtype=torch.float64)
        return (idx * self.config.slope) % 7 + self.config.bias


@pytest.fixture
def toy():
    register("toy", ToyConfig)(ToyPruner)
    SEEN.clear()
    yield
    unregister("toy")


def test_a_toy_method_runs_from_the_cli_with_method_args(toy, tmp_path, capsys):
    ckpt = tmp_path / "toy.ckpt"
    code = main(["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%", "--method", "toy",
                 "--method-arg", "slope=3", "--method-arg", "bias=0.5", "--method-arg", "loud=yes",
                 "--epochs", "0,1,0", "--no-progress", "-o", str(ckpt)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert SEEN and SEEN[-1].slope == 3 and SEEN[-1].bias == 0.5 and SEEN[-1].loud is True
    assert SEEN[-1].mask_steps > 0  # filled in by the driver
    assert "toy" in out and ckpt.is_file()
    code = main(["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%", "--method", "toy",
                 "--method-arg", "slope=steep", "-o", str(tmp_path / "x.ckpt")])
    assert code == 2 and "slope='steep' must be an integer" in capsys.readouterr().err
    code = main(["prune", "--model", "digits-cnn", "--data", "digits", "--budget", "latency=60%", "--method", "toy",
                 "--method-arg", "tilt=1", "-o", str(tmp_path / "x.ckpt")])
    assert code == 2 and "no knob 'tilt'; its knobs: mask_steps, slope, bias, loud" in capsys.readouterr().err


def test_help_lists_every_method_and_its_knobs(toy, capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "toy: mask_steps: int or none = None, slope: int = 1, bias: float = 0.0, loud: bool = False" in out
    for name, cls in PRUNERS.items():
        assert f"{name}:" in out
    assert "calibration" not in out  # a tensor is not a command-line knob


def test_knob_text_is_typed():
    from npu_compress.pruners.hbgs import HbgsConfig, Selection

    got = config_from_text(HbgsConfig, "hbgs", ["p=2", "selection=omp", "compensate=false", "mask_steps=none"])
    assert got == {"p": 2, "selection": Selection.OMP, "compensate": False, "mask_steps": None}
    with pytest.raises(PrunerConfigError, match="unknown --method-arg selection 'lasso'; allowed: backward, omp"):
        config_from_text(HbgsConfig, "hbgs", ["selection=lasso"])
    with pytest.raises(PrunerConfigError, match="must be key=value"):
        config_from_text(HbgsConfig, "hbgs", ["p"])
    assert np.isinf(config_from_text(nc.pruners.dpm.DpmConfig, "dpm", ["t_len=inf"])["t_len"])


# ---------------------------------------------------------------- results passed explicitly, checked on export

def test_checkpoint_names_pruned_units_and_export_checks_them(tmp_path, digits_small, caplog):
    from npu_compress.checkpoint import CheckpointError, PruneCheckpoint

    out = nc.prune("digits-cnn", digits_small, "generic-4tops", "latency=60%", method="magnitude",
                   config=nc.TrainConfig(nc.Epochs(0, 1, 0), progress=False), output=tmp_path / "a.ckpt")
    assert not any(name.startswith("_npu") for name in vars(out.model))  # the result is returned, not attached
    ckpt = PruneCheckpoint.load(tmp_path / "a.ckpt")
    pruned = ckpt.units["pruned"]
    assert len(pruned) == int((~out.result.keep).sum()) > 0
    assert all(isinstance(param, str) and isinstance(dim, int) and idx for unit in pruned for param, dim, idx in unit)
    assert nc.export_onnx(tmp_path / "a.ckpt", tmp_path / "a.onnx", precision="fp32").verification.passed

    unit = pruned[0][0]
    unit[2] = [i + 1 for i in unit[2]]  # a unit the rebuilt graph does not have at that place
    ckpt.save(tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match=r"does not match model 'digits-cnn' as rebuilt now .*pruned unit 0"):
        nc.export_onnx(tmp_path / "b.ckpt", tmp_path / "b.onnx", precision="fp32")
    assert not (tmp_path / "b.onnx").exists()

    ckpt.units = None  # a checkpoint from before unit identities: one line, then trusted by position
    ckpt.save(tmp_path / "c.ckpt")
    with caplog.at_level("WARNING", logger="npu_compress.export.job"):
        assert nc.export_onnx(tmp_path / "c.ckpt", tmp_path / "c.onnx", precision="fp32").verification.passed
    assert "predates stored unit identities" in caplog.text


def test_block_checkpoint_stores_the_weight_layouts(tmp_path, digits_small):
    from npu_compress.checkpoint import CheckpointError, PruneCheckpoint

    nc.prune("digits-cnn", digits_small, "generic-4tops", "memory=60%", method="magnitude", structure="block",
             config=nc.TrainConfig(nc.Epochs(0, 1, 0), progress=False), output=tmp_path / "a.ckpt")
    ckpt = PruneCheckpoint.load(tmp_path / "a.ckpt")
    assert ckpt.units["structure"] == "block" and ckpt.units["layouts"][0][0].endswith("weight")
    ckpt.units["layouts"][0][4] = [1, 1]  # another tile: every unit of that weight would be another block
    ckpt.save(tmp_path / "b.ckpt")
    with pytest.raises(CheckpointError, match="weight layout 0 differs"):
        nc.export_onnx(tmp_path / "b.ckpt", tmp_path / "b.onnx", precision="fp32")
