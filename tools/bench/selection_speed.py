"""How long the hard selection (``finalize()``'s pass) and a re-linearisation take, per model.

    python tools/bench/selection_speed.py [--models mobilenetv2 resnet56 tv/resnet152 tv/efficientnet_b0 timm/mobileone_s0]
                                          [--budgets 70 50 30] [--out bench_results/selection_speed.json]

For each model: the channel pruning graph on ethos-u55-128 (third-party models at 224 px, random
weights: costs depend on shapes), unit scores = the L2 norm of each unit's weight slices (what
``magnitude`` ranks by). Timed in CPU seconds of this process (``time.process_time``; the machine
is shared), one run each:

- ``select``: ``select_keep`` to latency = budget % of dense (channel graphs: the incremental sweep);
- ``reference``: the general path, bisection over whole-model predictions then round-by-round fill
  (``select_by_bisection``; on a checkout before the sweep existed, its ``select_keep``);
- ``unit_costs``: every unit's marginal cost at the selected keep-set (a SMART re-linearisation).

Both selections are checked with ``predict``: cost / target, and whether they chose the same units.
Third-party models need the benchmark-only torchvision / timm (see tools/bench/zoo.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import machine, write_json  # noqa: E402

from npu_compress import Budget, graph, load_profile, models  # noqa: E402
from npu_compress.graph_cost import predict, unit_costs  # noqa: E402
from npu_compress.hardware.budget import measure  # noqa: E402
from npu_compress.pruners import select  # noqa: E402

DEFAULT_MODELS = ["mobilenetv2", "resnet56", "tv/resnet152", "tv/efficientnet_b0", "timm/mobileone_s0"]


def _model(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    if name.startswith(("tv/", "timm/")):
        import zoo

        return zoo.build(name, size)
    torch.manual_seed(0)
    return models.create(name).eval(), models.example_input(name)


def norm_scores(g, model: torch.nn.Module) -> torch.Tensor:
    """Per unit: the L2 norm of its weight slices."""
    params = dict(model.named_parameters())
    scores = torch.zeros(g.num_units, dtype=torch.float64)
    for u, unit in enumerate(g.units):
        for sl in unit.slices:
            p = params.get(sl.param)
            if p is not None:
                scores[u] += float(p.detach().index_select(sl.dim, sl.indices()).double().pow(2).sum())
    return scores.sqrt()


def _cpu(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def run(name: str, budgets: list[int], size: int) -> dict:
    profile = load_profile("ethos-u55-128")
    model, x = _model(name, size)
    g, build_s = _cpu(lambda: graph.build(model, (x,), profile))
    scores = norm_scores(g, model)
    dense = measure(predict(g, torch.ones(g.num_units, dtype=torch.bool), profile), "latency")
    reference = getattr(select, "select_by_bisection", select.select_keep)
    rows = []
    for b in budgets:
        budget, target = Budget.parse(f"latency={b}%"), dense * b / 100
        new, new_s = _cpu(lambda: select.select_keep(g, scores, profile, budget, target))
        ref, ref_s = _cpu(lambda: reference(g, scores, profile, budget, target))
        _, uc_s = _cpu(lambda: unit_costs(g, profile, "latency", new))
        row = {"model": name, "units": g.num_units, "budget": b, "build_s": build_s, "select_s": new_s,
               "reference_s": ref_s, "unit_costs_s": uc_s,
               "select_ratio": measure(predict(g, new, profile), "latency") / target,
               "reference_ratio": measure(predict(g, ref, profile), "latency") / target,
               "same_keep": bool(torch.equal(new, ref)), "units_differ": int((new != ref).sum())}
        print(f"{name:<22} {g.num_units:>6} {b:>4}% select {new_s:6.2f}s  reference {ref_s:6.2f}s  "
              f"unit_costs {uc_s:5.2f}s  cost/target {row['select_ratio']:.5f} / {row['reference_ratio']:.5f}  "
              f"same {row['same_keep']}", flush=True)
        rows.append(row)
    return {"model": name, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    ap.add_argument("--budgets", nargs="+", type=int, default=[70, 50, 30])
    ap.add_argument("--size", type=int, default=224, help="input size of third-party models")
    ap.add_argument("--out", default="bench_results/selection_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = [run(name, args.budgets, args.size) for name in args.models]
    write_json(args.out, {"machine": machine(), "args": vars(args), "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
