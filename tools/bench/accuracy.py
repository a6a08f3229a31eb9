"""Accuracy at a latency budget: every method vs Torch-Pruning, on CIFAR-10, same epochs and seed.

    python tools/bench/accuracy.py [--data ../shared/data/cifar10.npz] [--model resnet20]
        [--train 10000] [--test 2500] [--pretrain-epochs 15] [--epochs 1,1]
        [--profiles ethos-u55-128 ort-cpu] [--budgets 70 50 30] [--methods ...] [--tp magnitude taylor]
        [--workers 2] [--work bench_results/accuracy] [--json bench_results/accuracy.json]
        [--plot docs/accuracy_vs_latency.png]

Protocol (one run of this script):
1. **Dense pretraining**, once: ``--pretrain-epochs`` epochs of SGD on the first ``--train`` images
   (cached in ``--work``; delete it to retrain).
2. **Every cell** (profile × latency budget) × (every registered method, Torch-Pruning with each
   ``--tp`` importance), plus one dense row, starts from that same checkpoint, seed and data order,
   and trains the same number of epochs: ``--epochs M,F`` = M mask epochs (pruning happens there)
   then F fine-tune epochs with the hard mask. Torch-Pruning prunes once, up front (its usual
   one-shot use) and fine-tunes M+F epochs; "late" control rows prune it after M dense epochs and
   fine-tune F, our schedule. Its configuration (``round_to`` none / the profile's output tile,
   uniform / global, pruning ratio on a 0.02 grid) is searched for the largest predicted latency at
   or under the same budget (``tp_matched``). Its own MAC-matched workflow is priced too
   (``tp_by_macs``, no training), for the exactness table.
   A budget below a model's floor on a profile is reported as infeasible (with the floor), not run.
3. Every result is exported with ``export_onnx`` (checked and verified against torch), and the
   exports are **timed in onnxruntime after all training**, one at a time, 1 thread, batch 1,
   round-robin over all models (medians), so training load does not distort the clock.

Each cell's result is a JSON file under ``--work/runs_eM-F/``: a re-run skips finished cells (resume).
Writes the table (markdown) to stdout, everything to ``--json``, and the plot to ``--plot``.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
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
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from _common import cached_cells, machine, run_cells, write_json  # noqa: E402

from npu_compress import BudgetError, models  # noqa: E402
from npu_compress.data import Dataset, load_npz  # noqa: E402
from npu_compress.export import export_onnx  # noqa: E402
from npu_compress.hardware.budget import Budget  # noqa: E402
from npu_compress.hardware.cost import estimate  # noqa: E402
from npu_compress.hardware.profile import load_profile  # noqa: E402
from npu_compress.io import write_atomic  # noqa: E402
from npu_compress.pruners import PRUNERS, Pruner, get_pruner  # noqa: E402
from npu_compress.pruners import plan as plan_problem  # noqa: E402
from npu_compress.pruning import CALIBRATION_SAMPLES, run_config  # noqa: E402
from npu_compress.training import Epochs, TrainConfig, train  # noqa: E402

SLOW_FIRST = ("hbgts", "hbgs", "dpm", "smart", "pdp")  # scheduled first so the pool ends evenly


@dataclass(frozen=True)
class Job:
    kind: str  # "dense" | "ours" | "tp" (pruned up front) | "tp-late" (pruned after the mask epochs, as ours)
    method: str  # registered method name, TP importance, or "dense"
    profile: str
    budget: float  # percent of dense latency (100 for the dense row)

    @property
    def key(self) -> str:
        prefix = {"tp": "tp-", "tp-late": "tplate-"}.get(self.kind, "")
        return f"{self.profile}__{int(self.budget)}__{prefix}{self.method}"

    @property
    def label(self) -> str:
        if self.kind == "tp-late":
            return f"torch-pruning {self.method}, late"
        return f"torch-pruning {self.method}" if self.kind == "tp" else self.method


@dataclass(frozen=True)
class Setup:
    data: str
    model: str
    train: int
    test: int
    pretrain_epochs: int
    epochs: tuple[int, int]
    lr: float
    batch: int
    seed: int
    work: str


def load_data(setup: Setup) -> Dataset:
    return load_npz(setup.data, max_train=setup.train, max_test=setup.test).normalized()


# ---------------------------------------------------------------- dense pretraining

def pretrained(setup: Setup, data: Dataset) -> dict[str, Any]:
    path = Path(setup.work) / f"dense_{setup.model}_{setup.train}_{setup.pretrain_epochs}ep.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors and numbers only
    model = models.create(setup.model, num_classes=data.num_classes)
    cfg = TrainConfig(Epochs(0, 0, setup.pretrain_epochs), lr=0.1, batch_size=setup.batch, seed=setup.seed,
                      progress=False)
    t0 = time.perf_counter()
    run = train(model, data, cfg)
    payload = {"state_dict": model.state_dict(), "accuracy": run.accuracy, "seconds": time.perf_counter() - t0,
               "history": run.history}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return payload


def _pretrained_model(setup: Setup, data: Dataset) -> nn.Module:
    model = models.create(setup.model, num_classes=data.num_classes)
    model.load_state_dict(pretrained(setup, data)["state_dict"])
    return model


# ---------------------------------------------------------------- Torch-Pruning at a matched budget

def tp_prune(model: nn.Module, ex: torch.Tensor, importance: str, ratio: float, round_to: int | None,
             global_pruning: bool, grads: list[torch.Tensor | None] | None) -> nn.Module:
    """Torch-Pruning's MetaPruner, one shot; the final classifier is left alone. ``grads``: Taylor's."""
    import torch_pruning as tp

    imp = tp.importance.GroupMagnitudeImportance(p=2) if importance == "magnitude" else \
        tp.importance.GroupTaylorImportance()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(model, ex, importance=imp, pruning_ratio=ratio, ignored_layers=head,
                                  round_to=round_to, global_pruning=global_pruning, max_pruning_ratio=0.95)
    if grads is not None:
        for param, g in zip(model.parameters(), grads):
            param.grad = None if g is None else g.clone()
    pruner.step()
    model.zero_grad()
    return model


def tp_matched(base: nn.Module, ex: torch.Tensor, importance: str, profile, target: float,
               calib: tuple[torch.Tensor, torch.Tensor], step: float = 0.02) -> tuple[nn.Module, dict[str, Any]]:
    """Torch-Pruning at the budget: over ``round_to`` in {none, the profile's output tile}, uniform or
    global ratio, and a grid of pruning ratios, the candidate with the largest predicted latency at
    or under ``target`` (seconds). The search is generous to Torch-Pruning: it sees our cost model."""
    grads = _taylor_grads(base, calib) if importance == "taylor" else None
    best: tuple[nn.Module, dict[str, Any]] | None = None
    evals = 0
    ratios = [round(step * i, 4) for i in range(1, int(0.95 / step) + 1)]
    for round_to in (None, profile.tiling.tile_out):
        for global_pruning in (False, True):
            for ratio in ratios:
                try:
                    cand = tp_prune(copy.deepcopy(base), ex, importance, ratio, round_to, global_pruning, grads)
                    lat = estimate(cand, (ex,), profile).latency_s
                except Exception:  # a configuration Torch-Pruning cannot build (e.g. a layer emptied)
                    continue
                finally:
                    evals += 1
                if lat <= target and (best is None or lat > best[1]["predicted_s"]):
                    best = (cand, {"tp_ratio": ratio, "tp_round_to": round_to, "tp_global": global_pruning,
                                   "predicted_s": lat})
    if best is None:
        raise BudgetError(f"Torch-Pruning ({importance}) reached no latency at or under {target:.3g} s "
                          f"(ratios up to {ratios[-1]}, round_to none/{profile.tiling.tile_out}, uniform/global)")
    best[1]["tp_search_evals"] = evals
    return best


def tp_by_macs(base: nn.Module, ex: torch.Tensor, importance: str, profile, fraction: float,
               calib: tuple[torch.Tensor, torch.Tensor], iters: int = 16) -> dict[str, float]:
    """Torch-Pruning's own workflow: bisect its default (uniform, no ``round_to``) ratio until its
    own MAC counter says ``fraction`` of dense; then price the result on ``profile``."""
    import torch_pruning as tp

    grads = _taylor_grads(base, calib) if importance == "taylor" else None
    dense_macs, _ = tp.utils.count_ops_and_params(base, ex)
    dense_lat = estimate(base, (ex,), profile).latency_s
    lo, hi, best = 0.0, 0.95, None
    for _ in range(iters):
        ratio = (lo + hi) / 2
        cand = tp_prune(copy.deepcopy(base), ex, importance, ratio, None, False, grads)
        macs, _ = tp.utils.count_ops_and_params(cand, ex)
        if macs <= fraction * dense_macs:
            hi, best = ratio, (ratio, macs, cand)
        else:
            lo = ratio
    if best is None:
        raise BudgetError(f"Torch-Pruning ({importance}) reached no MACs at or under {fraction:.0%} of dense "
                          f"up to ratio {hi:.2f}")
    ratio, macs, cand = best
    lat = estimate(cand, (ex,), profile).latency_s
    return {"tp_ratio": ratio, "macs_ratio": macs / (fraction * dense_macs),
            "achieved_ratio": lat / (fraction * dense_lat)}


def _taylor_grads(model: nn.Module, calib: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor | None]:
    """One calibration batch from the training split (as HBGS gets), for Taylor importance."""
    model.zero_grad()
    F.cross_entropy(model(calib[0]), calib[1]).backward()
    grads = [None if q.grad is None else q.grad.detach().clone() for q in model.parameters()]
    model.zero_grad()
    return grads


# ---------------------------------------------------------------- one cell

def run_job(setup: Setup, job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    torch.manual_seed(setup.seed)
    data = load_data(setup)
    ex = torch.zeros(1, *data.input_shape)
    model = _pretrained_model(setup, data)
    prof = load_profile(job.profile)
    m_ep, f_ep = setup.epochs
    cfg = dict(lr=setup.lr, batch_size=setup.batch, seed=setup.seed, progress=False)
    out: dict[str, Any] = {**asdict(job), "key": job.key, "label": job.label}
    dense_lat = estimate(model, (ex,), prof).latency_s
    t0 = time.perf_counter()
    if job.kind == "dense":
        run = train(model, data, TrainConfig(Epochs(0, 0, m_ep + f_ep), **cfg))
        out.update(predicted_s=dense_lat, target_s=dense_lat, achieved_ratio=1.0)
    elif job.kind in ("tp", "tp-late"):
        target = dense_lat * job.budget / 100
        late = m_ep if job.kind == "tp-late" else 0  # "late": dense for the M mask epochs, then prune
        if late:
            train(model, data, TrainConfig(Epochs(0, 0, late), **cfg))
        calib = (data.x_train[:CALIBRATION_SAMPLES], data.y_train[:CALIBRATION_SAMPLES])
        model, found = tp_matched(model, ex, job.method, prof, target, calib)
        out.update(found, target_s=target, achieved_ratio=found["predicted_s"] / target,
                   search_s=time.perf_counter() - t0)
        run = train(model, data, TrainConfig(Epochs(0, 0, m_ep + f_ep - late), **cfg))
    else:
        cls = get_pruner(job.method)
        budget = Budget.parse(f"latency={job.budget:g}%")
        batches = len(data.loaders(setup.batch, seed=setup.seed)[0])
        config = run_config(cls.Config(), max(m_ep * batches, 1), data)
        run = train(model, data, TrainConfig(Epochs(0, m_ep, f_ep), **cfg),
                    make_pruner=lambda m: cls(plan_problem(m, (ex,), prof, budget, "channel"), config))
        res = run.prune_result
        out.update(predicted_s=res.predicted.latency_s, target_s=res.target, achieved_ratio=res.achieved_ratio,
                   units_kept=int(res.keep.sum()), units=len(res.keep))
    out["train_s"] = time.perf_counter() - t0
    out["accuracy"] = run.accuracy
    out["dense_latency_s"] = dense_lat
    onnx_path = Path(setup.work) / f"onnx_e{m_ep}-{f_ep}" / f"{job.key}.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    report = export_onnx(model, onnx_path, (ex,), profile=prof, samples=data.x_test[:16], precision="fp32",
                         result=run.prune_result)
    out.update(export_s=time.perf_counter() - t1, onnx=str(onnx_path), macs=report.pruned.macs,
               exported_latency_s=report.pruned.latency_s,  # re-estimated from the exported model itself
               verify_max_abs_error=report.verification.max_abs_error)
    return out


def _run_safely(setup: Setup, job: Job) -> dict[str, Any]:
    try:
        return run_job(setup, job)
    except Exception as e:  # a failing cell is a row with its error, not a lost run
        return {**asdict(job), "key": job.key, "label": job.label, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


# ---------------------------------------------------------------- the plan

def floors(setup: Setup, profiles: list[str]) -> dict[str, float]:
    """Each profile's unprunable latency floor as a fraction of dense (the smallest feasible budget)."""
    ex = models.example_input(setup.model)
    out = {}
    for name in profiles:
        pruner = Pruner(models.create(setup.model), (ex,), name, "latency=100%", "channel")
        out[name] = pruner.minimum / pruner.dense.latency_s
    return out


def plan(profiles: list[str], budgets: list[float], methods: list[str], tp_imps: list[str],
         floor: dict[str, float], tp_late: bool) -> tuple[list[Job], list[dict[str, Any]]]:
    jobs = [Job("dense", "dense", profiles[-1], 100.0)]
    infeasible = []
    for prof in profiles:
        for b in budgets:
            if b / 100 < floor[prof]:
                infeasible.append({"profile": prof, "budget": b, "floor": floor[prof]})
                continue
            jobs += [Job("ours", m, prof, b) for m in methods]
            jobs += [Job("tp", imp, prof, b) for imp in tp_imps]
            jobs += [Job("tp-late", imp, prof, b) for imp in tp_imps if tp_late]
    order = {m: i for i, m in enumerate(SLOW_FIRST)}
    jobs.sort(key=lambda j: order.get(j.method, len(order)))
    return jobs, infeasible


# ---------------------------------------------------------------- onnxruntime latency, after training

def time_exports(rows: list[dict[str, Any]], rounds: int, repeats: int, ex_shape: tuple[int, ...]) -> None:
    import numpy as np
    from export_latency import _session  # one onnxruntime thread, CPU provider, quiet

    x = np.random.default_rng(0).standard_normal((1, *ex_shape[1:])).astype(np.float32)
    sessions = {r["key"]: _session(Path(r["onnx"])) for r in rows if r.get("onnx")}
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for k, s in sessions.items():  # warm-up
        for _ in range(5):
            s.run(None, {s.get_inputs()[0].name: x})
    for _ in range(rounds):  # round-robin: drift hits every model alike
        for k, s in sessions.items():
            feeds = {s.get_inputs()[0].name: x}
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times.append(time.perf_counter() - t0)
            samples[k].append(statistics.median(times))
    for r in rows:
        if r["key"] in samples:
            r["ort_latency_s"] = statistics.median(samples[r["key"]])


# ---------------------------------------------------------------- report

def table(rows: list[dict[str, Any]], infeasible: list[dict[str, Any]], dense_ort: float | None) -> str:
    lines = ["| profile | budget | method | achieved / budget | accuracy (%) | ort latency (ms) | vs dense |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["kind"] != "dense", r["profile"], -r["budget"],
                                         r["kind"], r["method"])):
        if "error" in r:
            lines.append(f"| {r['profile']} | {r['budget']:g}% | {r['label']} | error: {r['error'][:60]} | | | |")
            continue
        ort_ms = r.get("ort_latency_s", float("nan")) * 1e3
        speed = f"{dense_ort / r['ort_latency_s']:.2f}x" if dense_ort and r.get("ort_latency_s") else ""
        budget = "dense" if r["kind"] == "dense" else f"{r['budget']:g}%"
        prof = "-" if r["kind"] == "dense" else r["profile"]
        lines.append(f"| {prof} | {budget} | {r['label']} | {r['achieved_ratio']:.4f} | "
                     f"{100 * r['accuracy']:.2f} | {ort_ms:.3f} | {speed} |")
    for i in infeasible:
        lines.append(f"| {i['profile']} | {i['budget']:g}% | all | infeasible: floor is {100 * i['floor']:.1f}% "
                     "of dense | | | |")
    return "\n".join(lines)


