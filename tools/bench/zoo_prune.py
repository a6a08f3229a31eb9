"""Prune 35 public-zoo architectures end to end, ours next to Torch-Pruning, one model at a time.

    python tools/bench/zoo_prune.py [--models tv/resnet18 timm/mixnet_s ...] [--size 224]
                                    [--out bench_results/zoo_prune.json] [--resume]
                                    [--cap-s 3600] [--cpu-cap-s 900] [--mem-gb 10]

    nohup .venv/bin/python tools/bench/zoo_prune.py --resume > bench_results/zoo_prune.log 2>&1 &

Models come from torchvision (``tv/``) and timm (``timm/``) through tools/bench/zoo.py: random
weights (seed 0), eval mode, one (1, 3, 224, 224) input; ViT-style timm models that fix their size
get ``img_size=224``. Each side of each model runs in its own forked child process (a crash or a
run past ``--cap-s`` wall seconds, ``--cpu-cap-s`` CPU seconds or ``--mem-gb`` GiB of address
space costs that side of that model, not the run: uncapped, Torch-Pruning on efficientvit_m0
reached 19 GB resident and the OOM killer ended it); the JSON is
rewritten atomically after every model, and ``--resume`` skips models already in it. Timings are
CPU seconds of the child (``time.process_time``; the machine is shared), one thread
(``torch.set_num_threads(1)``; onnxruntime sessions of the export check are given one thread too).

Ours: ``npu_compress``, channel structure, profile ``ethos-u55-128``. Columns of the table:

- ``units``: channel units of ``graph.build(model.eval(), (x,), profile)``, and groups (``units/groups``).
- ``frozen share``: of all *producer output channels* (the channels a conv, transposed conv,
  linear, embedding or rule-declared producer creates, i.e. every source of the channel walk;
  depthwise convs create none, their channels are their input's; the frozen placeholder channels
  of a concat input the analysis does not track are left out), the fraction that no unit can
  remove (the producer's output node, ``graph._channel.kept_index``, holds fewer channels in units
  than it produces; frozen groups and single-unit groups both count). First figure: all
  producers; in brackets: without the producers whose every channel is a model output (the
  classifier, which is never pruned by design). The sources are read from the channel walk that
  built the final graph (``build_channel_units`` is observed during the build, nothing changes).
- ``build s (ours / TP)``: CPU s of ``graph.build`` (export + channel walk + units + the
  surgery proof) / CPU s of Torch-Pruning's pruner construction + ``step()``. Both libraries are
  warmed once in the parent before the children fork (``warm_up``: torch.export's first call in a
  process imports about 1.4 CPU s of machinery whatever the model; Torch-Pruning's import is
  outside its timing too); the one-time figures are in the JSON's ``machine.warm_up_s``.
- ``masked==pruned 30%/60%``: ``apply_masks(deepcopy(model), g, keep)`` against
  ``remove_pruned(model, g, keep)`` at two random keep-sets (about 30 % and 60 % of the units
  dropped; at least one unit per group and one of every ``graph.covers`` entry kept, the recipe
  of tests/archgen.py ``random_keep``, generator seeds 30 and 60); ``ok`` when
  max |masked - pruned| <= 1e-4 * max(1, max |masked|) over all outputs, else the relative
  error, ``ERR`` on an exception.
- ``select s``: CPU s of ``select_keep(g, scores, profile, Budget.parse("latency=50%"), target)``,
  scores = L2 norm of each unit's weight slices (selection_speed.py ``norm_scores``),
  target = 0.5 * ``predict(g, all kept, profile).latency_s``.
- ``achieved/target``: ``predict(g, keep, profile).latency_s / target`` of that selection.
- ``export verified``: ``export_onnx(apply_masks(deepcopy(model), g, keep), path, example_inputs=(x,),
  result=PruneResult(...), precision="fp32")`` into a temp dir (deleted afterwards):
  ``report.verification.passed``; ``ERR`` when export raised (message in the failure list).

Torch-Pruning (1.6.1) on a fresh copy of the same model: ``tp.pruner.MagnitudePruner(model, x,
importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[classifier])``
then ``pruner.step()``; the classifier is the last ``nn.Linear`` (the last ``nn.Conv2d`` where
there is none: SqueezeNet). Attention modules with a ``qkv`` Linear and ``num_heads`` (timm) are
passed as ``num_heads={attn.qkv: attn.num_heads}`` and, after the step, get
``head_dim = qkv.out_features // (3 * num_heads)``. Model code is not patched: timm's Attention
reshapes its output with the input width (``reshape(B, N, C)``), which Torch-Pruning's timm example
replaces by its own ``forward``; without it the pruned ViTs here do not run (recorded as such).

- ``TP runs``: the pruned model runs on ``x`` and gives the dense output's shape.
- ``TP param ratio``: parameters after / before.

Summary: ours counts models where both masked==pruned checks pass, the selection was made and
the export verified; Torch-Pruning counts models whose pruned model runs. Every error on our side
is listed at the end with the stage it came from and the innermost npu_compress frame.
Needs the benchmark-only torchvision / timm (tools/bench/zoo.py) and torch-pruning.
"""
from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata
import json
import multiprocessing
import resource
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import zoo  # noqa: E402  (installs the torchvision shim)
from _common import machine, write_json  # noqa: E402
from selection_speed import norm_scores  # noqa: E402

