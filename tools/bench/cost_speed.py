"""How long estimate() takes: trace (one eval forward under a dispatch mode) + costing.

    python tools/bench/cost_speed.py [--models resnet56 vit-tiny] [--repeats 5] [--out bench_results/cost_speed.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median_seconds, write_json  # noqa: E402

from npu_compress import estimate, load_profile, models  # noqa: E402
from npu_compress.hardware.cost import report_from_records  # noqa: E402
from npu_compress.hardware.dispatch_trace import trace_ops  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet56", "vit-tiny"], choices=models.names())
    ap.add_argument("--profile", default="generic-4tops")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="bench_results/cost_speed.json")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rows = []
    for name in args.models:
        model, x = models.create(name), models.example_input(name)
        records = trace_ops(model, x)
        params = sum(p.numel() for p in model.parameters())
        total = median_seconds(lambda: estimate(model, x, profile), args.repeats)
        trace = median_seconds(lambda: trace_ops(model, x), args.repeats)
        cost = median_seconds(lambda: report_from_records(records, profile, params), args.repeats)
        rows.append({"model": name, "ops": len(records), "estimate_s": total, "trace_s": trace, "cost_s": cost})
    print(f"estimate() speed on profile {profile.name}, median of {args.repeats} after 1 warm-up")
    print(f"{'model':<14} {'ATen ops':>8} {'estimate ms':>12} {'trace ms':>9} {'cost ms':>8}")
    for r in rows:
        print(f"{r['model']:<14} {r['ops']:>8} {r['estimate_s'] * 1e3:>12.1f} {r['trace_s'] * 1e3:>9.1f} "
              f"{r['cost_s'] * 1e3:>8.1f}")
    write_json(args.out, {"benchmark": "cost_speed", "machine": machine(), "profile": profile.name, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
