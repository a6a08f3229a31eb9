"""The budget judged by Vela, open loop vs closed loop: what `prune --judge vela` buys.

    python tools/bench/vela_judge.py [--profile ethos-u55-128] [--models digits-cnn resnet20 ...]
        [--budgets 70 50] [--json bench_results/vela_judge.json]

For each model (random weights: Vela's cycles depend on shapes) and budget B, magnitude pruning
(costs only, no training) under our Vela-calibrated cost model:

- **open loop**: pruned to B by our cost model alone; Vela latency of that export ÷ (B × Vela's dense
  latency) — the first step of the search;
- **judged**: ``judge_budget`` searches the budget our cost model must meet so that Vela puts the
  pruned model in [0.93, 1.00] × the budget; its chosen candidate's Vela ratio, the budget our model
  was given, and the number of Vela compiles it took.

Resumable: finished (model, budget) rows are kept in ``<json>.partial`` and skipped on a re-run.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402

from npu_compress import models  # noqa: E402
from npu_compress.export.vela_budget import HIGH, LOW, judge_budget  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402


def run(name: str, profile, budget: float) -> dict:
    torch.manual_seed(0)
    model, x = models.create(name).eval(), models.example_input(name)
    t0 = time.perf_counter()
    judged = judge_budget(model, x, profile, f"latency={budget:g}%")
    return {"model": name, "budget": budget, "open_loop": judged.steps[0].ratio, "judged": judged.ratio,
            "ok": judged.ok, "internal": str(judged.internal), "compiles": len(judged.steps) + 1,
            "seconds": time.perf_counter() - t0, "vela_dense_s": judged.vela_dense_s, "search": judged.to_dict()}


def table(rows: list[dict]) -> str:
    lines = ["| model | budget | Vela ÷ budget, open loop | Vela ÷ budget, judged | our model given | "
             "Vela compiles | seconds |", "|---|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['budget']:g}% | {r['open_loop']:.3f} | {r['judged']:.3f}"
                     f"{'' if r['ok'] else ' (outside band)'} | {r['internal']} | {r['compiles']} | "
                     f"{r['seconds']:.0f} |")
    open_loop = [r["open_loop"] for r in rows]
    judged = [r["judged"] for r in rows]
    inside = sum(LOW <= j <= HIGH for j in judged)
    lines += ["", f"open loop: Vela ÷ budget {min(open_loop):.3f}–{max(open_loop):.3f}; judged: "
              f"{min(judged):.3f}–{max(judged):.3f}, {inside}/{len(judged)} inside [{LOW}, {HIGH}], "
              f"none over {HIGH}: {all(j <= HIGH for j in judged)}"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--models", nargs="+", default=["digits-cnn", "resnet20", "resnet56", "mobilenetv2", "vgg11"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[70, 50])
    ap.add_argument("--json", default="bench_results/vela_judge.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    profile = load_profile(args.profile)
    partial = Path(args.json + ".partial")
    rows = json.loads(partial.read_text()) if partial.is_file() else []
    done = {(r["model"], r["budget"]) for r in rows}
    for name in args.models:
        for b in args.budgets:
            if (name, b) in done:
                continue
            rows.append(run(name, profile, b))
            print(f"{name} {b:g}%: open loop {rows[-1]['open_loop']:.3f}, judged {rows[-1]['judged']:.3f} "
                  f"({rows[-1]['compiles']} compiles, {rows[-1]['seconds']:.0f} s)", flush=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(rows))
    text = table(rows)
    print(text)
    write_json(args.json, {"machine": machine(), "args": vars(args), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