from npu_compress import Budget, graph, load_profile  # noqa: E402
from npu_compress.graph_cost import predict  # noqa: E402

PROFILE = "ethos-u55-128"
FRACS = (0.3, 0.6)
TOLERANCE = 1e-4
SLOW_S = 240.0  # ours past this many CPU seconds is noted

ZOO_MODELS = [
    # torchvision
    "tv/resnet18", "tv/resnet50", "tv/resnet152", "tv/wide_resnet50_2", "tv/resnext50_32x4d",
    "tv/mobilenet_v2", "tv/mobilenet_v3_small", "tv/mobilenet_v3_large", "tv/efficientnet_b0",
    "tv/shufflenet_v2_x0_5", "tv/shufflenet_v2_x1_0", "tv/regnet_x_400mf", "tv/regnet_y_400mf",
    "tv/mnasnet0_5", "tv/squeezenet1_1", "tv/convnext_tiny", "tv/densenet121", "tv/googlenet",
    "tv/vgg11_bn", "tv/alexnet",
    # timm
    "timm/mobilevit_xxs", "timm/efficientvit_m0", "timm/efficientvit_b0", "timm/ghostnet_100",
    "timm/deit_tiny_patch16_224", "timm/mixnet_s", "timm/mobileone_s0", "timm/repvgg_a0",
    "timm/cspresnet50", "timm/convnext_atto", "timm/lcnet_050", "timm/tinynet_a",
    "timm/hrnet_w18_small", "timm/rexnet_100", "timm/fbnetc_100",
]


# ------------------------------------------------------------------------------------ helpers
def _error(exc: BaseException) -> dict[str, str]:
    """Type and message (first 800 characters), and the innermost frame inside npu_compress."""
    msg = f"{type(exc).__name__}: {exc}".strip()
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "npu_compress" in f.filename]
    last = (ours or frames or [None])[-1]
    where = "" if last is None else f"{Path(last.filename).name}:{last.lineno} in {last.name}"
    return {"error": msg[:800], "where": where}


