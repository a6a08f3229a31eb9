"""How long building the pruning graph takes: ours (graph.build) next to Torch-Pruning's DependencyGraph.

    python tools/bench/graph_build.py [--models resnet56 mobilenetv2 vit-tiny resnet50] [--repeats 3]
                                      [--out bench_results/graph_build.json]

Ours: `npu_compress.graph.build(model.eval(), (x,), profile, structure="channel")` (torch.export +
channel walk + units). Theirs: `torch_pruning.DependencyGraph().build_dependency(model, example_inputs=x)`
(autograd trace + dependency graph) plus `list(DG.get_all_groups(ignored_layers=[classifier]))`, so both
sides end with their list of coupled channel groups. The classifier (last nn.Linear) is ignored on
their side because ours never prunes the model output. Torch-Pruning's DependencyGraph has no notion
of attention heads (`num_heads` is an argument of its pruners, applied when pruning), so its ViT qkv
groups are per channel; ours groups heads. `resnet50` is the ImageNet ResNet-50 of models_large.py at
(1, 3, 224, 224); the others come from the zoo. A Torch-Pruning failure is recorded, not raised.
Needs the `bench` extra (torch-pruning).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import models_large  # noqa: E402
from _common import machine, median_seconds, write_json  # noqa: E402

from npu_compress import graph, load_profile, models  # noqa: E402

try:
    import torch_pruning as tp
except ImportError:  # benchmark-only dependency: pip install -e .[bench]
    tp = None

LARGE = {"resnet50": (models_large.resnet50, models_large.example_input)}
DEFAULT_MODELS = ["resnet56", "mobilenetv2", "vit-tiny", "resnet50"]


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name in LARGE:
        factory, example = LARGE[name]
        return factory().eval(), example()
    return models.create(name).eval(), models.example_input(name)


def _classifier(model: nn.Module) -> nn.Module:
    """The last nn.Linear: the classifier head of every model benchmarked here."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """median_seconds of fn, plus fn's result from the last run."""
    last: list[Any] = [None]

    def run() -> None:
        last[0] = fn()

    return median_seconds(run, repeats), last[0]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def bench_model(name: str, profile: Any, repeats: int) -> dict[str, Any]:
    model, x = _model(name)
    row: dict[str, Any] = {"model": name, "input_shape": list(x.shape),
                           "params": sum(p.numel() for p in model.parameters()),
                           "ours_s": None, "ours_units": None, "ours_groups": None, "ours_error": None,
                           "tp_s": None, "tp_groups": None, "tp_channels": None, "tp_error": None, "ratio": None}
    try:
        row["ours_s"], g = _timed(lambda: graph.build(model.eval(), (x,), profile, structure="channel"), repeats)
        row["ours_units"], row["ours_groups"] = len(g.units), len(g.groups)
    except Exception as exc:  # noqa: BLE001 - recorded in the table / JSON
        row["ours_error"] = _error(exc)
    if tp is None:
        row["tp_error"] = "torch_pruning is not installed (pip install -e .[bench])"
        return row
    head = _classifier(model)

    def theirs() -> list[Any]:
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        return list(dg.get_all_groups(ignored_layers=[head]))

    try:
        row["tp_s"], groups = _timed(theirs, repeats)
        row["tp_groups"] = len(groups)
        row["tp_channels"] = sum(len(grp[0].idxs) for grp in groups)  # root channels over all groups
    except Exception as exc:  # noqa: BLE001
        row["tp_error"] = _error(exc)
    if row["ours_s"] is not None and row["tp_s"] is not None:
        row["ratio"] = row["ours_s"] / row["tp_s"]
    return row


def _tp_versions() -> dict[str, Any]:
    try:
        dist = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    # the 1.6.1 wheel still says __version__ = "1.6.0": keep both
    return {"torch_pruning": dist, "torch_pruning_module_version": getattr(tp, "__version__", None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=models.names() + list(LARGE))
    ap.add_argument("--profile", default="generic-4tops")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_results/graph_build.json")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rows = []
    for name in args.models:
        rows.append(bench_model(name, profile, args.repeats))
        print(f"  {name} done", file=sys.stderr, flush=True)
    info = {**machine(), **_tp_versions(), "loadavg": list(os.getloadavg())}

    def sec(v: Any) -> str:
        return "ERR" if v is None else f"{v:.3f}"

    print(f"pruning-graph build time, median of {args.repeats} after 1 warm-up; ours: channel structure on "
          f"{profile.name}; torch-pruning {info['torch_pruning']}: DependencyGraph + get_all_groups")
    print(f"{'model':<12} {'params':>11} {'ours s':>8} {'torch-pruning s':>16} {'ours/theirs':>12} "
          f"{'our groups/units':>17} {'their groups':>13}")
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        ours_gu = "ERR" if r["ours_groups"] is None else f"{r['ours_groups']}/{r['ours_units']}"
        theirs_g = "ERR" if r["tp_groups"] is None else str(r["tp_groups"])
        print(f"{r['model']:<12} {r['params']:>11,} {sec(r['ours_s']):>8} {sec(r['tp_s']):>16} {ratio:>12} "
              f"{ours_gu:>17} {theirs_g:>13}")
    for r in rows:
        for side in ("ours", "tp"):
            if r[f"{side}_error"]:
                print(f"  {r['model']} {side} error: {r[f'{side}_error']}")
    print(f"machine: {info['cores']} cores, {info['torch_threads']} torch threads, load average "
          f"{', '.join(f'{v:.1f}' for v in info['loadavg'])}")
    write_json(args.out, {"benchmark": "graph_build", "machine": info, "profile": profile.name,
                          "repeats": args.repeats, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
