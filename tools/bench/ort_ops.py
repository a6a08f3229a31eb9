"""Where a model's time goes on onnxruntime's CPU provider, its kernels by type beside our layers.

    python tools/bench/ort_ops.py tv/ghostnet_100 [--size 224] [--budget 50] [--profile ort-cpu]
        [--runs 20] [--json PATH]

The onnxruntime counterpart of ``vela_ops.py``: the model (project zoo at its own size, ``tv/`` /
``timm/`` at ``--size``, random weights as in ``ground_truth.py``; with ``--budget``
magnitude-pruned to ``latency=B%`` first) is exported by our ONNX path and run ``--runs`` times in
an onnxruntime CPU session (one thread) with its profiler on. The profiler's per-node kernel times
(wall microseconds of each node's kernel, the first two runs left out as warm-up) are summed per
operator type of the *optimised* graph (``FusedConv``, ``ReorderInput`` ... as onnxruntime runs
it), beside our ``estimate`` layers summed by (kind, op). Shares, not absolute times, are what
this is for: the profiler's clock is wall time and this machine is shared.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402
from ground_truth import breakdown_args, layers_by_op, made_at_budget  # noqa: E402

from npu_compress.export.onnx_export import _to_onnx  # noqa: E402
from npu_compress.errors import NpuCompressError  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402

WARMUP_RUNS = 2


def kernel_times(proto, x: np.ndarray, runs: int) -> dict[str, dict[str, float]]:
    """Per operator type of onnxruntime's optimised graph: nodes, mean kernel microseconds per run."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_ops")
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {sess.get_inputs()[0].name: x}
        for _ in range(WARMUP_RUNS + runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_run: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    nodes: dict[str, set] = defaultdict(set)
    run = -1
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            run += 1
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_run[run][op] += float(e["dur"])
        nodes[op].add(e["name"])
    # model_run events close a run, so kernels of run k are counted before its model_run: shift by one
    kept = [r for r in sorted(per_run) if r >= WARMUP_RUNS - 1]
    return {op: {"nodes": len(nodes[op]), "us": statistics.median(per_run[r].get(op, 0.0) for r in kept)}
            for op in nodes}


def breakdown(name: str, size: int, profile_name: str, budget: float | None, runs: int) -> dict:
    profile = load_profile(profile_name)
    model, x = made_at_budget(name, size, profile, budget)
    ort_ops = kernel_times(_to_onnx(model.eval(), x, 17), x.numpy().astype(np.float32), runs)
    ours_us, ours = layers_by_op(model, x, profile, 1e6)
    return {"model": name, "budget": budget, "profile": profile_name, "input": list(x.shape), "runs": runs,
            "ort_kernel_us": sum(v["us"] for v in ort_ops.values()), "ours_us": ours_us,
            "ort": ort_ops, "ours": {k: {"layers": v["layers"], "us": v["value"]} for k, v in ours.items()}}


def table(b: dict) -> str:
    what = "dense" if b["budget"] is None else f"latency={b['budget']:g}%"
    total = b["ort_kernel_us"]
    lines = [f"{b['model']} {b['input']} {what}: onnxruntime kernels {total:,.0f} us (median of {b['runs']} "
             f"runs, wall), ours ({b['profile']}) {b['ours_us']:,.0f} us",
             "", "| onnxruntime op | nodes | us | share |", "|---|---:|---:|---:|"]
    for k, v in sorted(b["ort"].items(), key=lambda kv: -kv[1]["us"]):
        lines.append(f"| {k} | {v['nodes']} | {v['us']:,.0f} | {v['us'] / total:.1%} |")
    lines += ["", "| our layer (kind op) | layers | us | share |", "|---|---:|---:|---:|"]
    for k, v in sorted(b["ours"].items(), key=lambda kv: -kv[1]["us"]):
        lines.append(f"| {k} | {v['layers']} | {v['us']:,.0f} | {v['us'] / b['ours_us']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = breakdown_args(__doc__, 224, "ort-cpu")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        b = breakdown(args.model, args.size, args.profile, args.budget, args.runs)
    except NpuCompressError as e:  # an infeasible budget, an unknown profile: one line, exit 2
        ap.exit(2, f"{ap.prog}: {e}\n")
    print(table(b))
    if args.json:
        write_json(args.json, {"machine": machine(), **b})


if __name__ == "__main__":
    main()
