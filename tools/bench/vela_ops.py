"""Where a model's cycles go, Vela's operators beside our layers: the breakdown behind a ground-truth gap.

    python tools/bench/vela_ops.py tv/shufflenet_v2_x0_5 [--size 96] [--budget 50] [--profile ethos-u55-128]
        [--sequence] [--json PATH]

The model (project zoo at its own size, ``tv/`` / ``timm/`` at ``--size``, random weights as in
``ground_truth.py``; with ``--budget`` magnitude-pruned to ``latency=B%`` first) is compiled by Vela
for the profile's accelerator; Vela's operators are summed by type (count, total cycles, compute
cycles) and our ``estimate`` layers by (kind, op). ``--sequence`` also lists Vela's operators in
program order (which adds run with separate Rescales, which transposes surround what).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402
from ground_truth import breakdown_args, layers_by_op, made_at_budget  # noqa: E402

from npu_compress.export.ethos_u import vela_estimate  # noqa: E402
from npu_compress.errors import NpuCompressError  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402


def breakdown(name: str, size: int, profile_name: str, budget: float | None) -> dict:
    profile = load_profile(profile_name)
    model, x = made_at_budget(name, size, profile, budget)
    report = vela_estimate(model, x, profile.toolchain)
    vela: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for o in report.operators:
        row = vela[o.original]
        row[0], row[1], row[2] = row[0] + 1, row[1] + o.cycles, row[2] + o.npu_cycles
    ours_cycles, ours = layers_by_op(model, x, profile, profile.compute.clock_hz)
    return {"model": name, "budget": budget, "profile": profile_name, "input": list(x.shape),
            "vela_total_cycles": report.total_cycles, "ours_cycles": ours_cycles,
            "vela": {k: {"ops": v[0], "cycles": v[1], "npu_cycles": v[2]} for k, v in vela.items()},
            "ours": {k: {"layers": v["layers"], "cycles": v["value"]} for k, v in ours.items()},
            "sequence": [[o.original, o.cycles, o.npu_cycles, o.name] for o in report.operators]}


def table(b: dict, sequence: bool) -> str:
    what = "dense" if b["budget"] is None else f"latency={b['budget']:g}%"
    lines = [f"{b['model']} {b['input']} {what} on "
             f"{b['profile']}: Vela {b['vela_total_cycles']:,} cycles, ours {b['ours_cycles']:,.0f} "
             f"(ours / Vela {b['ours_cycles'] / b['vela_total_cycles']:.3f})",
             "", "| Vela operator | ops | cycles | compute cycles |", "|---|---:|---:|---:|"]
    for k, v in sorted(b["vela"].items(), key=lambda kv: -kv[1]["cycles"]):
        lines.append(f"| {k} | {v['ops']} | {v['cycles']:,} | {v['npu_cycles']:,} |")
    lines += ["", "| our layer (kind op) | layers | cycles |", "|---|---:|---:|"]
    for k, v in sorted(b["ours"].items(), key=lambda kv: -kv[1]["cycles"]):
        lines.append(f"| {k} | {v['layers']} | {v['cycles']:,.0f} |")
    if sequence:
        lines += ["", "Vela's operators in order (type, cycles, compute cycles, tensor):"]
        lines += [f"  {op} {c} {n} {t}" for op, c, n, t in b["sequence"]]
    return "\n".join(lines)


def main() -> None:
    ap = breakdown_args(__doc__, 96, "ethos-u55-128")
    ap.add_argument("--sequence", action="store_true", help="also list Vela's operators in program order")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        b = breakdown(args.model, args.size, args.profile, args.budget)
    except NpuCompressError as e:  # an infeasible budget, an unknown profile: one line, exit 2
        ap.exit(2, f"{ap.prog}: {e}\n")
    print(table(b, args.sequence))
    if args.json:
        write_json(args.json, {"machine": machine(), **b})


if __name__ == "__main__":
    main()
