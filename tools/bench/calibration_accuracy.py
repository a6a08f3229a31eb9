"""How well the measured ``ort-cpu`` profile predicts real onnxruntime CPU latency (issue #7).

Predicted (``npu_compress.estimate`` / ``layer_cost`` on ``ort-cpu``) vs measured (onnxruntime
CPUExecutionProvider, 1 thread, median) for single-layer shapes NOT in the fitting grid (held
out) and for whole zoo models exported dense, plus channel-pruned variants at latency 70/50%.
Measured times have the per-``session.run`` overhead subtracted, as in calibration.

    python tools/bench/calibration_accuracy.py [--out bench_results/calibration_accuracy.json] [--no-pruned]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

import npu_compress as nc  # noqa: E402
from npu_compress import models  # noqa: E402
from npu_compress.hardware.calibrate import (Shape, _session, fit_grid, mape, median_run_seconds,  # noqa: E402
                                             run_overhead_seconds, spearman)

PROFILE = "ort-cpu"
MODELS = ["digits-cnn", "resnet20", "resnet56", "mobilenetv2", "vgg11", "unet-small"]


def held_out_shapes() -> list[Shape]:
    """Shapes absent from the full fitting grid: other channel counts, spatial sizes, kernels."""
    shapes = [Shape("conv", ci, co, 3, hw) for ci, co, hw in
              [(20, 28, 12), (36, 56, 12), (56, 80, 12), (100, 100, 12), (28, 20, 24), (80, 160, 6),
               (160, 192, 6), (3, 32, 32), (44, 44, 24), (72, 120, 10)]]
    shapes += [Shape("conv", ci, co, 5, hw) for ci, co, hw in [(16, 24, 16), (40, 40, 12)]]
    shapes += [Shape("conv", ci, co, 1, hw) for ci, co, hw in [(20, 72, 12), (160, 40, 8), (96, 320, 6), (72, 24, 24)]]
    shapes += [Shape("dwconv", c, c, 3, hw) for c, hw in [(48, 12), (96, 24), (144, 10), (384, 4)]]
    shapes += [Shape("gemm", k, n, 1, m) for m, k, n in [(1, 384, 768), (4, 200, 300), (32, 96, 160), (128, 64, 256)]]
    shapes += [Shape(op, n) for op, n in [("add", 3000), ("add", 100_000), ("relu", 30_000), ("relu", 300_000)]]
    grid = set(fit_grid(False))
    assert not grid & set(shapes), "held-out shapes must not be in the fitting grid"
    return shapes


def measure_onnx(path: Path, x: torch.Tensor, overhead: float) -> float:
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    return max(median_run_seconds(_session(model, 1), {name: x.numpy()}, 0.3, min_repeats=10) - overhead, 1e-7)


def model_rows(pruned: bool, overhead: float, tmp: Path) -> list[dict]:
    rows = []
    for name in MODELS:
        variants = [("dense", None)] + ([("lat70", "latency=70%"), ("lat50", "latency=50%")] if pruned else [])
        for tag, budget in variants:
            torch.manual_seed(0)
            model = models.create(name).eval()
            x = models.example_input(name)
            pred = nc.estimate(model, x, PROFILE).latency_s
            result = None
            if budget:  # channel pruning zeroes units; export removes them physically
                result = nc.SmartPruner(model, (x,), PROFILE, budget, mask_steps=1).finalize()
                pred = result.predicted.latency_s
            path = tmp / f"{name}-{tag}.onnx"
            nc.export_onnx(model, path, example_inputs=(x,), verify=False, precision="fp32", result=result)
            meas = measure_onnx(path, x, overhead)
            rows.append({"name": f"{name} {tag}", "measured_s": meas, "predicted_s": pred})
            print(f"  {name} {tag}: measured {meas * 1e3:.3f} ms, predicted {pred * 1e3:.3f} ms", flush=True)
    return rows


def layer_rows(overhead: float) -> list[dict]:
    profile = nc.load_profile(PROFILE)
    rows = []
    for s in held_out_shapes():
        model, feeds = s.graph()
        meas = max(median_run_seconds(_session(model, 1), feeds, 0.05) - overhead, 1e-7)
        rows.append({"name": s.label, "measured_s": meas, "predicted_s": nc.layer_cost(s.spec(), profile).latency_s})
    return rows


def summary(rows: list[dict]) -> dict:
    m = np.array([r["measured_s"] for r in rows])
    p = np.array([r["predicted_s"] for r in rows])
    return {"n": len(rows), "mape_pct": mape(p, m), "spearman": spearman(p, m)}


def table(title: str, rows: list[dict]) -> str:
    s = summary(rows)
    lines = [f"{title:<34} {'measured ms':>11} {'predicted ms':>12} {'error':>8}"]
    lines += [f"{r['name'][:34]:<34} {r['measured_s'] * 1e3:>11.4f} {r['predicted_s'] * 1e3:>12.4f} "
              f"{(r['predicted_s'] / r['measured_s'] - 1) * 100:>7.1f}%" for r in rows]
    lines.append(f"{title}: n={s['n']}, MAPE {s['mape_pct']:.1f}%, Spearman {s['spearman']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_results/calibration_accuracy.json")
    ap.add_argument("--no-pruned", action="store_true", help="skip the pruned variants (faster)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overhead, _ = run_overhead_seconds(1)
    layers = layer_rows(overhead)
    print(table("held-out layers", layers) + "\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mrows = model_rows(not args.no_pruned, overhead, Path(tmp))
    print(table("models", mrows))
    write_json(args.out, {"machine": machine(), "profile": nc.load_profile(PROFILE).to_dict(),
                          "run_overhead_s": overhead, "layers": {"summary": summary(layers), "rows": layers},
                          "models": {"summary": summary(mrows), "rows": mrows}})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
