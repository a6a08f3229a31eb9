"""Speed of the cost-weighted soft top-k (npu_compress.pruners.topk), forward + backward.

For each n: float32 logits ~ N(0, 1), float32 costs log-uniform over three decades, budget a
fixed fraction of the total cost; one run = `soft_topk_solve` + `backward` of a random upstream
gradient. Reports the median (and min) of --repeats runs after --warmup runs, ms per 1e6 units
(flat across n means linear scaling), the solver's evaluations of sum c f and its work in sweeps
over the n units, and the constraint residual. Prints a table, writes JSON.

    python tools/bench/topk_speed.py --out bench_results/topk_speed.json

Wall times on a shared machine depend on what else runs: the JSON records the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from npu_compress.pruners.topk import soft_topk_solve


def _problem(n: int, seed: int, budget_frac: float):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=gen).requires_grad_(True)  # (n,) float32
    costs = torch.pow(10.0, 3.0 * torch.rand(n, generator=gen))  # (n,) float32, 1 .. 1000
    grad = torch.randn(n, generator=gen)  # (n,) upstream gradient
    return logits, costs, budget_frac * float(costs.double().sum()), grad


def _time_one(n: int, tau: float, args: argparse.Namespace) -> dict:
    logits, costs, budget, grad = _problem(n, args.seed, args.budget_frac)

    def run():
        f, info = soft_topk_solve(logits, costs, budget, tau)
        f.backward(grad)
        logits.grad = None
        return f, info

    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        f, info = run()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times)
    residual = abs(float(torch.dot(costs.double(), f.detach().double())) - budget) / budget
    return {"n": n, "tau": tau, "ms": ms, "ms_min": 1e3 * min(times), "ms_per_1e6": ms * 1e6 / n,
            "evaluations": info.evaluations, "passes": info.passes, "rel_residual": residual}


def _table(rows: list[dict]) -> str:
    head = (f"{'tau':>7} {'n':>10} {'ms':>9} {'min ms':>9} {'ms/1e6':>9} {'evals':>6} "
            f"{'sweeps':>7} {'|res|/B':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['tau']:>7g} {r['n']:>10d} {r['ms']:>9.2f} {r['ms_min']:>9.2f} "
                     f"{r['ms_per_1e6']:>9.2f} {r['evaluations']:>6d} {r['passes']:>7.2f} "
                     f"{r['rel_residual']:>9.1e}")
    return "\n".join(lines)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_results/topk_speed.json"))
    p.add_argument("--sizes", type=float, nargs="+", default=[1e3, 1e4, 1e5, 1e6, 1e7])
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 1e-3],
                   help="temperatures, in units of the logits' standard deviation")
    p.add_argument("--budget-frac", type=float, default=0.3, help="budget / total cost")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = _parse()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [_time_one(int(n), tau, args) for tau in args.taus for n in args.sizes]
    print(_table(rows))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    result = {"benchmark": "topk_speed", "torch": torch.__version__,
              "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.platform(), "processor": platform.processor(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "budget_frac": args.budget_frac, "repeats": args.repeats, "warmup": args.warmup,
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
