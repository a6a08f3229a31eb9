"""Ethos-U target: real ExecuTorch Arm backend, real Vela, numbers parsed from Vela's own report.

Needs the ``ethos-u`` extra, which ``tools/setup.sh`` installs (so CI runs these); without it the
module is skipped with the install hint, and the missing-extra error is tested on its own.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import npu_compress as nc
from npu_compress.cli import main
from npu_compress.export import Calibration, IntGate
from npu_compress.export.ethos_u import EthosUError, export_ethos_u, require_executorch
from npu_compress.export.vela_report import VelaOutputError, read_vela_output
from npu_compress.pruners import get_pruner
from npu_compress.training import Epochs, TrainConfig

HAVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("executorch", "ethosu", "tosa_serializer"))
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="ethos-u extra not installed: pip install -e '.[ethos-u]'")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ethos") / "d.ckpt"
    torch.manual_seed(0)
    nc.prune("digits-cnn", "digits", "ethos-u55-128", "latency=50%", method="magnitude",
             config=TrainConfig(Epochs(2, 1, 1), progress=False), output=path)
    return path


@needs_extra
def test_digits_compiles_with_full_offload_and_vela_figures(digits_ckpt, tmp_path):
    path = tmp_path / "d.pte"
    report = export_ethos_u(digits_ckpt, path, data="digits", require_npu=True)
    assert path.is_file() and path.stat().st_size == report.file_bytes > 10_000
    v = report.vela
    assert v.accelerator == "Ethos_U55_128" and v.system_config == "Ethos_U55_High_End_Embedded"
    assert report.cpu_operators == [] and len(v.operators) >= 4  # 3 convs + linear at least, all on the NPU
    assert v.total_cycles > 0 and sum(o.cycles for o in v.operators) > 0
    assert sum(o.macs for o in v.operators) > 1_000_000
    assert v.sram_bytes > 0 and v.flash_bytes >= v.encoded_weight_bytes > 0
    assert report.vela_latency_s == pytest.approx(v.total_cycles / 500e6)
    # our cost model against the compiler: same order (measured 0.92 here), not an identity
    assert 0.3 < report.latency_ratio < 3.0
    c = report.check
    assert c.labelled and c.samples == 360 and c.passed and c.agreement >= 0.97
    assert "Vela" in report.table() and "full offload" in report.table()
    d = report.to_dict()
    assert d["vela"]["total_cycles"] == v.total_cycles and d["cpu_operators"] == []


@needs_extra
def test_resnet20_compiles_with_zero_cpu_operators(tmp_path):
    model = nc.models.create("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    pruner = get_pruner("magnitude")(model, (x,), "ethos-u55-128", "latency=50%")
    result = pruner.finalize()
    report = export_ethos_u(model, tmp_path / "r.pte", result=result, calibration=Calibration(samples=8),
                            gate=IntGate(min_agreement=0.0, samples=16), require_npu=True)
    assert report.cpu_operators == []
    assert len(report.vela.operators) >= 19  # 19 convs + pooling + linear, every one on the NPU
    assert report.vela.total_cycles > 100_000
    assert report.predicted.latency_s == pytest.approx(pruner.result.predicted.latency_s, rel=1e-9)
    assert not report.check.labelled  # no data: random inputs, reported as such


@needs_extra
def test_cli_ethos_u_export_and_json(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "d.pte"
    code = main(["export", str(digits_ckpt), "--target", "ethos-u", "-o", str(out), "--data", "digits",
                 "--calibration", "64", "--require-npu", "--json", str(tmp_path / "r.json")])
    assert code == 0 and out.is_file()
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["target"] == "ethos-u" and r["vela"]["total_cycles"] > 0 and r["cpu_operators"] == []
    assert r["int8"]["passed"] and r["latency_ratio_predicted_over_vela"] > 0
    assert "Vela" in capsys.readouterr().out


@needs_extra
def test_missing_output_folder_fails_before_compiling(digits_ckpt, tmp_path):
    from npu_compress.io import OutputError

    with pytest.raises(OutputError, match="does not exist"):
        export_ethos_u(digits_ckpt, tmp_path / "no" / "d.pte", data="digits")


@needs_extra
def test_ethos_u_needs_an_ethos_profile(tmp_path, capsys):
    model = nc.models.create("digits-cnn").eval()
    with pytest.raises(EthosUError, match="names no Ethos-U accelerator"):
        export_ethos_u(model, tmp_path / "x.pte", example_inputs=(torch.zeros(1, 1, 8, 8),), profile="generic-4tops")
    assert not (tmp_path / "x.pte").exists()


@needs_extra
def test_ethos_u_int8_gate_refuses_and_writes_nothing(spiked_digits, tmp_path):
    path = tmp_path / "d.pte"
    with pytest.raises(nc.VerificationError, match="agreement"):
        export_ethos_u(spiked_digits, path, example_inputs=(torch.zeros(1, 1, 8, 8),), profile="ethos-u55-128",
                       data="digits", calibration=Calibration(samples=64))
    assert list(tmp_path.iterdir()) == []


def test_vela_report_without_figures_is_an_error(tmp_path):
    with pytest.raises(VelaOutputError, match="no summary"):
        read_vela_output(tmp_path)
    (tmp_path / "out_summary_X.csv").write_text("cycles_total\n10\n")
    (tmp_path / "out_per-layer.csv").write_text("Original Operator,Target,Op Cycles,MAC Count,Name\n")
    with pytest.raises(VelaOutputError, match="no operators"):
        read_vela_output(tmp_path)


def test_missing_extra_is_a_one_line_error_with_the_install_command(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    with pytest.raises(EthosUError, match=r"pip install -e '\.\[ethos-u\]'"):
        require_executorch()
    code = main(["export", str(tmp_path / "any.ckpt"), "--target", "ethos-u", "-o", str(tmp_path / "x.pte")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "[ethos-u]" in err[0]


def test_base_package_imports_without_the_extra():
    """The Arm toolchain is imported only inside the Ethos-U export, never at package import."""
    import subprocess
    import sys

    code = ("import sys; import npu_compress, npu_compress.cli, npu_compress.export; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('executorch', 'ethosu', 'tosa_serializer')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@needs_extra
def test_every_delegated_partition_is_in_the_vela_figures():
    """An op the Arm backend cannot delegate (sort) splits the program into two NPU partitions with the
    op on the host between them; Vela compiles each, and the report adds both up (it once showed the
    last partition only, a third of EfficientViT-b0)."""
    from npu_compress.export.ethos_u import vela_estimate

    class Split(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return torch.relu(self.b(torch.sort(y, dim=1)[0]))

    tool = nc.load_profile("ethos-u55-128").toolchain
    x = torch.randn(1, 8, 16, 16)
    split = vela_estimate(Split().eval(), x, tool)
    assert split.partitions == 2 and not split.fully_delegated
    assert any("sort" in op for op in split.host_operators)
    convs = [o for o in split.operators if o.original == "Conv2D"]
    assert len(convs) == 2 and split.total_cycles >= sum(o.cycles for o in convs)
