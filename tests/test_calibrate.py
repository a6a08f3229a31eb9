"""ort-cpu calibration: quick fit, TOML round trip with source comments, the shipped profile, the CLI."""
import re
import sys

import numpy as np
import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytest.importorskip("onnxruntime")

from npu_compress.cli import main  # noqa: E402
from npu_compress.hardware import load_profile, profile_dir  # noqa: E402
from npu_compress.hardware.calibrate import calibrate_ort_cpu, profile_toml, spearman  # noqa: E402

NUMBER_LINE = re.compile(r"^\w+\s*=\s*(\[[^\]]*\]|[-+0-9.eE]+|true|false)\s*(#.*)?$")


@pytest.fixture(scope="module")
def quick():
    return calibrate_ort_cpu(threads=1, quick=True)


def _value_lines(text):
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("#", "["))]


def test_quick_calibration_round_trips(quick, tmp_path):
    profile, report = quick
    path = tmp_path / "ort-cpu.toml"
    path.write_text(profile_toml(profile, report))
    assert load_profile(path) == profile
    assert profile.name == "ort-cpu" and profile.compute.dtype.value == "fp32"
    assert profile.tiling.tile_out in (1, 2, 4, 8, 16, 32) and profile.tiling.block == (
        profile.tiling.tile_out, profile.tiling.tile_in)
    assert 1e9 < profile.peak_macs_per_s < 1e12  # 1..1000 GMAC/s: a CPU core, not a typo
    assert not profile.sparsity.block_skip and profile.sparsity.nm == ()
    assert report.to_dict()["points"] and len(report.points) >= 30


def test_quick_fit_error_is_sane(quick):
    _, report = quick
    assert report.mape_pct < 45  # observed 23-35% on the quick grid (depthwise convs are the outliers)
    assert report.spearman > 0.8  # observed 0.88-0.94
    assert "MAPE" in report.table()


def test_spearman_numpy():
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)


def test_shipped_profile_has_sources():
    path = profile_dir() / "ort-cpu.toml"
    text = path.read_text()
    tomllib.loads(text)
    profile = load_profile("ort-cpu")
    assert profile.name == "ort-cpu" and profile.source.startswith("measured:")
    for line in _value_lines(text):
        if NUMBER_LINE.match(line):
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            assert comment.startswith(("measured:", "fit:", "assumption:")), line


def test_cli_rejects_other_provider(capsys, tmp_path):
    code = main(["profiles", "calibrate", "--provider", "gpu", "-o", str(tmp_path / "x.toml")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cpu" in err
    assert not (tmp_path / "x.toml").exists()
