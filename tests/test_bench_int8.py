"""tools/bench/int8.py end to end on a tiny npz: real training, QDQ and Ethos-U exports, Vela figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

from test_ethos_u import HAVE_EXTRA

ROOT = Path(__file__).resolve().parents[1]


def _npz(path: Path) -> Path:
    """10 classes of 1x8x8 images readable from the image: bright row = label mod 8, plus a bright
    first column for labels 8 and 9 (a checkpoint rebuilds the zoo model with its 10 outputs)."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 10, n)
        x = rng.uniform(0, 0.2, (n, 8, 8, 1))
        x[np.arange(n), y % 8, :, 0] += 0.8
        x[y >= 8, :, 0, 0] += 0.8
        return (255 * np.clip(x, 0, 1)).astype(np.uint8), y
    x_tr, y_tr = split(96)
    x_te, y_te = split(48)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return path


@pytest.mark.skipif(not HAVE_EXTRA, reason="ethos-u extra not installed: pip install -e '.[ethos-u]'")
def test_int8_bench_runs_and_reports_every_path(tmp_path):
    out = tmp_path / "int8.json"
    cmd = [sys.executable, str(ROOT / "tools/bench/int8.py"), "--data", str(_npz(tmp_path / "d.npz")),
           "--model", "digits-cnn", "--train", "96", "--test", "48", "--pretrain-epochs", "1", "--epochs", "1,1",
           "--calibrate", "minmax", "--calibration", "16", "--threads", "1", "--work", str(tmp_path / "work"),
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["dense", "pruned 50%"]
    for r in rows:
        q, e = r["qdq"]["minmax"], r["ethos_u"]
        assert 0 <= q["accuracy"] <= 1 and 0 <= q["agreement"] <= 1 and q["file_bytes"] > 0
        assert abs(q["weight_bytes_ratio"] - 1) <= 0.10
        assert e["vela"]["total_cycles"] > 0 and e["cpu_operators"] == [] and e["pte_bytes"] > 0
        assert e["vela_latency_s"] > 0 and e["predicted_latency_s"] > 0
    assert rows[1]["ethos_u"]["predicted_latency_s"] <= 0.5 * rows[0]["ethos_u"]["predicted_latency_s"] * (1 + 1e-9)
