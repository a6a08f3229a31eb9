"""onnxruntime CPU latency of dense vs channel-pruned exports: measured speedup vs predicted.

    python tools/bench/export_latency.py [--models resnet56 mobilenetv2] [--budgets 70 50 30]
        [--profiles generic-4tops ethos-u55-128] [--batch 1 32] [--repeats 30]

Pruned models come from SMART's importance-initialised logits, finalized without training
(latency does not depend on the weights). Each (dense, pruned) pair is timed interleaved in one
process, one onnxruntime thread, median of ``--repeats`` runs after warm-up. The predicted
speedup is the profile's (an NPU's) dense / pruned latency; onnxruntime on this CPU is not that
NPU, so the two need not agree: the calibrated ort-cpu profile (issue 7) is where they should.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402

from npu_compress import BudgetError, SmartPruner, models  # noqa: E402
from npu_compress.export import export_onnx  # noqa: E402


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _time_pair(a: ort.InferenceSession, b: ort.InferenceSession, x: np.ndarray, repeats: int) -> tuple[float, float]:
    feeds = {a.get_inputs()[0].name: x}
    for _ in range(3):
        a.run(None, feeds)
        b.run(None, feeds)
    ta, tb = [], []
    for _ in range(repeats):  # interleaved: load drift hits both
        for sess, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv2"], choices=models.names())
    ap.add_argument("--budgets", nargs="+", type=float, default=[70, 50, 30])
    ap.add_argument("--profiles", nargs="+", default=["generic-4tops", "ethos-u55-128"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="bench_results/export_latency.json")
    args = ap.parse_args()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="npu_bench_"))
    for name in args.models:
        x1 = models.example_input(name)
        dense_path = work / f"{name}-dense.onnx"
        export_onnx(models.create(name).eval(), dense_path, example_inputs=(x1,), precision="fp32")
        dense_sess = _session(dense_path)
        for profile in args.profiles:
            for pct in args.budgets:
                model = models.create(name).eval()
                row = {"model": name, "profile": profile, "budget_pct": pct}
                try:
                    pruner = SmartPruner(model, (x1,), profile, f"latency={pct:g}%", "channel", mask_steps=1)
                except BudgetError as e:
                    row["infeasible"] = str(e)
                    rows.append(row)
                    print(f"{name:<12} {profile:<14} {pct:>5g}%  infeasible: {e}")
                    continue
                result = pruner.finalize()
                path = work / f"{name}-{profile}-{pct:g}.onnx"
                export_onnx(model, path, example_inputs=(x1,), precision="fp32", result=result)
                row.update(predicted_speedup=result.dense.latency_s / result.predicted.latency_s,
                           achieved_ratio=result.achieved_ratio, macs_ratio=result.predicted.macs / result.dense.macs)
                sess = _session(path)
                for b in args.batch:
                    x = np.random.default_rng(0).standard_normal((b, *x1.shape[1:]), dtype=np.float32)
                    td, tp = _time_pair(dense_sess, sess, x, args.repeats)
                    row[f"dense_ms_b{b}"], row[f"pruned_ms_b{b}"] = td * 1e3, tp * 1e3
                    row[f"measured_speedup_b{b}"] = td / tp
                rows.append(row)
                print(f"{name:<12} {profile:<14} {pct:>5g}%  predicted x{row['predicted_speedup']:.2f}  " +
                      "  ".join(f"b{b}: {row[f'dense_ms_b{b}']:.2f}->{row[f'pruned_ms_b{b}']:.2f} ms "
                                f"x{row[f'measured_speedup_b{b}']:.2f}" for b in args.batch))
    write_json(args.out, {"benchmark": "export_latency", "machine": machine(), "ort": ort.__version__,
                          "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
