"""A fair accuracy benchmark (issue 16): every method, equal total epochs, several seeds, one dense start.

    python tools/bench/fair_accuracy.py --tier cpu  [--model resnet20] [--seeds 0 1 2] [--budgets 30 50 70]
        [--arms smart smart-frozen ...] [--workers 2] [--threads 1] [--work bench_results/fair_cpu]
    python tools/bench/fair_accuracy.py --tier full --model resnet20 --workers 8 --threads 2   # the device

Protocol:
1. **One dense checkpoint** per (tier, model), trained once and cached in ``--work`` (resumable):
   cpu tier: the first 10,000 CIFAR-10 training images, 15 epochs, no augmentation; full tier:
   all 50,000 with random crop + flip, 160 epochs (ResNet-20 reaches ~91 %).
2. **Every cell** (arm × budget × seed × epoch split) starts from that checkpoint and trains the
   same total number of epochs (cpu 2, full 30). An arm runs every split it is given (``M,F``: M
   mask epochs where it prunes, F fine-tune epochs with the hard mask; ``0,T``: pruned up front) and
   is reported at its best split (highest mean over seeds). One cosine LR over each cell.
3. **Arms**: ``smart``; ``smart-frozen`` (SMART with its logits frozen at their start: the control
   the learned mask must beat); ``dpm-smart`` (Decay Pruning around SMART); ``hbgts``; our
   ``magnitude`` and ``taylor``; ``tp-magnitude`` / ``tp-taylor`` (Torch-Pruning, searched to the
   same budget by our cost model over uniform/global ratio and round_to, pruned up front).
   Budgets are latency on ``--profile`` (default ethos-u55-128), judged by our cost model.
4. For our methods the test accuracy right before and right after ``finalize()`` is recorded
   (before BatchNorm re-estimation): how much the switch from soft to hard masks costs.

Ablations: ``FAIR_SMART_KNOBS='{"tau_start": 0.5}'`` overrides SMART's knobs and ``FAIR_MASK_LR=0.02``
the mask optimiser's learning rate; cell names do not carry them, so give each ablation its own
``--work`` (copy the dense checkpoint into it).

Each cell is a JSON file under ``--work/cells/``; a re-run skips finished cells, and a cell that was
interrupted resumes from its progress file (``--work/progress/``). Writes the table (markdown) to
stdout and everything to ``--json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import cached_cells, machine, run_cells, write_json  # noqa: E402

from npu_compress import models  # noqa: E402
from npu_compress.data import Dataset, load_npz  # noqa: E402
from npu_compress.graph import remove_pruned  # noqa: E402
from npu_compress.hardware.budget import Budget  # noqa: E402
from npu_compress.hardware.cost import estimate  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402
from npu_compress.pruners import get_pruner  # noqa: E402
from npu_compress.pruners import plan as plan_problem  # noqa: E402
from npu_compress.pruning import CALIBRATION_SAMPLES, run_config  # noqa: E402
from npu_compress.training import Epochs, TrainConfig, evaluate, train  # noqa: E402

SMART_KNOBS: dict[str, Any] = json.loads(os.environ.get("FAIR_SMART_KNOBS", "{}"))  # ablations: knob -> value
MASK_LR: float | None = float(os.environ["FAIR_MASK_LR"]) if os.environ.get("FAIR_MASK_LR") else None  # ablations
ARMS = ("smart", "smart-frozen", "dpm-smart", "hbgts", "magnitude", "taylor", "tp-magnitude", "tp-taylor")


@dataclass(frozen=True)
class Tier:
    train: int | None  # first N training images (None: all)
    test: int | None
    augment: bool
    pretrain_epochs: int
    pretrain_lr: float
    total: int  # epochs per cell
    lr: float  # peak LR per cell
    batch: int
    splits: dict[str, tuple[tuple[int, int], ...]]  # arm -> (mask, fine-tune) splits to try


def _splits(total: int, learned: tuple[tuple[int, int], ...], oneshot: tuple[tuple[int, int], ...]
            ) -> dict[str, tuple[tuple[int, int], ...]]:
    return {"smart": learned, "smart-frozen": learned, "dpm-smart": learned, "hbgts": learned,
            "magnitude": oneshot, "taylor": oneshot, "tp-magnitude": ((0, total),), "tp-taylor": ((0, total),)}


TIERS = {
    "cpu": Tier(10000, 5000, False, 15, 0.1, 2, 0.01, 64, _splits(2, ((1, 1),), ((0, 2), (1, 1)))),
    "full": Tier(None, None, True, 160, 0.1, 30, 0.02, 128, _splits(30, ((10, 20), (5, 25)), ((0, 30), (10, 20)))),
}


@dataclass(frozen=True)
class Cell:
    arm: str
    budget: float  # % of dense latency
    seed: int
    split: tuple[int, int]

    @property
    def key(self) -> str:
        return f"{self.arm}__{self.budget:g}__s{self.seed}__e{self.split[0]}-{self.split[1]}"


@dataclass(frozen=True)
class Setup:
    data: str
    model: str
    tier: str
    profile: str
    work: str
    threads: int
    group_size: int | None = None  # channels per unit for our methods (None: the profile's tile_out)


def load_data(setup: Setup) -> Dataset:
    t = TIERS[setup.tier]
    data = load_npz(setup.data, max_train=t.train, max_test=t.test).normalized()
    return data.augmented() if t.augment else data


# ---------------------------------------------------------------- the dense start

def dense_path(setup: Setup) -> Path:
    return Path(setup.work) / f"dense_{setup.model}_{setup.tier}.pt"


def pretrained(setup: Setup, data: Dataset) -> dict[str, Any]:
    """The dense checkpoint every cell starts from (trained once; resumable while training)."""
    path = dense_path(setup)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    t = TIERS[setup.tier]
    path.parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no work folder yet
    torch.manual_seed(0)
    model = models.create(setup.model, num_classes=data.num_classes)
    cfg = TrainConfig(Epochs(0, 0, t.pretrain_epochs), lr=t.pretrain_lr, batch_size=t.batch, seed=0, progress=False,
                      checkpoint=path.with_suffix(".progress"), resume=True)
    t0, c0 = time.perf_counter(), time.process_time()
    run = train(model, data, cfg)
    payload = {"state_dict": model.state_dict(), "accuracy": run.accuracy, "seconds": time.perf_counter() - t0,
               "cpu_seconds": time.process_time() - c0, "epochs": t.pretrain_epochs}
    torch.save(payload, path)
    return payload


def _dense_model(setup: Setup, data: Dataset) -> torch.nn.Module:
    model = models.create(setup.model, num_classes=data.num_classes)
    model.load_state_dict(pretrained(setup, data)["state_dict"])
    return model


# ---------------------------------------------------------------- one cell

def _method_config(arm: str, mask_steps: int, data: Dataset):
    name = {"smart-frozen": "smart", "dpm-smart": "dpm"}.get(arm, arm)
    cls = get_pruner(name)
    knobs = {"smart-frozen": {"learn": False}, "dpm-smart": {"base": "smart"}}.get(arm, {})
    if name == "smart":
        knobs = {**knobs, **SMART_KNOBS}
    return cls, run_config(cls.Config(**knobs), mask_steps, data)


def run_cell(setup: Setup, cell: Cell) -> dict[str, Any]:
    from accuracy import tp_matched  # Torch-Pruning searched to our budget (benchmark-only dependency)

    torch.set_num_threads(setup.threads)
    torch.manual_seed(cell.seed)
    t = TIERS[setup.tier]
    data = load_data(setup)
    ex = torch.zeros(1, *data.input_shape)
    prof = load_profile(setup.profile)
    model = _dense_model(setup, data)
    dense_lat = estimate(model, (ex,), prof).latency_s
    target = dense_lat * cell.budget / 100
    m_ep, f_ep = cell.split
    progress = Path(setup.work) / "progress" / f"{cell.key}.progress"
    progress.parent.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(Epochs(0, m_ep, f_ep), lr=t.lr, batch_size=t.batch, seed=cell.seed, progress=False,
                      checkpoint=progress, resume=True)
    if MASK_LR is not None:
        cfg = dataclasses.replace(cfg, mask_lr=MASK_LR)
    out: dict[str, Any] = {**asdict(cell), "key": cell.key, "target_s": target, "dense_latency_s": dense_lat}
    t0, c0 = time.perf_counter(), time.process_time()
    if cell.arm.startswith("tp-"):
        calib = (data.x_train[:CALIBRATION_SAMPLES], data.y_train[:CALIBRATION_SAMPLES])
        model, found = tp_matched(model, ex, cell.arm[3:], prof, target, calib)
        out.update(found, achieved_ratio=found["predicted_s"] / target)
        run = train(model, data, cfg)
    else:
        batches = len(data.loaders(t.batch, seed=cell.seed)[0])
        cls, config = _method_config(cell.arm, max(m_ep * batches, 1), data)
        budget = Budget.parse(f"latency={cell.budget:g}%")
        test_loader = data.loaders(256)[1]

        def make(m: torch.nn.Module):
            pruner = cls(plan_problem(m, (ex,), prof, budget, "channel", group_size=setup.group_size), config)
            original = pruner.finalize

            def finalize():  # the accuracy the switch from soft to hard masks costs (before re-estimation)
                if pruner.result is None:
                    out["acc_before_finalize"] = evaluate(m, test_loader)
                    res = original()
                    out["acc_after_finalize"] = evaluate(m, test_loader)
                    return res
                return original()
            pruner.finalize = finalize
            return pruner
        run = train(model, data, cfg, make_pruner=make)
        res = run.prune_result
        out.update(predicted_s=res.predicted.latency_s, achieved_ratio=res.achieved_ratio,
                   units_kept=int(res.keep.sum()), units=len(res.keep))
    out.update(accuracy=run.accuracy, train_s=time.perf_counter() - t0, train_cpu_s=time.process_time() - c0,
               history=[{k: v for k, v in h.items() if isinstance(v, (int, float, str))} for h in run.history])
    if not cell.arm.startswith("tp-"):  # ours are masked: remove the pruned channels as export does
        model = remove_pruned(model, run.prune_result.graph, run.prune_result.keep)
    out["exported_latency_s"] = estimate(model, (ex,), prof).latency_s  # the physically pruned model, priced
    out["exported_ratio"] = out["exported_latency_s"] / target
    progress.unlink(missing_ok=True)
    return out


def _run_safely(setup: Setup, cell: Cell) -> dict[str, Any]:
    try:
        return run_cell(setup, cell)
    except Exception as e:  # a failing cell is a row with its error, not a lost run
        return {**asdict(cell), "key": cell.key, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


# ---------------------------------------------------------------- report

def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, Any]]:
    """Per (arm, budget): the split with the best mean accuracy over seeds, its mean, SD and worst
    achieved / budget."""
    out: dict[tuple[str, float], dict[str, Any]] = {}
    ok = [r for r in rows if "error" not in r]
    for arm, budget in sorted({(r["arm"], r["budget"]) for r in ok}):
        best = None
        for split in sorted({tuple(r["split"]) for r in ok if r["arm"] == arm and r["budget"] == budget}):
            here = [r for r in ok if r["arm"] == arm and r["budget"] == budget and tuple(r["split"]) == split]
            accs = [r["accuracy"] for r in here]
            entry = {"split": split, "n": len(here), "mean": statistics.mean(accs),
                     "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "worst_ratio": max(r["exported_ratio"] for r in here),
                     "finalize_drop": _mean([r["acc_before_finalize"] - r["acc_after_finalize"] for r in here
                                             if "acc_after_finalize" in r])}
            if best is None or entry["mean"] > best["mean"]:
                best = entry
        out[(arm, budget)] = best
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def table(summary: dict[tuple[str, float], dict[str, Any]], arms: list[str], budgets: list[float]) -> str:
    lines = ["| arm | " + " | ".join(f"latency {b:g}%" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for arm in arms:
        cols = []
        for b in budgets:
            s = summary.get((arm, b))
            cols.append("" if s is None else f"{100 * s['mean']:.2f} ± {100 * s['sd']:.2f} "
                        f"(n={s['n']}, {s['split'][0]},{s['split'][1]}; ≤{s['worst_ratio']:.3f})")
        lines.append(f"| {arm} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def headline(summary: dict[tuple[str, float], dict[str, Any]], budgets: list[float]) -> str:
    lines = ["| budget | SMART | frozen-logit control | best of magnitude / TP magnitude | SMART - that | "
             "accuracy lost at finalize (SMART, mean) |", "|---|---|---|---|---|---|"]
    for b in budgets:
        s, f = summary.get(("smart", b)), summary.get(("smart-frozen", b))
        peers = [(a, summary[(a, b)]) for a in ("magnitude", "tp-magnitude") if (a, b) in summary]
        if s is None or not peers:
            continue
        name, peer = max(peers, key=lambda p: p[1]["mean"])
        drop = "" if s["finalize_drop"] is None else f"{100 * s['finalize_drop']:.2f}"
        frozen = "" if f is None else f"{100 * f['mean']:.2f}"
        lines.append(f"| {b:g}% | {100 * s['mean']:.2f} | {frozen} | "
                     f"{name} {100 * peer['mean']:.2f} | {100 * (s['mean'] - peer['mean']):+.2f} | {drop} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/cifar10.npz"))
    ap.add_argument("--model", default="resnet20", choices=models.names())
    ap.add_argument("--profile", default="ethos-u55-128")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--budgets", nargs="+", type=float, default=[30, 50, 70])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--group-size", type=int, default=1,
                    help="channels per unit for our methods (Torch-Pruning prunes single channels; 0: tile_out)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--work", default=None, help="default bench_results/fair_<tier>")
    ap.add_argument("--json", default=None, help="default <work>/fair_<tier>_<model>.json")
    ap.add_argument("--report-only", action="store_true", help="summarise the finished cells; run nothing")
    args = ap.parse_args()
    work = args.work or f"bench_results/fair_{args.tier}"
    setup = Setup(args.data, args.model, args.tier, args.profile, work, args.threads, args.group_size or None)
    torch.set_num_threads(max(args.threads, 1) * max(args.workers, 1))
    data = load_data(setup)
    print(f"data: {data.name} {len(data.x_train)} train / {len(data.x_test)} test, augment={data.augment}", flush=True)
    dense = pretrained(setup, data)
    print(f"dense start: {100 * dense['accuracy']:.2f}% after {dense['epochs']} epochs", flush=True)
    tier = TIERS[args.tier]
    cells = [Cell(arm, b, s, split) for arm in args.arms for b in args.budgets for s in args.seeds
             for split in tier.splits[arm]]
    cells_dir = Path(work) / "cells" / args.model
    cells_dir.mkdir(parents=True, exist_ok=True)
    rows, todo = cached_cells(cells, cells_dir)
    if args.report_only:
        todo = []
    print(f"{len(cells)} cells, {len(rows)} done before, {len(todo)} to run on {args.workers} workers", flush=True)
    slow = {"hbgts": 0, "dpm-smart": 1, "smart": 2, "smart-frozen": 3}
    todo.sort(key=lambda c: (c.seed, slow.get(c.arm, 9)))  # seed 0 of every arm first: a partial run is comparable
    rows += run_cells(_run_safely, setup, todo, cells_dir, args.workers,
                      lambda r: f"acc {100 * r['accuracy']:.2f}%  ratio {r['exported_ratio']:.4f}  {r['train_s']:.0f}s")
    summary = summarise(rows)
    text = table(summary, args.arms, args.budgets)
    head = headline(summary, args.budgets)
    print(text)
    print()
    print(head)
    out = args.json or str(Path(work) / f"fair_{args.tier}_{args.model}.json")
    write_json(out, {"machine": machine(), "setup": asdict(setup), "tier": dataclasses.asdict(tier),
                     "dense_accuracy": dense["accuracy"], "dense_epochs": dense["epochs"],
                     "summary": [{"arm": a, "budget": b, **v} for (a, b), v in summary.items()],
                     "rows": sorted(rows, key=lambda r: r["key"]), "table": text, "headline": head})
    print(f"json: {out}")


if __name__ == "__main__":
    main()
