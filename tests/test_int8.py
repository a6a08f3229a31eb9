"""INT8 QDQ export: real onnxruntime quantization, real checks on the bundled digits, numbers asserted."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import npu_compress as nc
from npu_compress.cli import main
from npu_compress.errors import NpuCompressError, VerificationError
from npu_compress.export import Calibration, IntGate, Precision, export_onnx
from npu_compress.export.verify import run_onnx
from npu_compress.hardware.profile import profile_dir
from npu_compress.training import Epochs, TrainConfig

BUDGETS = {"channel": "latency=50%", "block": "latency=50%", "nm": "memory=70%"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """digits-cnn trained and magnitude-pruned on generic-4tops (int8) for each structure."""
    folder = tmp_path_factory.mktemp("int8")
    out = {}
    for structure, budget in BUDGETS.items():
        torch.manual_seed(0)
        path = folder / f"{structure}.ckpt"
        nc.prune("digits-cnn", "digits", "generic-4tops", budget, structure=structure, method="magnitude",
                 config=TrainConfig(Epochs(2, 1, 1), progress=False), output=path)
        out[structure] = path
    return out


def _int8_tensors(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]


@pytest.mark.parametrize("structure", ["channel", "block", "nm"])
def test_int8_export_meets_gate_and_counts_the_bytes_the_cost_model_counted(checkpoints, tmp_path, structure):
    path = tmp_path / "m.onnx"
    report = export_onnx(checkpoints[structure], path, data="digits")  # generic-4tops is int8: int8 by default
    assert report.precision == "int8"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["npu_compress.precision"] == "int8"
    assert any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    floats = [numpy_helper.to_array(i).size for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    assert _int8_tensors(path) and max(floats) <= 128  # weights are int8; only per-channel scales stay float
    # the file holds what the budget counted (int8 weights, int32 biases, packed indices)
    assert abs(report.weight_bytes_ratio - 1.0) <= 0.10, report.weight_bytes_ratio
    i = report.int8
    assert i.labelled and i.samples == 360 and i.passed
    assert i.agreement >= 0.97 and i.drop <= 1.0
    assert 0.85 <= i.float_accuracy <= 1.0 and 0.85 <= i.int_accuracy <= 1.0
    assert report.verification.passed  # the float graph was checked before quantization
    if structure in ("block", "nm"):
        assert report.packed and all(p.dense_bytes == math.prod(p.shape) for p in report.packed)  # int8: 1 byte each
    # the file runs on its own in onnxruntime, with any batch size
    x = nc.load_dataset("digits").normalized().x_test[:5]
    assert run_onnx(path, x)[0].shape == (5, 10)


def test_float_file_of_an_int8_chip_is_four_times_the_cost_model(checkpoints, tmp_path):
    report = export_onnx(checkpoints["channel"], tmp_path / "f.onnx", data="digits", precision="fp32")
    assert report.precision == "fp32" and report.int8 is None
    assert report.weight_bytes_ratio == pytest.approx(4.0, rel=0.05)
    assert _int8_tensors(tmp_path / "f.onnx") == []


def test_default_precision_follows_the_profile_dtype(tmp_path):
    x = torch.randn(1, 1, 8, 8)
    model = nc.models.create("digits-cnn").eval()
    assert export_onnx(model, tmp_path / "a.onnx", example_inputs=(x,)).precision == "fp32"  # no profile: fp32
    assert export_onnx(model, tmp_path / "b.onnx", example_inputs=(x,), profile="ort-cpu").precision == "fp32"
    r = export_onnx(model, tmp_path / "c.onnx", example_inputs=(x,), profile="ethos-u55-128")
    assert r.precision == "int8" and not r.int8.labelled  # no data: random inputs, said plainly
    assert "random inputs" in r.calibrated_on and "random inputs" in r.table()


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_calibration_methods(checkpoints, tmp_path, method):
    report = export_onnx(checkpoints["channel"], tmp_path / "m.onnx", data="digits",
                         calibration=Calibration(method, 64))
    assert report.int8.passed and f"64 samples, {method}" in report.calibrated_on


def test_a_model_that_cannot_meet_the_gate_is_refused_and_nothing_is_written(spiked_digits, tmp_path):
    spiked = spiked_digits
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    x = nc.load_dataset("digits").normalized().x_test[:1]
    with pytest.raises(VerificationError, match="agreement|drop"):
        export_onnx(spiked, path, example_inputs=(x,), data="digits", precision="int8")
    assert path.read_bytes() == b"old"  # an existing file is left as is
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # and no temp files are left
    # the same model passes with the gate opened: the refusal came from the gate, not a crash
    report = export_onnx(spiked, tmp_path / "open.onnx", example_inputs=(x,), data="digits", precision="int8",
                         gate=IntGate(min_agreement=0.0, max_drop=100.0))
    assert report.int8.agreement < 0.95


class _NaN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_nan_outputs_are_refused(tmp_path, precision):
    path = tmp_path / "nan.onnx"
    with pytest.raises(VerificationError, match="non-finite"):
        export_onnx(_NaN().eval(), path, example_inputs=(torch.randn(1, 1, 8, 8),), precision=precision,
                    profile="generic-4tops")
    assert not path.exists()


def test_custom_profile_file_round_trips_prune_to_export(tmp_path):
    text = (profile_dir() / "generic-4tops.toml").read_text().replace('name = "generic-4tops"', 'name = "my-chip"')
    custom = tmp_path / "chip.toml"
    custom.write_text(text)
    outcome = nc.prune("digits-cnn", "digits", str(custom), "latency=60%", method="magnitude",
                       config=TrainConfig(Epochs(1, 1, 0), progress=False), output=tmp_path / "c.ckpt")
    x = torch.zeros(1, 1, 8, 8)
    assert outcome.result.profile.name == "my-chip" and outcome.result.problem.profile is outcome.result.profile
    from_model = export_onnx(outcome.model, tmp_path / "a.onnx", example_inputs=(x,), data="digits",
                             result=outcome.result)
    from_ckpt = export_onnx(tmp_path / "c.ckpt", tmp_path / "b.onnx", data="digits")
    for r in (from_model, from_ckpt):
        assert r.profile == "my-chip" and r.precision == "int8"
        assert r.pruned.latency_s == pytest.approx(outcome.result.predicted.latency_s, rel=1e-9)


def test_precision_and_gate_arguments_are_checked():
    with pytest.raises(NpuCompressError, match="precision 'int4'"):
        Precision.parse("int4")
    with pytest.raises(NpuCompressError, match="calibrate 'mse'"):
        Calibration("mse")
    with pytest.raises(NpuCompressError, match="samples"):
        Calibration("minmax", 0)
    with pytest.raises(NpuCompressError, match="min_agreement"):
        IntGate(min_agreement=1.5)
    with pytest.raises(NpuCompressError, match="max_drop"):
        IntGate(max_drop=float("nan"))


def test_cli_int8_export_and_json(checkpoints, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    code = main(["export", str(checkpoints["block"]), "-o", str(out), "--data", "digits", "--calibration", "128",
                 "--json", str(tmp_path / "r.json")])
    assert code == 0
    text = capsys.readouterr().out
    assert "int8 check: top-1 agreement" in text and "passed" in text
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["precision"] == "int8" and r["int8"]["passed"] and r["int8"]["samples"] == 360
    assert abs(r["weight_bytes_ratio"] - 1) <= 0.10 and r["cost_memory_bytes"] > 0
    assert "128 samples" in r["calibrated_on"]


@pytest.mark.parametrize("argv, message", [
    (["--min-agreement", "1.5"], "min_agreement"),
    (["--max-drop", "-1"], "max_drop"),
    (["--calibration", "0"], "calibration samples"),
    (["--tolerance", "-1"], "tolerance"),
    (["--require-npu"], "--require-npu"),
])
def test_cli_bad_int8_arguments_are_one_line_errors(checkpoints, tmp_path, capsys, argv, message):
    out = tmp_path / "m.onnx"
    assert main(["export", str(checkpoints["channel"]), "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_nm_indices_are_bit_packed(checkpoints, tmp_path):
    """2:4 positions take 2 bits each (4 to a byte), as the cost model's nm_index_bits counts them."""
    report = export_onnx(checkpoints["nm"], tmp_path / "nm.onnx", data="digits")
    assert report.packed
    for p in report.packed:
        kept = p.value_bytes  # one int8 byte per kept weight
        assert p.index_bytes == -(-kept // 4)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_int16_chip_gets_int16_activations(tmp_path):
    """A16W8: int8 weights, int16 activations (onnxruntime's com.microsoft QDQ ops), so less noise."""
    text = (profile_dir() / "generic-4tops.toml").read_text()
    chip = tmp_path / "i16.toml"
    chip.write_text(text.replace('dtype = "int8"', 'dtype = "int16"').replace('"generic-4tops"', '"i16"'))
    model = nc.models.create("digits-cnn").eval()
    x = torch.zeros(1, 1, 8, 8)
    r16 = export_onnx(model, tmp_path / "a16.onnx", example_inputs=(x,), profile=str(chip), data="digits")
    r8 = export_onnx(model, tmp_path / "a8.onnx", example_inputs=(x,), profile="generic-4tops", data="digits")
    proto = onnx.load(str(tmp_path / "a16.onnx"))
    zero_points = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT16]
    assert r16.precision == "int8" and zero_points  # int16 activation zero points
    assert r16.int8.sqnr_db > r8.int8.sqnr_db + 3  # 8 more activation bits: less noise (int8 weights remain)