def headline(rows: list[dict[str, Any]]) -> str:
    """Per cell: SMART, our best method, and each Torch-Pruning variant: accuracy (achieved / budget)."""
    ok = [r for r in rows if "error" not in r]
    ours = [r for r in ok if r["kind"] == "ours"]
    peers = sorted({r["label"] for r in ok if r["kind"].startswith("tp")}, key=lambda s: (s.endswith("late"), s))
    cells = sorted({(r["profile"], r["budget"]) for r in ours}, key=lambda c: (c[0], -c[1]))

    def fmt(r: dict[str, Any] | None) -> str:
        return "" if r is None else f"{100 * r['accuracy']:.2f} ({r['achieved_ratio']:.3f})"
    lines = ["| profile | budget | smart | best of ours | " + " | ".join(peers) + " |",
             "|---|---|---|---|" + "---|" * len(peers)]
    for p, b in cells:
        here = [r for r in ok if r["profile"] == p and r["budget"] == b]
        best = max((r for r in here if r["kind"] == "ours"), key=lambda r: r["accuracy"])
        smart = next((r for r in here if r["method"] == "smart" and r["kind"] == "ours"), None)
        tp = [fmt(next((r for r in here if r["label"] == lab), None)) for lab in peers]
        lines.append(f"| {p} | {b:g}% | {fmt(smart)} | {best['method']} {fmt(best)} | " + " | ".join(tp) + " |")
    return "\n".join(lines)


