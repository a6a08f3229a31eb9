"""Vela calibration: real Vela compiles of real probes, paired with our layers, fitted per op class."""
from __future__ import annotations

import tomllib

import numpy as np
import pytest

from npu_compress.cli import main
from npu_compress.hardware import load_profile
from npu_compress.hardware.calibrate_vela import (Sample, calibrate_vela, efficiency_toml, fit, probes,
                                                  with_efficiency)
from npu_compress.hardware.profile import profile_dir, profile_from_dict

from test_ethos_u import needs_extra


def test_fit_recovers_known_efficiency():
    """Samples generated from known coefficients: the per-class fit returns them."""
    profile = load_profile("ethos-u55-128")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        ideal, elems = float(rng.uniform(1e3, 1e5)), int(rng.integers(500, 50_000))
        samples.append(Sample(f"p{i}", "conv", "Conv2D", ideal, elems, round(max(1.4 * ideal, 1.5 * elems) + 300), 0))
    (f,) = fit(samples, profile)
    assert f.op_class == "conv" and f.samples == 12
    assert f.efficiency.compute_scale == pytest.approx(1.4, rel=5e-3)
    assert f.efficiency.elem_cycles == pytest.approx(1.5, rel=1e-2)
    assert f.efficiency.overhead_cycles == pytest.approx(300, rel=0.25)  # small next to the cycles: loosely pinned
    assert f.mape_after < 0.5 < f.mape_before


@needs_extra
def test_calibration_on_real_vela_pairs_ops_and_reduces_error(tmp_path):
    profile = load_profile("ethos-u55-128")
    grid = [p for p in probes(quick=True) if p.label.split()[0] in ("conv3x3", "dwconv3x3", "residual")
            and p.label.endswith(("@8", "@16")) and any(f" {c}" in p.label for c in ("8", "16", "32"))][:9]
    fitted, report = calibrate_vela(profile, grid=grid)
    classes = {s.op_class for s in report.samples}
    assert {"conv", "depthwise"} <= classes and not report.skipped
    assert all(s.vela_npu_cycles > 0 and s.ideal_cycles > 0 for s in report.samples)
    by_class = {f.op_class: f for f in report.fits}
    assert by_class["conv"].mape_after < by_class["conv"].mape_before
    assert fitted.efficiency.of("conv").compute_scale == by_class["conv"].efficiency.compute_scale
    # the written section keeps the rest of the profile and reads back equal, with provenance
    text = with_efficiency((profile_dir() / "ethos-u55-128.toml").read_text(), report)
    assert "measured: Vela" in text and "[toolchain]" in text
    assert profile_from_dict(tomllib.loads(text)) == fitted
    assert efficiency_toml(report).count("measured: Vela") == 1 + 3 * len(report.fits)


