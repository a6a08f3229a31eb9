"""What the toolchain costs around training, all in one run: SMART step ÷ plain step, graph build,
cost estimate, hard selection, and verified ONNX export.

    python tools/bench/overheads.py [--models resnet20 resnet56 mobilenetv2] [--profile ethos-u55-128]
        [--budget latency=50%] [--batch 128] [--steps 10] [--repeats 3] [--out bench_results/overheads.json]

Per model, in one process, one torch thread (the CI machine's share):
- training step: plain vs SMART (soft top-k + masks + Adam on logits + ``pruner.step()``), the two
  interleaved step by step, medians of ``--steps`` (smart_overhead.py's measurement);
- ``graph.build`` (torch.export + channel walk), and Torch-Pruning's ``DependencyGraph`` beside it
  when installed (graph_build.py's measurement, median of ``--repeats`` after a warm-up);
- ``estimate`` (the whole-model cost report);
- ``finalize()`` (hard selection under the true cost model);
- ``export_onnx`` of the pruned model: surgery, ONNX export, onnxsim, checker, onnxruntime
  verification on 4 random samples.
Medians of ``--repeats`` for everything but the steps.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, median_seconds, write_json  # noqa: E402
from graph_build import bench_model  # noqa: E402
from smart_overhead import interleaved  # noqa: E402

from npu_compress import SmartPruner, load_profile, models  # noqa: E402
from npu_compress.export import export_onnx  # noqa: E402
from npu_compress.hardware.cost import estimate  # noqa: E402


def measure(name: str, profile, budget: str, batch: int, steps: int, repeats: int) -> dict[str, float]:
    plain_s, smart_s, units = interleaved(name, batch, steps, profile, budget)
    build = bench_model(name, profile, repeats)  # ours and Torch-Pruning's graph build, side by side
    model, ex = models.create(name).eval(), models.example_input(name)
    estimate_s = median_seconds(lambda: estimate(model, (ex,), profile), repeats)
    pruner = SmartPruner(model, (ex,), profile, budget, "channel")
    t0 = time.perf_counter()
    result = pruner.finalize()
    finalize_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        export_s = median_seconds(lambda: export_onnx(model, Path(tmp) / "m.onnx", (ex,), precision="fp32",
                                                      result=result),
                                  repeats, warmup=0)
    return {"model": name, "batch": batch, "units": units, "plain_step_s": plain_s,
            "smart_step_s": smart_s, "step_ratio": smart_s / plain_s, "graph_build_s": build["ours_s"],
            "tp_graph_build_s": build["tp_s"], "estimate_s": estimate_s,
            "finalize_s": finalize_s, "export_verified_s": export_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet56", "mobilenetv2"], choices=models.names())
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--budget", default="latency=50%")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_results/overheads.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    rows = [measure(m, profile, args.budget, args.batch, args.steps, args.repeats) for m in args.models]
    print(f"overheads, {args.profile} {args.budget}, channel structure, batch {args.batch}, "
          f"{args.threads} torch thread(s)")
    print(f"{'model':<12} {'units':>6} {'plain ms':>9} {'SMART ms':>9} {'ratio':>6} {'build s':>8} {'TP build s':>10} "
          f"{'estimate s':>10} {'finalize s':>10} {'export s':>9}")
    for r in rows:
        tpb = f"{r['tp_graph_build_s']:.3f}" if r["tp_graph_build_s"] is not None else "n/a"
        print(f"{r['model']:<12} {r['units']:>6} {1e3 * r['plain_step_s']:>9.1f} {1e3 * r['smart_step_s']:>9.1f} "
              f"{r['step_ratio']:>6.3f} {r['graph_build_s']:>8.3f} {tpb:>10} {r['estimate_s']:>10.3f} "
              f"{r['finalize_s']:>10.3f} {r['export_verified_s']:>9.3f}")
    write_json(args.out, {"benchmark": "overheads", "machine": machine(), "profile": args.profile,
                          "budget": args.budget, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
