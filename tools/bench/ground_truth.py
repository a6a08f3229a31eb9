"""Our cost model judged by Arm's Vela: predicted vs Vela latency, dense and pruned, and the budget as Vela sees it.

    python tools/bench/ground_truth.py [--profile ethos-u55-128] [--baseline old-ethos-u55-128.toml]
        [--models digits-cnn resnet20 resnet56 mobilenetv2 vgg11] [--budgets 70 50]
        [--json bench_results/ground_truth.json]

For each model (random weights: Vela's cycles depend on shapes; its lossless weight compression
makes flash-bound layers somewhat data dependent, which random weights bias towards incompressible)
and each profile variant — ``--profile`` (the shipped, Vela-calibrated one) and a baseline (the
peak-rate profile before calibration, or ``--profile`` without ``[efficiency]``) — the dense model and magnitude-pruned copies at ``latency=B%`` (pruned
under that variant's own cost model, no training: costs only) are compiled for the profile's
accelerator through ExecuTorch's Arm backend and Vela (``vela_estimate``). Reported: predicted ÷
Vela latency per model, MAPE and Spearman over all exports, and **the budget judged by Vela**:
Vela latency of each pruned export ÷ (B% of Vela's dense latency).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402

from npu_compress import models  # noqa: E402
from npu_compress.export.ethos_u import vela_estimate  # noqa: E402
from npu_compress.graph import remove_pruned  # noqa: E402
from npu_compress.hardware.calibrate import mape, spearman  # noqa: E402
from npu_compress.hardware.cost import estimate  # noqa: E402
from npu_compress.hardware.profile import Efficiency, load_profile  # noqa: E402
from npu_compress.pruners import get_pruner  # noqa: E402


def variants(profile: str, baseline: str | None) -> dict[str, Any]:
    """The profile as judged, and a baseline: a given TOML, or the profile without [efficiency]."""
    judged = load_profile(profile)
    base = load_profile(baseline) if baseline else dataclasses.replace(judged, efficiency=Efficiency())
    return {"baseline": base, "profile": judged}


def run_model(name: str, profiles: dict[str, Any], budgets: list[float]) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    x = models.example_input(name)
    dense = models.create(name).eval()
    tool = next(iter(profiles.values())).toolchain
    t0 = time.perf_counter()
    vela_dense = vela_estimate(dense, x, tool)
    rows = []
    for label, prof in profiles.items():
        rows.append({"model": name, "variant": label, "budget": 100.0, "predicted_s": estimate(dense, x, prof).latency_s,
                     "vela_s": vela_dense.latency_s(prof.compute.clock_hz), "vela_cycles": vela_dense.total_cycles,
                     "cpu_operators": vela_dense.cpu_operators})
    dense_vela_s = rows[0]["vela_s"]
    for label, prof in profiles.items():
        for b in budgets:
            model = models.create(name).eval()
            model.load_state_dict(dense.state_dict())
            pruner = get_pruner("magnitude")(model, (x,), prof, f"latency={b:g}%")
            result = pruner.finalize()
            small = remove_pruned(model, result.graph, result.keep).eval()
            vela = vela_estimate(small, x, tool)
            vela_s = vela.latency_s(prof.compute.clock_hz)
            rows.append({"model": name, "variant": label, "budget": b, "predicted_s": result.predicted.latency_s,
                         "vela_s": vela_s, "vela_cycles": vela.total_cycles, "cpu_operators": vela.cpu_operators,
                         "budget_by_vela": vela_s / (b / 100 * dense_vela_s),
                         "budget_by_ours": result.achieved_ratio})
    for r in rows:
        r["ratio"] = r["predicted_s"] / r["vela_s"]
    print(f"{name}: {len(rows)} exports in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for label in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == label]
        pred = np.array([r["predicted_s"] for r in sel])
        vela = np.array([r["vela_s"] for r in sel])
        judged = [r["budget_by_vela"] for r in sel if "budget_by_vela" in r]
        out[label] = {"exports": len(sel), "mape_pct": mape(pred, vela), "spearman": spearman(pred, vela),
                      "ratio_min": float((pred / vela).min()), "ratio_max": float((pred / vela).max()),
                      "budget_by_vela_min": min(judged), "budget_by_vela_max": max(judged)}
    return out


def table(rows: list[dict[str, Any]], summ: dict[str, dict[str, float]]) -> str:
    lines = ["| model | profile variant | budget | ours (ms) | Vela (ms) | ours / Vela | Vela ÷ budget |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        judged = f"{r['budget_by_vela']:.3f}" if "budget_by_vela" in r else "-"
        budget = "dense" if r["budget"] == 100.0 else f"{r['budget']:g}%"
        lines.append(f"| {r['model']} | {r['variant']} | {budget} | {r['predicted_s'] * 1e3:.4f} | "
                     f"{r['vela_s'] * 1e3:.4f} | {r['ratio']:.3f} | {judged} |")
    lines += ["", "| profile variant | exports | MAPE vs Vela | Spearman | ours / Vela range | Vela ÷ budget range |",
              "|---|---:|---:|---:|---|---|"]
    for label, s in summ.items():
        lines.append(f"| {label} | {s['exports']} | {s['mape_pct']:.1f}% | {s['spearman']:.3f} | "
                     f"{s['ratio_min']:.2f}–{s['ratio_max']:.2f} | {s['budget_by_vela_min']:.3f}–"
                     f"{s['budget_by_vela_max']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ethos-u55-128", help="the profile judged (name or TOML)")
    ap.add_argument("--baseline", help="a profile TOML to judge beside it (default: --profile without [efficiency])")
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "resnet20", "resnet56", "mobilenetv2", "vgg11"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[70, 50])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="bench_results/ground_truth.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    profiles = variants(args.profile, args.baseline)
    rows = []
    for name in args.models:
        rows += run_model(name, profiles, args.budgets)
    summ = summary(rows)
    text = table(rows, summ)
    print(text)
    write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows, "summary": summ, "table": text})


if __name__ == "__main__":
    main()