def test_cli_calibrate_vela_needs_an_ethos_profile(tmp_path, capsys):
    code = main(["profiles", "calibrate", "--vela", "generic-4tops", "-o", str(tmp_path / "x.toml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "names no Ethos-U accelerator" in err[0]
    assert not (tmp_path / "x.toml").exists()


@needs_extra
def test_transformer_ops_are_calibrated_on_vela_and_attention_is_summed():
    """Token linears pair one to one with Vela's Conv2D; attention and LayerNorm, which Vela lowers
    into many operators, are paired with the sum of them. On the U55 attention costs tens of times its
    MAC-array ideal and a token linear about its ideal: the classes must come apart."""
    from npu_compress.hardware.calibrate_vela import transformer_probes

    grid = [p for p in transformer_probes(quick=True)
            if p.label in ("tokens 16x64->64", "tokens 16x192->192", "tokens 64x128->256", "attention 1x16x32",
                           "attention 3x16x32", "attention 1x64x32", "layernorm 16x64", "layernorm 64x64",
                           "layernorm 16x192")]
    fitted, report = calibrate_vela(load_profile("ethos-u55-128"), grid=grid)
    assert not report.skipped and len(report.samples) == len(grid)
    by_class = {f.op_class: f for f in report.fits}
    assert set(by_class) == {"gemm", "attention", "norm"}
    attention = [s for s in report.samples if s.op_class == "attention"]
    assert all("MatMul" in s.vela_op and s.vela_npu_cycles > 20 * s.ideal_cycles for s in attention)
    gemm = [s for s in report.samples if s.op_class == "gemm"]
    assert all(s.vela_op == "Conv2D" and s.vela_npu_cycles < 5 * s.ideal_cycles for s in gemm)
    assert by_class["attention"].efficiency.compute_scale > 10 * by_class["gemm"].efficiency.compute_scale
    assert all(f.mape_after < f.mape_before for f in report.fits)


@needs_extra
def test_channel_shuffle_is_priced_from_the_transposes_vela_adds():
    """A channel shuffle becomes several Transposes mixed with the program's own edge transposes:
    it is paired with the cycles it adds over the same model without it, fitted as the op family
    ``permute`` (every layout permutation) while the rest of ``move`` keeps its free default (a
    concat that copies is fitted as ``cat`` from split-concat probes, not in this grid)."""
    profile = load_profile("ethos-u55-128")
    grid = [p for p in probes() if p.label.startswith("channel shuffle")][:3]
    assert len(grid) == 3 and all(p.reference is not None for p in grid)
    fitted, report = calibrate_vela(profile, grid=grid)
    assert not report.skipped and len(report.samples) == 3
    assert all(s.op == "permute" and s.op_class == "move" and s.vela_op == "Transpose" for s in report.samples)
    # a transpose costs Vela about a cycle per element moved: far above the free "move" default
    assert all(s.vela_npu_cycles > 0.5 * s.out_elems for s in report.samples)
    (f,) = report.fits
    assert f.op_class == "permute" and f.samples == 3 and f.mape_after < f.mape_before
    assert fitted.efficiency.of("move", "permute") == f.efficiency
    # a concat is not fitted from this grid (no split-concat probe): the rest of "move" stays free
    from npu_compress.hardware.profile import class_default
    assert fitted.efficiency.of("move", "cat") == class_default("move")


def _saved_report(tmp_path, accelerator="ethos-u55-128"):
    """A calibration report as 'profiles calibrate --vela --json' writes it, of samples generated from
    known coefficients (conv 1.4 / 1.5 / 300; attention 150x its ideal, beyond the old fit grid)."""
    import json

    from npu_compress.hardware.calibrate_vela import VelaCalibration

    rng = np.random.default_rng(0)
    samples = []
    for i in range(12):
        ideal, elems = float(rng.uniform(1e3, 1e5)), int(rng.integers(500, 50_000))
        samples.append(Sample(f"p{i}", "conv", "Conv2D", ideal, elems, round(max(1.4 * ideal, 1.5 * elems) + 300), 0,
                              ((8, ideal), (16, ideal), (32, ideal))))
    for i in range(6):
        ideal = float(rng.uniform(1e2, 1e4))
        samples.append(Sample(f"a{i}", "attention", "MatMul+Table", ideal, 512, round(150 * ideal + 5000), 0,
                              ((8, ideal), (16, ideal), (32, ideal)), "scaled_dot_product_attention"))
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(VelaCalibration(accelerator, "5.1.0", samples, []).to_dict()))
    return path


def test_refit_from_a_saved_report_recovers_the_coefficients_without_vela(tmp_path):
    out = tmp_path / "u55.toml"
    code = main(["profiles", "calibrate", "--vela", "ethos-u55-128", "--refit", str(_saved_report(tmp_path)),
                 "-o", str(out)])
    assert code == 0
    fitted = load_profile(str(out))
    conv, attention = fitted.efficiency.of("conv"), fitted.efficiency.of("attention")
    assert conv.compute_scale == pytest.approx(1.4, rel=5e-3) and conv.elem_cycles == pytest.approx(1.5, rel=1e-2)
    assert attention.compute_scale == pytest.approx(150, rel=1e-2)  # over 100: the fit grid reaches 1000
    assert "measured: Vela 5.1.0, 12 conv operators" in out.read_text()
    assert fitted.compute == load_profile("ethos-u55-128").compute  # the rest of the profile kept


@pytest.mark.parametrize("case,message", [
    ("other-accelerator", "its samples are of ethos-u65-512"),
    ("not-json", "not a Vela calibration report"),
    ("no-vela", "give it with --vela PROFILE"),
])
def test_refit_errors_are_one_line_and_write_nothing(tmp_path, capsys, case, message):
    saved = _saved_report(tmp_path, "ethos-u65-512" if case == "other-accelerator" else "ethos-u55-128")
    if case == "not-json":
        saved.write_text("{not json")
    out = tmp_path / "out.toml"
    args = ["profiles", "calibrate"] + ([] if case == "no-vela" else ["--vela", "ethos-u55-128"])
    code = main(args + ["--refit", str(saved), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()