def clock_check(rows: list[dict[str, Any]], profile: str = "ort-cpu") -> dict[str, Any] | None:
    """For the measured profile: its predicted latency against the onnxruntime clock, per export."""
    import numpy as np

    from npu_compress.hardware.calibrate import mape, spearman

    pts = [(r["predicted_s"], r["ort_latency_s"]) for r in rows
           if r["profile"] == profile and "ort_latency_s" in r and "error" not in r]
    if len(pts) < 3:
        return None
    pred, meas = np.array(pts).T
    return {"profile": profile, "n": len(pts), "mape_pct": mape(pred, meas), "spearman": spearman(pred, meas)}


def _worst(values: list[float]) -> float:
    return max(values, key=lambda v: abs(v - 1.0))


def exactness(rows: list[dict[str, Any]], by_macs: list[dict[str, Any]]) -> str:
    """achieved / budget per method and cell (predicted latency of the exported model / the budget)."""
    ok = [r for r in rows if r["kind"] != "dense"]
    cells = sorted({(r["profile"], r["budget"]) for r in ok}, key=lambda c: (c[0], -c[1]))
    labels = sorted({r["label"] for r in ok}, key=lambda s: (s.startswith("torch"), s))
    head = " | ".join(f"{p} {b:g}%" for p, b in cells)
    lines = [f"| method | {head} | farthest from 1 | mean |", "|---|" + "---|" * (len(cells) + 2)]
    for lab in labels:
        vals = []
        for p, b in cells:
            r = next((r for r in ok if r["label"] == lab and r["profile"] == p and r["budget"] == b), None)
            vals.append(None if r is None or "error" in r else r["achieved_ratio"])
        got = [v for v in vals if v is not None]
        cols = " | ".join("failed" if v is None else f"{v:.4f}" for v in vals)
        summary = f"{_worst(got):.4f} | {statistics.mean(got):.4f}" if got else " | "
        lines.append(f"| {lab} | {cols} | {summary} |")
    for imp in sorted({m["importance"] for m in by_macs}):
        vals = [next((m["achieved_ratio"] for m in by_macs if m["importance"] == imp and
                      (m["profile"], m["budget"]) == c), None) for c in cells]
        got = [v for v in vals if v is not None]
        cols = " | ".join("" if v is None else f"{v:.4f}" for v in vals)
        lines.append(f"| torch-pruning {imp}, its own workflow (MACs matched) | {cols} | "
                     f"{_worst(got):.4f} | {statistics.mean(got):.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], profiles: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    dense = next((r for r in ok if r["kind"] == "dense"), None)
    labels = sorted({r["label"] for r in ok if r["kind"] != "dense"}, key=lambda s: (s.startswith("torch"), s))
    markers = "os^vD<>pP*Xhd"
    fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 4.8), squeeze=False)
    for ax, prof in zip(axes[0], profiles):
        measured = prof.startswith("ort-")  # a real clock exists for this target; for an NPU, its cost model

        def x_of(r: dict[str, Any]) -> float | None:
            if measured:
                return r["ort_latency_s"] * 1e3 if "ort_latency_s" in r else None
            return 100 * r["predicted_s"] / r["dense_latency_s"] if r["profile"] == prof else 100.0
        for i, lab in enumerate(labels):
            pts = sorted((x_of(r), 100 * r["accuracy"]) for r in ok
                         if r["label"] == lab and r["profile"] == prof and x_of(r) is not None)
            if not pts:
                continue
            style = (":" if lab.endswith("late") else "--") if lab.startswith("torch") else "-"
            ax.plot(*zip(*pts), style, marker=markers[i % len(markers)], label=lab, alpha=0.85)
        if dense is not None and x_of(dense) is not None:
            ax.plot(x_of(dense), 100 * dense["accuracy"], "k*", markersize=14, label="dense")
        ax.set_title(f"pruned for {prof}")
        ax.set_xlabel("measured onnxruntime latency, this CPU, batch 1 (ms)" if measured else
                      f"predicted latency on {prof} (% of dense)")
        ax.set_ylabel("CIFAR-10 test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared/data/cifar10.npz"))
    ap.add_argument("--model", default="resnet20", choices=models.names())
    ap.add_argument("--train", type=int, default=10000, help="first N training images")
    ap.add_argument("--test", type=int, default=2500, help="first N test images")
    ap.add_argument("--pretrain-epochs", type=int, default=15)
    ap.add_argument("--epochs", default="1,1", help="M,F: mask epochs, then fine-tune epochs (every cell)")
    ap.add_argument("--lr", type=float, default=0.01, help="peak LR of every cell's training (cosine)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profiles", nargs="+", default=["ethos-u55-128", "ort-cpu"])
    ap.add_argument("--budgets", nargs="+", type=float, default=[70, 50, 30])
    ap.add_argument("--methods", nargs="+", default=sorted(PRUNERS), choices=sorted(PRUNERS))
    ap.add_argument("--tp", nargs="*", default=["magnitude", "taylor"], choices=["magnitude", "taylor"])
    ap.add_argument("--no-tp-late", dest="tp_late", action="store_false",
                    help="skip the control rows: Torch-Pruning pruned after the M mask epochs (our schedule)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15, help="onnxruntime timing: round-robin rounds")
    ap.add_argument("--repeats", type=int, default=30, help="onnxruntime timing: runs per model per round")
    ap.add_argument("--work", default="bench_results/accuracy")
    ap.add_argument("--json", default="bench_results/accuracy.json")
    ap.add_argument("--plot", default="docs/accuracy_vs_latency.png")
    args = ap.parse_args()
    epochs = Epochs.parse(f"0,{args.epochs}")
    m_ep, f_ep = epochs.mask, epochs.finetune
    setup = Setup(args.data, args.model, args.train, args.test, args.pretrain_epochs, (m_ep, f_ep), args.lr,
                  args.batch, args.seed, args.work)
    if args.tp and importlib.util.find_spec("torch_pruning") is None:  # fail now, not after the training
        sys.exit("accuracy.py: --tp needs Torch-Pruning: pip install torch-pruning (or pass --tp with no value)")
    data = load_data(setup)
    print(f"data: {data.name} {len(data.x_train)} train / {len(data.x_test)} test", flush=True)
    dense = pretrained(setup, data)
    print(f"dense pretraining: {100 * dense['accuracy']:.2f}% after {setup.pretrain_epochs} epochs "
          f"({dense['seconds']:.0f} s)", flush=True)
    floor = floors(setup, args.profiles)
    jobs, infeasible = plan(args.profiles, args.budgets, args.methods, args.tp, floor, args.tp_late)
    runs = Path(args.work) / f"runs_e{m_ep}-{f_ep}"  # cells of one schedule; the dense checkpoint is shared
    runs.mkdir(parents=True, exist_ok=True)
    rows, todo = cached_cells(jobs, runs)
    print(f"{len(jobs)} cells, {len(rows)} done before, {len(todo)} to run on {args.workers} workers; "
          f"infeasible: {infeasible}", flush=True)
    rows += run_cells(_run_safely, setup, todo, runs, args.workers,
                      lambda r: f"acc {100 * r['accuracy']:.2f}%  achieved/budget {r['achieved_ratio']:.4f}  "
                                f"train {r['train_s']:.0f}s")
    torch.set_num_threads(1)
    time_exports(rows, args.rounds, args.repeats, (1, *data.input_shape))
    dense_row = next((r for r in rows if r["kind"] == "dense" and "error" not in r), None)
    dense_ort = dense_row.get("ort_latency_s") if dense_row else None
    text = table(rows, infeasible, dense_ort)
    by_macs = [] if not args.tp else [
        {"profile": p, "budget": b, "importance": imp,
         **tp_by_macs(_pretrained_model(setup, data), torch.zeros(1, *data.input_shape), imp, load_profile(p),
                      b / 100, (data.x_train[:CALIBRATION_SAMPLES], data.y_train[:CALIBRATION_SAMPLES]))}
        for p, b in sorted({(r["profile"], r["budget"]) for r in rows if r["kind"] != "dense"}) for imp in args.tp]
    exact = exactness(rows, by_macs)
    head = headline(rows)
    clock = clock_check(rows)
    print(text)
    print()
    print(exact)
    print()
    print(head)
    if clock:
        print(f"\n{clock['profile']}: predicted vs measured latency of {clock['n']} exports "
              f"(pruned for it, and dense): MAPE {clock['mape_pct']:.1f}%, Spearman {clock['spearman']:.3f}")
    write_json(args.json, {"machine": machine(), "setup": asdict(setup), "pretrain_accuracy": dense["accuracy"],
                           "pretrain_seconds": dense["seconds"], "floors": floor, "infeasible": infeasible,
                           "rows": sorted(rows, key=lambda r: r["key"]), "table": text,
                           "tp_macs_matched": by_macs, "exactness": exact,
                           "headline": head, "clock_check": clock})
    if args.plot:
        plot(rows, args.profiles, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
