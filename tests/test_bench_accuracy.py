"""tools/bench/accuracy.py end to end on a tiny npz: the command BENCHMARKS.md prints keeps working.

Real training, real exports, a real onnxruntime clock; only the sizes are tiny. The Torch-Pruning
side needs the ``bench`` extra and is tested when it is installed.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _npz(path: Path) -> Path:
    """Digits-shaped data (1x8x8) whose class is readable from the image: bright row = label."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 8, n)
        x = rng.uniform(0, 0.2, (n, 8, 8, 1))
        x[np.arange(n), y, :, 0] += 0.8
        return (255 * x).astype(np.uint8), y
    x_tr, y_tr = split(96)
    x_te, y_te = split(48)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return path


def _run(tmp_path: Path, methods: list[str], tp: list[str]) -> dict:
    out = tmp_path / "acc.json"
    cmd = [sys.executable, str(ROOT / "tools/bench/accuracy.py"), "--data", str(_npz(tmp_path / "d.npz")),
           "--model", "digits-cnn", "--train", "96", "--test", "48", "--pretrain-epochs", "1", "--epochs", "1,1",
           "--profiles", "ethos-u55-128", "--budgets", "50", "--methods", *methods, "--tp", *tp,
           "--workers", "1", "--rounds", "1", "--repeats", "2", "--work", str(tmp_path / "work"),
           "--json", str(out), "--plot", ""]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def _check_rows(payload: dict, expected: set[str]) -> None:
    rows = {r["key"]: r for r in payload["rows"]}
    assert set(rows) == expected
    for r in rows.values():
        assert "error" not in r, r.get("traceback")
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["ort_latency_s"] > 0
        assert Path(r["onnx"]).is_file()
        # what the file holds costs what the pruner predicted, and never more than the budget
        assert r["exported_latency_s"] == pytest.approx(r["predicted_s"], rel=1e-9)
        assert r["achieved_ratio"] <= 1.0 + 1e-9
        if r["kind"] != "dense":
            assert r["achieved_ratio"] > 0.5


def test_accuracy_bench_ours(tmp_path):
    payload = _run(tmp_path, ["smart", "magnitude"], [])
    _check_rows(payload, {"ethos-u55-128__100__dense",
                          "ethos-u55-128__50__smart", "ethos-u55-128__50__magnitude"})
    assert "| ethos-u55-128 | 50% | smart |" in payload["table"]


@pytest.mark.skipif(importlib.util.find_spec("torch_pruning") is None, reason="Torch-Pruning (bench extra) absent")
def test_accuracy_bench_torch_pruning(tmp_path):
    payload = _run(tmp_path, ["magnitude"], ["magnitude"])
    _check_rows(payload, {"ethos-u55-128__100__dense", "ethos-u55-128__50__magnitude",
                          "ethos-u55-128__50__tp-magnitude", "ethos-u55-128__50__tplate-magnitude"})
    for kind in ("tp", "tp-late"):
        tp_row = next(r for r in payload["rows"] if r["kind"] == kind)
        assert tp_row["tp_search_evals"] > 10 and 0 < tp_row["tp_ratio"] < 1
    assert "its own workflow (MACs matched)" in payload["exactness"]
