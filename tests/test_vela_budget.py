"""The budget judged by Vela: a search against real Vela compiles lands the pruned model inside the band."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from npu_compress import load_profile, models
from npu_compress.errors import BudgetError, NpuCompressError
from npu_compress.export.ethos_u import vela_estimate
from npu_compress.export.vela_budget import HIGH, LOW, judge_budget
from npu_compress.graph import remove_pruned
from npu_compress.pruners import get_pruner

HAVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("executorch", "ethosu", "tosa_serializer"))
pytestmark = pytest.mark.skipif(not HAVE_EXTRA, reason="ethos-u extra not installed: pip install -e '.[ethos-u]'")


def test_judged_budget_puts_the_pruned_model_inside_the_band_by_vela():
    torch.manual_seed(0)
    profile = load_profile("ethos-u55-128")
    model, x = models.create("digits-cnn").eval(), models.example_input("digits-cnn")
    judged = judge_budget(model, x, profile, "latency=60%", max_compiles=6)
    # never over budget by Vela; the closest feasible candidate; inside the band when one was found
    # (a small net's ratio is a coarse staircase in our budget: the band may hold no keep-set)
    assert judged.ratio <= HIGH and judged.ratio > 0.85, judged.describe()
    assert judged.ratio == max(s.ratio for s in judged.steps if s.ratio <= HIGH)
    assert judged.ok == (LOW <= judged.ratio <= HIGH)
    assert judged.steps[0].ratio > HIGH  # what the cost model alone would have exported: over budget
    assert judged.vela_target_s == pytest.approx(0.6 * judged.vela_dense_s)
    # the chosen internal budget, pruned again from scratch, compiles to what the search saw
    copy = models.create("digits-cnn").eval()
    copy.load_state_dict(model.state_dict())
    result = get_pruner("magnitude")(copy, (x,), profile, str(judged.internal)).finalize()
    vela = vela_estimate(remove_pruned(copy, result.graph, result.keep), x, profile.toolchain)
    assert vela.latency_s(profile.compute.clock_hz) / judged.vela_target_s == pytest.approx(judged.ratio, rel=1e-6)
    assert "judged by Vela" in judged.describe() and judged.to_dict()["ok"] is True


def test_judge_refuses_what_vela_cannot_judge():
    model, x = models.create("digits-cnn").eval(), models.example_input("digits-cnn")
    with pytest.raises(BudgetError, match="only a latency budget"):
        judge_budget(model, x, "ethos-u55-128", "memory=50%")
    with pytest.raises(NpuCompressError, match="names no Ethos-U accelerator"):
        judge_budget(model, x, "generic-4tops", "latency=50%")


@pytest.mark.parametrize("extra,needle", [(["--structure", "block"], "needs --structure channel"),
                                          (["--profile", "generic-4tops"], "names no Ethos-U accelerator"),
                                          (["--budget", "memory=50%"], "only a latency budget")])
def test_cli_judge_refusals_are_one_line(tmp_path, capsys, extra, needle):
    from npu_compress.cli import main

    argv = ["prune", "--model", "digits-cnn", "--data", "digits", "--profile", "ethos-u55-128", "--budget",
            "latency=50%", "--method", "magnitude", "--epochs", "0,0,1", "--judge", "vela", "--no-progress",
            "-o", str(tmp_path / "d.ckpt"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "d.ckpt").exists()


@pytest.mark.slow
def test_cli_prune_judged_by_vela_then_export_meets_the_budget_by_vela(tmp_path, capsys):
    """End to end: prune --judge vela, export --target ethos-u: Vela's latency of the exported program
    within the budget as Vela counts it (dense Vela latency x 60 %)."""
    import json

    from npu_compress.cli import main

    ckpt = tmp_path / "d.ckpt"
    assert main(["prune", "--model", "digits-cnn", "--data", "digits", "--profile", "ethos-u55-128", "--budget",
                 "latency=60%", "--method", "magnitude", "--epochs", "1,1,1", "--judge", "vela", "--no-progress",
                 "-o", str(ckpt), "--json", str(tmp_path / "p.json")]) == 0
    judged = json.loads((tmp_path / "p.json").read_text())["judge"]
    assert judged["budget"] == "latency=60%" and judged["ratio"] <= HIGH
    assert main(["export", str(ckpt), "--target", "ethos-u", "--data", "digits", "-o", str(tmp_path / "d.pte"),
                 "--json", str(tmp_path / "e.json")]) == 0
    vela_s = json.loads((tmp_path / "e.json").read_text())["vela_latency_s"]
    assert vela_s <= HIGH * judged["vela_target_s"] * 1.02  # the trained keep-set, not the magnitude candidate
