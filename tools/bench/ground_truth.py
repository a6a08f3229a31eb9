"""Our cost model judged by a ground truth: Arm's Vela (the Ethos-U compiler's cycles) or onnxruntime's CPU clock.

    python tools/bench/ground_truth.py --judge vela [--profile ethos-u55-128] [--baseline old.toml]
    python tools/bench/ground_truth.py --judge ort [--profile ort-cpu] [--baseline old-ort-cpu.toml]
    python tools/bench/ground_truth.py --judge both [--vela-profile ..] [--ort-profile ..] [--ort-baseline ..]
        [--models digits-cnn resnet20 ... tv/resnet18 timm/mobilevit_xxs ... | --zoo-only]
        [--budgets 70 50] [--vela-size 96] [--ort-size 224] [--json PATH] [--resume]

Models: the project zoo (at its own input sizes) and third-party architectures from torchvision
(``tv/``) and timm (``timm/``, see ``zoo.py``), random weights with batch-norm statistics settled on
random inputs (:func:`settle_norms`): a judge's latency depends on shapes, not values (except Vela's
lossless weight compression, which random weights bias towards incompressible, and Vela's lowering of
a residual add, which needs Rescale operators when its inputs' int8 scales differ by 10^4 or more, as
they do in a deep network whose norms keep their initial statistics). Third-party models run at
``--ort-size`` (224) for onnxruntime and ``--vela-size`` (96) for Vela, whose compile of a 224x224 network takes too long here; a Vela compile longer than
``--vela-cap-s`` is abandoned and the export recorded as skipped.

For each judge and each profile variant — the profile judged and a baseline (a given TOML, or the
profile without ``[efficiency]``; ``--baseline none``: no baseline) — the dense model and
magnitude-pruned copies at ``latency=B%`` (pruned under that variant's own cost model, no training: costs only) are measured:

- ``vela``: compiled for the profile's accelerator through ExecuTorch's Arm backend and Vela
  (``vela_estimate``), Vela's total cycles at the judged profile's clock;
- ``ort``: exported by our ONNX path (``_to_onnx``, opset 17), onnxruntime CPUExecutionProvider with
  one intra-op thread, ``net_run_seconds`` (thread CPU time, interleaved with a one-op reference run
  whose time is subtracted); all exports of one model timed in ``--ort-rounds`` interleaved rounds,
  median per export.

Reported per export: predicted ÷ measured; per pruned export the budget judged by the judge
(measured pruned ÷ (B% × measured dense)) and ``predict_vs_estimate``, the relative difference
between the pruner's ``predict`` and ``estimate`` of the physically pruned model (dense: ``predict``
with every unit kept vs ``estimate``). Summaries per judge, variant and group (project zoo /
third-party): MAPE, Spearman, ranges. A model or export that fails to build, prune, export or
compile is recorded as skipped with its reason. Results of each (judge, model) are cached beside
``--json`` as they complete; ``--resume`` reuses those computed with the same profiles and sizes, and
(Vela) the figures of every export compiled before whose tensors are identical (``.vela-exports.json``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import zoo  # noqa: E402
from _common import machine, write_json  # noqa: E402

from npu_compress import models  # noqa: E402
from npu_compress.graph import remove_pruned  # noqa: E402
from npu_compress.hardware.calibrate import mape, net_run_seconds, spearman  # noqa: E402
from npu_compress.hardware.cost import estimate  # noqa: E402
from npu_compress.training import recalibrate_norms  # noqa: E402
from npu_compress.hardware.profile import Efficiency, HardwareProfile, load_profile  # noqa: E402
from npu_compress.pruners import get_pruner  # noqa: E402

PROJECT_ZOO = ["digits-cnn", "resnet20", "resnet56", "mobilenetv2", "vgg11"]
GOALS = {"vela": "every model 0.85–1.15 of Vela, MAPE ≤ 10%, Spearman ≥ 0.97, Vela ÷ budget in [0.93, 1.00]",
         "ort": "MAPE ≤ 12% on architectures not in the fit (third-party), Spearman ≥ 0.97"}


# ---------------------------------------------------------------- judges

class CompileFailure(Exception):
    """A Vela compile that failed, crashed (Vela's C++ core can segfault) or ran past the cap."""


def _vela_figures(model: nn.Module, x: torch.Tensor, profile: HardwareProfile) -> dict[str, Any]:
    from npu_compress.export.ethos_u import vela_estimate

    report = vela_estimate(model, x, profile.toolchain)
    if not report.fully_delegated:  # Vela's cycles would cover the NPU partitions only, ours the whole model
        host = list(report.host_operators) + report.cpu_operators
        raise CompileFailure(f"not fully on the NPU: {len(host)} compute op(s) run on the host CPU "
                             f"({', '.join(sorted({h.split(' ')[0] for h in host})[:6])}), "
                             f"{report.partitions} Vela partition(s)")
    return {"measured_s": report.latency_s(profile.compute.clock_hz), "vela_cycles": report.total_cycles,
            "partitions": report.partitions}


def _isolated(fn: Callable[..., Any], args: tuple, cap_s: float) -> Any:
    """``fn(*args)`` in a forked child: a crash or a run past ``cap_s`` seconds costs that call, not the run."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            send.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001 - reported to the parent as text (exceptions may not pickle)
            send.send(("error", _reason(e)))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()  # the child's end only: a child that dies unannounced then reads as EOF
    try:
        if not recv.poll(cap_s):
            raise CompileFailure(f"Vela compile ran past the {cap_s:g} s cap")
        kind, value = recv.recv()
    except EOFError:
        proc.join(5)
        raise CompileFailure(f"the compile process died (exit code {proc.exitcode}: a crash inside Vela/ExecuTorch)") \
            from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
    if kind == "error":
        raise CompileFailure(value)
    return value


@dataclasses.dataclass(frozen=True)
class VelaJudge:
    """Vela's cycles for the judged profile's accelerator, as seconds at that profile's clock.

    ``prepare`` compiles (the work); ``measure`` only hands the figures back."""

    profile: HardwareProfile
    cap_s: float
    name: str = "vela"
    # Vela's figures per exact export (``export_key``), kept across runs: a profile change re-prunes
    # every model, but an export whose tensors come out identical is not compiled again
    memo_path: Path | None = None

    @property
    def tag(self) -> str:
        return self.name

    def prepare(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        key = export_key(model, x, self.profile)
        memo = json.loads(self.memo_path.read_text()) if self.memo_path and self.memo_path.exists() else {}
        if key in memo:
            return {**memo[key], "judge_s": 0.0}
        t0 = time.perf_counter()
        figures = _isolated(_vela_figures, (model, x, self.profile), self.cap_s)
        if self.memo_path:
            memo[key] = figures
            write_json(str(self.memo_path), memo)
        return {**figures, "judge_s": time.perf_counter() - t0}

    def measure(self, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return prepared


def export_key(model: nn.Module, x: torch.Tensor, profile: HardwareProfile) -> str:
    """The model exactly (its module types, every tensor's name, shape and bytes), its input shape and
    the Vela target: equal keys, equal Vela figures."""
    h = hashlib.sha256(json.dumps([list(x.shape), dataclasses.asdict(profile.toolchain),
                                   [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]]).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


def _session(proto: Any) -> Any:
    """One-thread CPU session, built as ``calibrate`` builds its own."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


@dataclasses.dataclass(frozen=True)
class OrtJudge:
    """onnxruntime CPU, one thread, our ONNX export; net run time by thread CPU clock.

    ``prepare`` exports and opens a session; ``measure`` times all of one model's exports (dense and
    pruned) in ``rounds`` interleaved rounds, median per export: on a shared machine, load that
    drifts over seconds then hits dense and pruned alike, and one unlucky round does not decide."""

    budget_s: float
    rounds: int
    name: str = "ort"

    @property
    def tag(self) -> str:
        return f"{self.name}(rounds={self.rounds},budget={self.budget_s:g})"

    def prepare(self, model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        from npu_compress.export.onnx_export import _to_onnx

        t0 = time.perf_counter()
        session = _session(_to_onnx(model.eval(), x, 17))
        feeds = {session.get_inputs()[0].name: x.numpy()}
        return {"session": session, "feeds": feeds, "judge_s": time.perf_counter() - t0}

    def measure(self, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        times: list[list[float]] = [[] for _ in prepared]
        spent = [p["judge_s"] for p in prepared]
        for _ in range(self.rounds):
            for i, p in enumerate(prepared):
                t0 = time.perf_counter()
                times[i].append(net_run_seconds(p["session"], p["feeds"], threads=1, budget_s=self.budget_s))
                spent[i] += time.perf_counter() - t0
        return [{"measured_s": float(np.median(t)), "measured_rounds_s": t, "judge_s": s}
                for t, s in zip(times, spent)]


# ---------------------------------------------------------------- one model

def make(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """(dense model in eval mode, example input): third-party at ``size``, project zoo at its own size;
    random weights, batch-norm statistics settled (:func:`settle_norms`)."""
    if zoo.is_third_party(name):
        model, x = zoo.build(name, size)
    else:
        torch.manual_seed(0)
        model, x = models.create(name).eval(), models.example_input(name)
    return settle_norms(model, x), x


def settle_norms(model: nn.Module, x: torch.Tensor, batches: int = 4, batch_size: int = 8) -> nn.Module:
    """Re-estimate every batch norm's running statistics on random inputs shaped like ``x``, as training
    leaves them: each norm then normalises its input, and the int8 scales the quantizer derives are a
    trained model's kind. At initialisation (mean 0, variance 1) activations grow or shrink through a
    deep random network until a residual add's two inputs differ in scale by 10^4-10^5, and Vela then
    runs the add as an Add plus Rescale operators (measured: a random-weight MobileNetV2 runs 24 of
    them; with its statistics settled, none). Costs are shapes; this keeps Vela's lowering shaped like
    a deployed model's."""
    gen = torch.Generator().manual_seed(1)
    loader = [(torch.randn((batch_size, *x.shape[1:]), generator=gen), None) for _ in range(batches)]
    recalibrate_norms(model, loader, batches, norms_only=True)
    return model.eval()


def magnitude_pruned(dense: nn.Module, x: torch.Tensor, profile: HardwareProfile, budget: float
                     ) -> tuple[Any, Any, nn.Module]:
    """A copy of ``dense`` magnitude-pruned to ``latency=budget%`` under ``profile`` (costs only, no
    training): (the pruner, its result, the physically pruned model in eval mode)."""
    model = copy.deepcopy(dense)
    pruner = get_pruner("magnitude")(model, (x,), profile, f"latency={budget:g}%")
    result = pruner.finalize()
    return pruner, result, remove_pruned(model, result.graph, result.keep).eval()


def made_at_budget(name: str, size: int, profile: HardwareProfile, budget: float | None
                   ) -> tuple[nn.Module, torch.Tensor]:
    """``make(name, size)``, magnitude-pruned to ``latency=budget%`` of ``profile`` first when given:
    the model a breakdown tool (vela_ops.py, ort_ops.py) looks into."""
    model, x = make(name, size)
    return (model if budget is None else magnitude_pruned(model, x, profile, budget)[2]), x


def layers_by_op(model: nn.Module, x: torch.Tensor, profile: HardwareProfile, unit: float
                 ) -> tuple[float, dict[str, dict[str, float]]]:
    """Our ``estimate`` of ``model``: its latency and its layers summed by ``"kind op"`` (count,
    latency), both in seconds × ``unit`` (the profile's clock for cycles, 1e6 for microseconds)."""
    cost = estimate(model, (x,), profile)
    ours: dict[str, dict[str, float]] = {}
    for layer in cost.layers:
        row = ours.setdefault(f"{layer.kind} {layer.op}", {"layers": 0, "value": 0.0})
        row["layers"] += 1
        row["value"] += layer.latency_s * unit
    return cost.latency_s * unit, ours


def breakdown_args(doc: str, size: int, profile: str) -> argparse.ArgumentParser:
    """The command line the breakdown tools share: model, --size, --budget, --profile, --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("model", help="project zoo name, tv/<torchvision model> or timm/<timm model>")
    ap.add_argument("--size", type=int, default=size, help="third-party input side")
    ap.add_argument("--budget", type=float, help="magnitude-prune to latency=B%% first")
    ap.add_argument("--profile", default=profile)
    ap.add_argument("--json", help="write the breakdown here")
    return ap


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def _brief(e: BaseException, keep: int = 160) -> str:
    """``Type: message`` on one line, a long message cut in the middle (its head says where, its tail what)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: " + (text if len(text) <= 2 * keep else f"{text[:keep]} … {text[-keep:]}")


def _reason(e: BaseException) -> str:
    """One line: the error, and its root cause where it wraps one."""
    root = e
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    return _brief(e) + ("" if root is e else f" (from {_brief(root)})")


def _skip(name: str, what: str, e: BaseException) -> dict[str, str]:
    reason = _reason(e)
    print(f"  skipped {name} {what}: {reason}", flush=True)
    return {"model": name, "what": what, "reason": reason}


def _pruned(name: str, label: str, prof: HardwareProfile, b: float, dense: nn.Module, x: torch.Tensor,
            dense_row: dict[str, Any]) -> tuple[dict[str, Any], nn.Module]:
    """(row without the judge's figures, the physically pruned model) at ``latency=b%`` under ``prof``."""
    pruner, result, small = magnitude_pruned(dense, x, prof, b)
    dense_row.setdefault("predict_vs_estimate", _rel(pruner.dense.latency_s, dense_row["predicted_s"]))
    est = estimate(small, x, prof).latency_s
    return ({"model": name, "variant": label, "budget": b, "predicted_s": result.predicted.latency_s,
             "predict_vs_estimate": _rel(result.predicted.latency_s, est), "budget_by_ours": result.achieved_ratio},
            small)


def _judged(name: str, judge: Any, profiles: dict[str, HardwareProfile], budgets: list[float], dense: nn.Module,
            x: torch.Tensor, skips: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Rows of one model with the judge's figures: dense (one per variant) and each pruned export."""
    prepared = judge.prepare(dense, x)
    dense_rows = {label: {"model": name, "variant": label, "budget": 100.0,
                          "predicted_s": estimate(dense, x, prof).latency_s} for label, prof in profiles.items()}
    pending = []
    for label, prof in profiles.items():
        for b in budgets:
            try:
                row, small = _pruned(name, label, prof, b, dense, x, dense_rows[label])
                pending.append((row, judge.prepare(small, x)))
            except Exception as e:  # noqa: BLE001 - any failure of a third-party model is a skip, not a crash
                skips.append(_skip(name, f"{label} {b:g}%", e))
    figures = judge.measure([prepared] + [p for _, p in pending])
    for row in dense_rows.values():
        row.update(figures[0])
    for (row, _), fig in zip(pending, figures[1:]):
        row.update(fig, budget_by_judge=fig["measured_s"] / (row["budget"] / 100 * figures[0]["measured_s"]))
    return [*dense_rows.values(), *(row for row, _ in pending)]


def run_model(name: str, judge: Any, profiles: dict[str, HardwareProfile], budgets: list[float],
              size: int) -> dict[str, Any]:
    """Rows (dense + pruned per variant and budget) and skips of one model under one judge."""
    t0 = time.perf_counter()
    skips: list[dict[str, str]] = []
    try:
        dense, x = make(name, size)
        rows = _judged(name, judge, profiles, budgets, dense, x, skips)
    except Exception as e:  # noqa: BLE001
        return {"rows": [], "skips": skips + [_skip(name, "dense", e)], "wall_s": time.perf_counter() - t0}
    for r in rows:
        r["ratio"] = r["predicted_s"] / r["measured_s"]
        r["group"] = "third-party" if zoo.is_third_party(name) else "project zoo"
        r["input"] = list(x.shape)
    wall = time.perf_counter() - t0
    print(f"{judge.name} {name} {tuple(x.shape)}: {len(rows)} exports, {len(skips)} skipped in {wall:.0f} s", flush=True)
    return {"rows": rows, "skips": skips, "wall_s": wall}


# ---------------------------------------------------------------- summary

def _stats(sel: list[dict[str, Any]]) -> dict[str, Any]:
    pred = np.array([r["predicted_s"] for r in sel])
    meas = np.array([r["measured_s"] for r in sel])
    judged = [r["budget_by_judge"] for r in sel if "budget_by_judge" in r]
    pve = [r["predict_vs_estimate"] for r in sel if "predict_vs_estimate" in r]
    return {"exports": len(sel), "mape_pct": mape(pred, meas),
            "spearman": spearman(pred, meas) if len(sel) > 1 else float("nan"),
            "ratio_min": float((pred / meas).min()), "ratio_max": float((pred / meas).max()),
            "within_15pct": int(np.sum(np.abs(pred / meas - 1) <= 0.15)),
            "budget_by_judge_min": min(judged, default=float("nan")),
            "budget_by_judge_max": max(judged, default=float("nan")),
            "max_predict_vs_estimate": max(pve, default=float("nan"))}


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (variant, group), groups: project zoo, third-party, all."""
    out = []
    for label in dict.fromkeys(r["variant"] for r in rows):
        for group in ("project zoo", "third-party", "all"):
            sel = [r for r in rows if r["variant"] == label and group in ("all", r["group"])]
            if sel:
                out.append({"variant": label, "group": group, **_stats(sel)})
    return out


def table(judge: str, rows: list[dict[str, Any]], summ: list[dict[str, Any]], skips: list[dict[str, str]]) -> str:
    J = {"vela": "Vela", "ort": "ORT"}[judge]
    lines = [f"| model | input | variant | budget | ours (ms) | {J} (ms) | ours / {J} | {J} ÷ budget | pred vs est | {J} s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        judged = f"{r['budget_by_judge']:.3f}" if "budget_by_judge" in r else "-"
        budget = "dense" if r["budget"] == 100.0 else f"{r['budget']:g}%"
        pve = f"{r['predict_vs_estimate']:.1e}" if "predict_vs_estimate" in r else "-"
        lines.append(f"| {r['model']} | {r['input'][-1]} | {r['variant']} | {budget} | {r['predicted_s'] * 1e3:.4f} | "
                     f"{r['measured_s'] * 1e3:.4f} | {r['ratio']:.3f} | {judged} | {pve} | {r['judge_s']:.0f} |")
    lines += ["", f"| variant | models | exports | MAPE vs {J} | Spearman | ours / {J} range | within ±15% | "
              f"{J} ÷ budget range | max pred vs est |", "|---|---|---:|---:|---:|---|---:|---|---:|"]
    for s in summ:
        lines.append(f"| {s['variant']} | {s['group']} | {s['exports']} | {s['mape_pct']:.1f}% | {s['spearman']:.3f} | "
                     f"{s['ratio_min']:.2f}–{s['ratio_max']:.2f} | {s['within_15pct']}/{s['exports']} | "
                     f"{s['budget_by_judge_min']:.3f}–{s['budget_by_judge_max']:.3f} | "
                     f"{s['max_predict_vs_estimate']:.1e} |")
    lines += ["", f"Goals ({J}): {GOALS[judge]}; predict == estimate within 1e-6."]
    if skips:
        lines += ["", "Skipped:"] + [f"- {s['model']} ({s['what']}): {s['reason']}" for s in skips]
    return "\n".join(lines)


# ---------------------------------------------------------------- cache and driver

def variants(profile: str, baseline: str | None) -> dict[str, HardwareProfile]:
    """The baseline (a given TOML, or the profile without [efficiency]; ``none``: no baseline) and the
    profile as judged."""
    judged = load_profile(profile)
    if baseline == "none":  # half the compiles: the profile alone, compared with a table run before
        return {"profile": judged}
    base = load_profile(baseline) if baseline else dataclasses.replace(judged, efficiency=Efficiency())
    return {"baseline": base, "profile": judged}


def cache_key(judge: Any, name: str, profiles: dict[str, HardwareProfile], budgets: list[float], size: int) -> str:
    """Results are reusable when judge, model, input size, budgets and the profiles' contents agree."""
    blob = json.dumps({k: p.to_dict() for k, p in profiles.items()}, sort_keys=True, default=str)
    size = size if zoo.is_third_party(name) else 0
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return f"{judge.tag}|{name}|{size}|{','.join(f'{b:g}' for b in budgets)}|{digest}"


def run_judge(judge: Any, profiles: dict[str, HardwareProfile], names: list[str], budgets: list[float],
              size: int, cache: dict[str, Any], cache_path: Path) -> dict[str, Any]:
    rows, skips, walls = [], [], {}
    for name in names:
        key = cache_key(judge, name, profiles, budgets, size)
        if key not in cache:
            cache[key] = run_model(name, judge, profiles, budgets, size)
            write_json(str(cache_path), cache)
        else:
            print(f"{judge.name} {name}: from cache", flush=True)
        rows += cache[key]["rows"]
        skips += cache[key]["skips"]
        walls[name] = cache[key]["wall_s"]
    summ = summary(rows)
    return {"rows": rows, "skips": skips, "wall_s": walls, "summary": summ, "size": size,
            "profiles": {k: p.name for k, p in profiles.items()}, "table": table(judge.name, rows, summ, skips)}


def _judges(args: argparse.Namespace) -> list[tuple[Any, dict[str, HardwareProfile], int]]:
    out = []
    if args.judge in ("vela", "both"):
        profiles = variants(args.vela_profile, args.vela_baseline)
        memo = Path(args.json).with_suffix(".vela-exports.json") if args.resume else None
        out.append((VelaJudge(profiles["profile"], args.vela_cap_s, memo_path=memo), profiles, args.vela_size))
    if args.judge in ("ort", "both"):
        profiles = variants(args.ort_profile, args.ort_baseline)
        out.append((OrtJudge(args.ort_budget_s, args.ort_rounds), profiles, args.ort_size))
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", choices=["vela", "ort", "both"], default="vela")
    ap.add_argument("--profile", help="the profile judged, for a single --judge (name or TOML)")
    ap.add_argument("--baseline", help="a profile TOML judged beside it, for a single --judge "
                                       "(default: --profile without [efficiency]; 'none': the profile alone)")
    ap.add_argument("--vela-profile", default="ethos-u55-128")
    ap.add_argument("--vela-baseline")
    ap.add_argument("--ort-profile", default="ort-cpu")
    ap.add_argument("--ort-baseline")
    ap.add_argument("--models", nargs="+", default=PROJECT_ZOO + [t.name for t in zoo.THIRD_PARTY],
                    help="project zoo names and/or tv/<torchvision model>, timm/<timm model>")
    ap.add_argument("--zoo-only", action="store_true", help="only the project zoo models among --models")
    ap.add_argument("--budgets", nargs="+", type=float, default=[70, 50])
    ap.add_argument("--vela-size", type=int, default=96, help="third-party input side for Vela")
    ap.add_argument("--ort-size", type=int, default=224, help="third-party input side for onnxruntime")
    ap.add_argument("--vela-cap-s", type=float, default=600, help="abandon a Vela compile after this many seconds")
    ap.add_argument("--ort-budget-s", type=float, default=1.0, help="timing budget per onnxruntime measurement")
    ap.add_argument("--ort-rounds", type=int, default=3,
                    help="interleaved timing rounds over one model's exports (median per export)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (export, tracing, Vela's quantizer)")
    ap.add_argument("--json", help="default: bench_results/ground_truth.<judge>.json")
    ap.add_argument("--resume", action="store_true", help="reuse per-model results cached beside --json")
    ap.add_argument("--combine", nargs="+", metavar="CACHE",
                    help="no runs: one table of every model in these caches (runs split across processes; "
                         "a later cache's entry of a model replaces an earlier one's)")
    args = ap.parse_args()
    if args.judge == "both" and (args.profile or args.baseline):
        ap.error("with --judge both give --vela-profile/--vela-baseline and --ort-profile/--ort-baseline")
    if args.judge != "both":
        if args.profile:
            setattr(args, f"{args.judge}_profile", args.profile)
        if args.baseline:
            setattr(args, f"{args.judge}_baseline", args.baseline)
    args.json = args.json or f"bench_results/ground_truth.{args.judge}.json"
    return args


def combine(paths: list[str], judge: str, out: str) -> None:
    """One table from the per-model entries of several caches (each entry: one model, one judge)."""
    by_model: dict[str, dict[str, Any]] = {}
    for path in paths:
        for key, entry in json.loads(Path(path).read_text()).items():
            tag, name = key.split("|")[:2]
            if tag.split("(")[0] == judge:
                by_model[name] = entry
    rows = [r for e in by_model.values() for r in e["rows"]]
    skips = [s for e in by_model.values() for s in e["skips"]]
    summ = summary(rows)
    text = table(judge, rows, summ, skips)
    print(text)
    write_json(out, {"machine": machine(), "combined_from": paths, "judges": {judge: {
        "rows": rows, "skips": skips, "summary": summ, "table": text}}})


def main() -> None:
    args = parse_args()
    if args.combine:
        combine(args.combine, "vela" if args.judge == "both" else args.judge, args.json)
        return
    torch.set_num_threads(args.threads)
    names = [n for n in args.models if not (args.zoo_only and zoo.is_third_party(n))]
    cache_path = Path(args.json).with_suffix(".cache.json")
    cache = json.loads(cache_path.read_text()) if args.resume and cache_path.exists() else {}
    t0 = time.perf_counter()
    results = {}
    for judge, profiles, size in _judges(args):
        results[judge.name] = run_judge(judge, profiles, names, args.budgets, size, cache, cache_path)
        print(results[judge.name]["table"], flush=True)
    write_json(args.json, {"machine": machine(), "args": vars(args), "wall_s": time.perf_counter() - t0,
                           "judges": results})


if __name__ == "__main__":
    main()