def _progress(name: str, side: str, what: str) -> None:
    """One line on stderr per finished stage, with the side's CPU seconds so far (where a slow model spends them)."""
    print(f"    {name} {side}: {what} [{time.process_time():.1f} CPU s]", file=sys.stderr, flush=True)


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _outputs(out: Any) -> list[torch.Tensor]:
    return [t.detach() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _rel_err(a: Any, b: Any) -> float:
    """max |a - b| / max(1, max |a|) over all outputs; inf when the shapes differ."""
    fa, fb = _outputs(a), _outputs(b)
    if len(fa) != len(fb) or any(x.shape != y.shape for x, y in zip(fa, fb)):
        return float("inf")
    return max(float((x - y).abs().max()) / max(1.0, float(x.abs().max())) for x, y in zip(fa, fb))


def _one_thread_ort() -> None:
    """onnxruntime sessions opened by the export's verification get one intra/inter-op thread."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    if getattr(ort, "_zoo_prune_one_thread", False):
        return
    original = ort.SessionOptions

    def one_thread() -> Any:
        so = original()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        return so

    ort.SessionOptions = one_thread
    ort._zoo_prune_one_thread = True


def random_keep(g: Any, frac_pruned: float, gen: torch.Generator) -> torch.Tensor:
    """tests/archgen.py ``random_keep``: drop about ``frac_pruned`` of the units, keep one unit per
    group and one of every cover (so every producer keeps a channel)."""
    keep = torch.rand(g.num_units, generator=gen) >= frac_pruned
    for grp in g.groups:
        if len(grp) and not keep[grp.start:grp.stop].any():
            keep[grp.start + int(torch.randint(len(grp), (1,), generator=gen))] = True
    for c in getattr(g, "producer_covers", None) or g.covers:
        if not keep[c].any():
            keep[c[int(torch.randint(len(c), (1,), generator=gen))]] = True
    return keep


# ------------------------------------------------------------------------------- frozen share
class _WalkSpy:
    """Observes ``build_channel_units`` during ``graph.build`` (the last call built the final graph)."""

    def __init__(self) -> None:
        from npu_compress.graph import pruning_graph
        self.mod, self.calls = pruning_graph, []
        self.original = pruning_graph.build_channel_units

    def __enter__(self) -> "_WalkSpy":
        def spy(walk: Any, *args: Any, **kw: Any) -> Any:
            cu = self.original(walk, *args, **kw)
            self.calls.append((walk, cu))
            return cu

        self.mod.build_channel_units = spy
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mod.build_channel_units = self.original


UNTRACKED_CAT = "channels of an input the analysis does not track"
MODEL_OUTPUT = "model output"


def frozen_share(g: Any, walk: Any) -> dict[str, Any]:
    """Producer output channels that no unit can remove (see the module docstring)."""
    st = walk.state
    src = np.asarray(st.source, dtype=np.int64)
    untracked: set[int] = set()
    output_elems: set[int] = set()
    for rec, elems in st.freezes:
        if rec.reason == UNTRACKED_CAT:
            untracked.update(np.ravel(elems).tolist())
        elif rec.reason.startswith(MODEL_OUTPUT):
            output_elems.update(np.ravel(elems).tolist())
    node_idx, _units, _const, names = g._channel.kept_index
    in_units = dict(zip(names, np.bincount(node_idx, minlength=len(names)).tolist())) if len(names) else {}
    per_node: dict[str, list[int]] = {}  # node -> producer element ids
    for s, node in enumerate(st.sources):
        elems = np.flatnonzero(src == s).tolist()
        if elems and not all(e in untracked for e in elems):
            per_node.setdefault(node, []).extend(elems)
    total = frozen = total_x = frozen_x = 0
    listed = []
    for node, elems in per_node.items():
        n = len(elems)
        fr = n - min(n, int(in_units.get(node, 0)))
        total, frozen = total + n, frozen + fr
        if not all(e in output_elems for e in elems):
            total_x, frozen_x = total_x + n, frozen_x + fr
            if fr:
                listed.append(f"{node}: {fr}/{n}")
    return {"producers": len(per_node), "producer_channels": total, "frozen_channels": frozen,
            "frozen_share": frozen / total if total else None,
            "producer_channels_excl_output": total_x, "frozen_channels_excl_output": frozen_x,
            "frozen_share_excl_output": frozen_x / total_x if total_x else None,
            "frozen_producers": listed[:40]}  # producers (not the model output) with channels no unit removes


def freeze_reasons(g: Any, top: int = 6) -> list[str]:
    """The graph's freeze records (``graph._channel.frozen``), channels summed per (op, reason)."""
    agg: dict[tuple[str, str], list] = {}
    for rec, n in g._channel.frozen:
        e = agg.setdefault((rec.op, rec.reason), [0, rec.node, 0])
        e[0] += n
        e[2] += 1
    rows = sorted(agg.items(), key=lambda kv: -kv[1][0])
    return [f"{op} ({cnt}x, e.g. at {node}): {reason} [{n} ch]" for (op, reason), (n, node, cnt) in rows[:top]]


# ---------------------------------------------------------------------------------- our side
def run_ours(name: str, size: int, emit: Callable[[dict], None]) -> dict[str, Any]:
    from npu_compress.export import export_onnx
    from npu_compress.hardware.budget import measure
    from npu_compress.pruners import PruneResult
    from npu_compress.pruners import select

    cpu0 = time.process_time()
    _one_thread_ort()
    profile = load_profile(PROFILE)
    r: dict[str, Any] = {"errors": {}}
    model, x = zoo.build(name, size)
    r["params"] = sum(p.numel() for p in model.parameters())
    try:
        with _WalkSpy() as spy:
            g, r["graph_build_s"] = _cpu(lambda: graph.build(model.eval(), (x,), profile))
    except Exception as exc:  # noqa: BLE001 - recorded
        r["errors"]["build"] = _error(exc)
        r["cpu_s"] = time.process_time() - cpu0
        return r
    r["units"], r["groups"] = g.num_units, len(g.groups)
    r["covers"] = len(g.covers)
    r["frozen_groups"] = int(g._channel.n_frozen_groups)
    r["single_unit_groups"] = int(g._channel.n_single_unit_groups)
    r["freeze_reasons"] = freeze_reasons(g)
    try:
        walk, cu = spy.calls[-1]
        if cu is not g._channel:
            raise RuntimeError("the observed channel units are not the graph's")
        r.update(frozen_share(g, walk))
    except Exception as exc:  # noqa: BLE001
        r["errors"]["frozen_share"] = _error(exc)
    del spy
    emit(r)
    _progress(name, "ours", f"graph built ({r['graph_build_s']:.2f} s, {g.num_units} units)")

    # masked == pruned at two random keep-sets
    r["masked_vs_pruned"] = {}
    for frac in FRACS:
        key = f"{int(frac * 100)}"
        m: dict[str, Any] = {}
        r["masked_vs_pruned"][key] = m
        try:
            keep = random_keep(g, frac, torch.Generator().manual_seed(int(frac * 100)))
            m["dropped_units"] = int((~keep).sum())
            t0 = time.process_time()
            masked = graph.apply_masks(copy.deepcopy(model), g, keep)
            small = graph.remove_pruned(model, g, keep)
            with torch.no_grad():
                a, b = masked.eval()(x), small.eval()(x)
            m["rel_err"] = _rel_err(a, b)
            m["pass"] = m["rel_err"] <= TOLERANCE
            m["pruned_params"] = sum(p.numel() for p in small.parameters())
            m["cpu_s"] = time.process_time() - t0
            if not m["pass"]:
                r["errors"][f"masked_vs_pruned_{key}"] = {
                    "error": f"masked and pruned outputs differ: relative error {m['rel_err']:.3g} > {TOLERANCE:g}",
                    "where": ""}
            del masked, small, a, b
        except Exception as exc:  # noqa: BLE001
            m["pass"] = False
            r["errors"][f"masked_vs_pruned_{key}"] = _error(exc)
        emit(r)
        _progress(name, "ours", f"masked vs pruned at {key} % dropped")

    # selection to latency = 50 %
    keep = None
    try:
        scores = norm_scores(g, model)
        dense = predict(g, torch.ones(g.num_units, dtype=torch.bool), profile)
        target = 0.5 * dense.latency_s
        budget = Budget.parse("latency=50%")
        keep, r["select_s"] = _cpu(lambda: select.select_keep(g, scores, profile, budget, target))
        pred = predict(g, keep, profile)
        r["dense_latency_s"], r["target_s"], r["achieved_s"] = dense.latency_s, target, pred.latency_s
        r["achieved_over_target"] = pred.latency_s / target
        r["selected_units"] = int(keep.sum())
        if measure(pred, "latency") != pred.latency_s:
            r["note_measure"] = "measure(pred, 'latency') != pred.latency_s"
    except Exception as exc:  # noqa: BLE001
        r["errors"]["select"] = _error(exc)
        keep = None
    emit(r)
    _progress(name, "ours", "selection")

    # verified export of the selection
    if keep is not None:
        try:
            masked = graph.apply_masks(copy.deepcopy(model), g, keep)
            result = PruneResult(g, keep, pred, dense, budget, target, profile)
            with tempfile.TemporaryDirectory(prefix="zoo_prune_") as tmp:
                path = Path(tmp) / "m.onnx"
                report, r["export_s"] = _cpu(lambda: export_onnx(masked, path, example_inputs=(x,),
                                                                  result=result, precision="fp32"))
                r["onnx_bytes"] = path.stat().st_size if path.exists() else None
            v = report.verification
            r["export_verified"] = bool(v is not None and v.passed)
            if v is not None:
                r["export_max_abs_error"], r["export_scale"] = float(v.max_abs_error), float(v.scale)
            r["export_latency_s"] = report.pruned.latency_s
            r["export_params"] = report.pruned.params
            if not r["export_verified"]:
                r["errors"]["export"] = {"error": f"verification did not pass: {v}", "where": ""}
        except Exception as exc:  # noqa: BLE001
            r["export_verified"] = False
            r["errors"]["export"] = _error(exc)
    r["cpu_s"] = time.process_time() - cpu0
    r["slow"] = r["cpu_s"] > SLOW_S
    _progress(name, "ours", "export")
    return r


# -------------------------------------------------------------------------- Torch-Pruning side
def _classifier(model: nn.Module) -> nn.Module:
    """The last nn.Linear; the last nn.Conv2d where there is none (SqueezeNet's conv classifier)."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return lin[-1] if lin else [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]


def run_tp(name: str, size: int, emit: Callable[[dict], None]) -> dict[str, Any]:
    import torch_pruning as tp

    cpu0 = time.process_time()
    r: dict[str, Any] = {}
    model, x = zoo.build(name, size)
    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        dense_shapes = [t.shape for t in _outputs(model(x))]
    head = _classifier(model)
    r["ignored"] = type(head).__name__
    attn = [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int)]
    num_heads = {m.qkv: m.num_heads for m in attn}
    r["num_heads_modules"] = len(num_heads)
    try:
        def prune() -> None:
            pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                               pruning_ratio=0.5, ignored_layers=[head], num_heads=num_heads)
            pruner.step()

        _, r["build_step_s"] = _cpu(prune)
    except Exception as exc:  # noqa: BLE001
        r["error"] = _error(exc)
        r["runs"] = False
        r["cpu_s"] = time.process_time() - cpu0
        return r
    for m in attn:
        if hasattr(m, "head_dim"):
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    r["param_ratio"] = sum(p.numel() for p in model.parameters()) / before
    emit(r)
    _progress(name, "tp", f"pruned ({r['build_step_s']:.2f} s)")
    try:
        with torch.no_grad():
            shapes = [t.shape for t in _outputs(model.eval()(x))]
        r["runs"] = shapes == dense_shapes
        if not r["runs"]:
            r["error"] = {"error": f"output shapes {shapes} != dense {dense_shapes}", "where": ""}
    except Exception as exc:  # noqa: BLE001
        r["runs"] = False
        r["error"] = _error(exc)
    r["cpu_s"] = time.process_time() - cpu0
    return r


# ------------------------------------------------------------------------------- isolation
def _isolated(fn: Callable[..., dict], args: tuple, cap_s: float, cpu_cap_s: float, mem_gb: float) -> dict[str, Any]:
    """``fn(*args, emit)`` in a forked child; ``emit`` sends partial results, so a crash (or a run
    past ``cap_s`` wall seconds) keeps what was measured before it and records why it stopped. The
    child's address space is capped at ``mem_gb`` GiB (an allocation past it raises, instead of the
    machine's OOM killer) and its CPU time at ``cpu_cap_s`` (SIGXCPU, then SIGKILL)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        if mem_gb > 0:
            limit = int(mem_gb * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if cpu_cap_s > 0:
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_cap_s), int(cpu_cap_s) + 10))
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")

        def emit(partial: dict) -> None:
            send.send(("partial", json.loads(json.dumps(partial, default=str))))

        try:
            out = fn(*args, emit)
            send.send(("done", json.loads(json.dumps(out, default=str))))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            send.send(("crash", _error(exc)))

    proc = ctx.Process(target=child, daemon=True)
    gc.freeze()  # the parent's objects to the permanent generation: the child's GC does not touch (copy) their pages
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.start()
    send.close()
    last: dict[str, Any] = {}
    deadline = time.monotonic() + cap_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not recv.poll(left):
                last.setdefault("errors", {})["process"] = {"error": f"ran past the {cap_s:g} s cap", "where": ""}
                break
            try:
                kind, value = recv.recv()
            except EOFError:
                proc.join(5)
                code = proc.exitcode
                why = {-24: f"CPU time past the {cpu_cap_s:g} s cap (SIGXCPU)", -9: "killed (SIGKILL: CPU cap or "
                       "the OOM killer)", -11: "segmentation fault"}.get(code, "a crash")
                last.setdefault("errors", {})["process"] = {
                    "error": f"the child process died (exit code {code}): {why}", "where": ""}
                break
            if kind == "partial":
                last = value
            elif kind == "done":
                last = value
                break
            else:
                last.setdefault("errors", {})["process"] = value
                break
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the child is reaped: its whole CPU time, killed or not
    last["child_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return last


def bench(name: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    if args.no_isolate:
        def call(fn: Callable) -> dict:
            return fn(name, size, lambda _: None)
    else:
        def call(fn: Callable) -> dict:
            return _isolated(fn, (name, size), args.cap_s, args.cpu_cap_s, args.mem_gb)
    t0 = time.process_time()
    ours = call(run_ours)
    tp = call(run_tp)
    if "error" not in tp and "process" in tp.get("errors", {}):
        tp["error"] = tp["errors"]["process"]
        tp.setdefault("runs", False)
    return {"model": name, "params": ours.get("params"), "ours": ours, "tp": tp,
            "parent_cpu_s": time.process_time() - t0}


# ----------------------------------------------------------------------------------- table
COLUMNS = ["model", "units", "frozen share", "build s (ours / TP)", "masked==pruned 30%/60%", "select s",
           "achieved/target", "export verified", "TP runs", "TP param ratio"]


def _f(v: Any, fmt: str, missing: str = "ERR") -> str:
    return missing if v is None else format(v, fmt)


def _mvp(m: dict | None) -> str:
    if not m:
        return "-"
    if m.get("rel_err") is None:
        return "ERR"
    return "ok" if m.get("pass") else f"{m['rel_err']:.1e}"


def ours_ok(o: dict) -> bool:
    mvp = o.get("masked_vs_pruned") or {}
    return (all(mvp.get(f"{int(f * 100)}", {}).get("pass") for f in FRACS) and o.get("achieved_over_target") is not None
            and bool(o.get("export_verified")))


def cells(row: dict) -> list[str]:
    o, t = row["ours"], row["tp"]
    built = o.get("units") is not None
    fs = "ERR" if o.get("frozen_share") is None else \
        f"{o['frozen_share']:.1%} ({_f(o.get('frozen_share_excl_output'), '.1%', '-')})"
    mvp = o.get("masked_vs_pruned") or {}
    return [row["model"],
            f"{o['units']}/{o['groups']}" if built else "ERR",
            fs if built else "ERR",
            f"{_f(o.get('graph_build_s'), '.2f')} / {_f(t.get('build_step_s'), '.2f')}",
            " / ".join(_mvp(mvp.get(f"{int(f * 100)}")) for f in FRACS) if built else "ERR",
            _f(o.get("select_s"), ".3f", "ERR" if built else "-"),
            _f(o.get("achieved_over_target"), ".4f", "ERR" if built else "-"),
            ("yes" if o.get("export_verified") else ("ERR" if "export" in o.get("errors", {}) else "-")),
            "yes" if t.get("runs") else "no",
            _f(t.get("param_ratio"), ".3f", "-")]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def _side_cpu(side: dict) -> float:
    """CPU s of one side's child (getrusage of the reaped child; in-process figure without isolation)."""
    return float(side.get("child_cpu_s") or side.get("cpu_s") or 0.0)


def summary(rows: list[dict]) -> list[str]:
    n = len(rows)
    ours = sum(ours_ok(r["ours"]) for r in rows)
    built = sum(r["ours"].get("units") is not None for r in rows)
    mvp = sum(all((r["ours"].get("masked_vs_pruned") or {}).get(f"{int(f * 100)}", {}).get("pass") for f in FRACS)
              for r in rows)
    sel = sum(r["ours"].get("achieved_over_target") is not None for r in rows)
    within = sum((r["ours"].get("achieved_over_target") or 2.0) <= 1.0 + 1e-9 for r in rows)
    ver = sum(bool(r["ours"].get("export_verified")) for r in rows)
    tp_step = sum(r["tp"].get("build_step_s") is not None for r in rows)
    tp_runs = sum(bool(r["tp"].get("runs")) for r in rows)
    cpu_ours = sum(_side_cpu(r["ours"]) for r in rows)
    cpu_tp = sum(_side_cpu(r["tp"]) for r in rows)
    slow = [r["model"] for r in rows if r["ours"].get("slow")]
    ratios = sorted(build_ratios(rows))
    med = ratios[len(ratios) // 2] if ratios else float("nan")
    return [f"models: {n}",
            f"ours: graph built {built}/{n}; masked==pruned at both keep-sets {mvp}/{n}; selection made {sel}/{n} "
            f"(achieved <= target {within}/{n}); export verified {ver}/{n}; prune+run+export verified {ours}/{n}",
            f"Torch-Pruning: step done {tp_step}/{n}; pruned model runs {tp_runs}/{n}",
            f"CPU s (whole child process per side, model construction included): ours {cpu_ours:.1f}, "
            f"Torch-Pruning {cpu_tp:.1f}, "
            f"total {cpu_ours + cpu_tp:.1f}",
            f"graph build ÷ Torch-Pruning construction + step: median {med:.2f}, max "
            f"{max(ratios, default=float('nan')):.2f}, <= 5x on {sum(v <= 5.0 for v in ratios)}/{len(ratios)}",
            f"ours over {SLOW_S:g} CPU s: {', '.join(slow) or 'none'}"]


def failures(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for stage, e in (r["ours"].get("errors") or {}).items():
            out.append(f"{r['model']} [ours/{stage}] {e.get('error')}" + (f"  ({e['where']})" if e.get("where") else ""))
    return out


def frozen_notes(rows: list[dict], above: float = 0.05) -> list[str]:
    """Models where more than ``above`` of the producer channels (model output left out) stay, and why."""
    out = []
    for r in rows:
        o = r["ours"]
        share = o.get("frozen_share_excl_output")
        if share is None or share <= above:
            continue
        reasons = [x for x in o.get("freeze_reasons") or [] if not x.startswith("output ")]
        out.append(f"{r['model']}: {share:.1%} ({o.get('frozen_channels_excl_output')}/"
                   f"{o.get('producer_channels_excl_output')} ch); frozen groups {o.get('frozen_groups')}, "
                   f"single-unit groups {o.get('single_unit_groups')}; " + ("; ".join(reasons) or "no freeze record")
                   + f"; e.g. {', '.join((o.get('frozen_producers') or [])[:4])}")
    return out


def tp_failures(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        e = r["tp"].get("error")
        if e:
            out.append(f"{r['model']} [tp] {e.get('error')}" + (f"  ({e['where']})" if e.get("where") else ""))
    return out


def _versions() -> dict[str, Any]:
    out = {}
    for dist in ("torch-pruning", "torchvision", "timm", "onnx", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def warm_up() -> dict[str, float]:
    """Load both libraries' lazily imported machinery once, in the parent, before any child forks.

    The first ``torch.export`` in a process imports torch._dynamo, sympy and friends: about 1.4 CPU s
    on this machine, paid once per process, whatever the model (a 1-conv model's first export takes
    it all; its second takes 0.01 s). Torch-Pruning's import is likewise outside its timing. Both
    sides therefore start warm: one export and one Torch-Pruning dependency graph of a 1-conv model
    here, their CPU seconds recorded in the JSON (``warm_up_s``) so the one-time cost stays visible."""
    import torch_pruning as tp

    m, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval(), torch.randn(1, 3, 8, 8)
    out = {}
    t0 = time.process_time()
    graph.build(m, (x,), load_profile(PROFILE))
    out["ours_first_graph_build"] = time.process_time() - t0
    t0 = time.process_time()
    tp.DependencyGraph().build_dependency(m, x)
    out["tp_first_dependency_graph"] = time.process_time() - t0
    return out


def build_ratios(rows: list[dict]) -> list[float]:
    """Our graph build ÷ Torch-Pruning's construction + step, per model where both were timed."""
    return [r["ours"]["graph_build_s"] / r["tp"]["build_step_s"] for r in rows
            if r["ours"].get("graph_build_s") and r["tp"].get("build_step_s")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ZOO_MODELS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default="bench_results/zoo_prune.json")
    ap.add_argument("--resume", action="store_true", help="skip models already in --out")
    ap.add_argument("--cap-s", type=float, default=3600.0, help="wall seconds per model side before it is killed")
    ap.add_argument("--cpu-cap-s", type=float, default=900.0, help="CPU seconds per model side (0: none)")
    ap.add_argument("--mem-gb", type=float, default=10.0, help="address-space cap per model side, GiB (0: none)")
    ap.add_argument("--no-isolate", action="store_true", help="run in this process (no forked children)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    rows: list[dict] = []
    if args.resume and Path(args.out).exists():
        rows = [r for r in json.loads(Path(args.out).read_text()).get("rows", []) if r["model"] in args.models]
    done = {r["model"] for r in rows}
    info = {**machine(), **_versions(), "warm_up_s": warm_up()}

    def save() -> None:
        order = {m: i for i, m in enumerate(args.models)}
        rows.sort(key=lambda r: order.get(r["model"], len(order)))
        write_json(args.out, {"benchmark": "zoo_prune", "machine": info, "profile": PROFILE, "size": args.size,
                              "fracs": list(FRACS), "tolerance": TOLERANCE, "budget": "latency=50%",
                              "rows": rows})

    print(f"zoo prune: {len(args.models)} models, {len(done)} already in {args.out}; profile {PROFILE}; "
          f"input (1, 3, {args.size}, {args.size}); torch-pruning {info['torch-pruning']}", flush=True)
    print("| " + " | ".join(COLUMNS) + " |", flush=True)
    for name in args.models:
        if name in done:
            continue
        row = bench(name, args.size, args)
        rows.append(row)
        save()
        extra = f"  [ours {_side_cpu(row['ours']):.0f} CPU s, TP {_side_cpu(row['tp']):.0f} CPU s]"
        print("| " + " | ".join(cells(row)) + " |" + extra, flush=True)
    save()
    print()
    print(markdown(rows))
    print()
    for line in summary(rows):
        print(line)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    print(f"this invocation: CPU s of children {usage[0].ru_utime + usage[0].ru_stime:.1f}, "
          f"of the parent {usage[1].ru_utime + usage[1].ru_stime:.1f}")
    fails = failures(rows)
    print(f"\nfailures on our side ({len(fails)}):")
    for line in fails:
        print(f"  - {line}")
    notes = frozen_notes(rows)
    print(f"\nnon-removable producer channels above 5 % (model output left out) ({len(notes)}):")
    for line in notes:
        print(f"  - {line}")
    tfails = tp_failures(rows)
    print(f"\nTorch-Pruning failures ({len(tfails)}):")
    for line in tfails:
        print(f"  - {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
