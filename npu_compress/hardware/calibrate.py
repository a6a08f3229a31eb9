"""Measure the ``ort-cpu`` profile: fit the cost model to onnxruntime CPU micro-benchmarks (docs/PROFILES.md).

Two stages. First the peak rates: single-layer ONNX graphs built directly with ``onnx.helper``
(no torch export), timed with onnxruntime's CPUExecutionProvider (median of repeats after warm-up;
one thread: the calling thread's CPU time, so a busy machine does not inflate timings), and the
cost model's parameters fitted to minimise the relative error of its predictions:

- ``macs_per_cycle``, ``vector_ops_per_cycle``, ``layer_cycles``: least squares on relative
  residuals, and on log error (Gauss-Newton from there); the one with lower MAPE is kept, ``t = macs_pad/(macs_per_cycle*clock) + layer_cycles/clock`` for MAC layers
  and ``t = elems/(vector_ops_per_cycle*clock) + layer_cycles/clock`` for elementwise ones.
  Only the products with ``clock_hz`` matter; the clock is a nominal 100 MHz (an assumption)
  so that the integer per-cycle numbers keep two or three significant digits.
- ``tile_out`` / ``tile_in``: the pair from {1, 2, 4, 8, 16, 32} whose padded-MAC staircase gives the lowest MAPE.
- ``dram_bandwidth_bytes_per_s``: bytes moved / time of an elementwise Add larger than the last-level cache.
- ``sram_bytes``: the last-level cache size read from sysfs (assumption: activations that fit stay cached).

Then per op class (:mod:`.ort_probes`): which activations onnxruntime fuses into a conv (read from
its optimised graphs: ``[fusion]``) and, from torch probe models of one layer each exported through
our own ONNX path, ``[efficiency]`` per class (dense / depthwise / grouped conv, matmul,
elementwise, pool, norm, move) fitted by :mod:`.efficiency_fit`.

Every timing is of the op alone: runs of its graph interleave with runs of a one-op reference
graph and the reference's median is subtracted (:func:`net_run_seconds`), so the per-``session.run``
Python/binding overhead paid under the same machine load goes, and ``layer_cycles`` is the cost of
one op inside a graph, not of one call. (The overhead itself, from chains of N tiny Relus, is
reported.)

Example::

    >>> profile, report = calibrate_ort_cpu(threads=1, quick=True)
    >>> print(report.table())
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..choices import Choice
from .cost import layer_cost
from .efficiency_fit import ClassFit, efficiency_of, fit_classes, fits_table, mape
from .layers import LayerSpec
from .ort_probes import OrtSample
from .ops import OpKind
from .profile import (OP_CLASSES, SCHEMA_VERSION, Compute, DType, HardwareProfile, Memory, Overhead, Sparsity, Tiling,
                      _toml_value)

NOMINAL_CLOCK_HZ = 1.0e8  # assumption: only macs_per_cycle*clock_hz etc. matter
TILES = (1, 2, 4, 8, 16, 32)
DEFAULT_LLC_BYTES = 8 << 20  # assumption when sysfs has no cache sizes
Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------- shapes

class ProbeKind(Choice):
    """The single-layer benchmarks calibration times."""

    CONV = "conv"
    DWCONV = "dwconv"
    GEMM = "gemm"
    ADD = "add"
    RELU = "relu"

    @property
    def is_conv(self) -> bool:
        return self in (ProbeKind.CONV, ProbeKind.DWCONV)


@dataclass(frozen=True)
class Shape:
    """One single-layer benchmark. ``kind``: conv | dwconv | gemm | add | relu (:class:`ProbeKind`).

    conv: ``a=c_in, b=c_out, k=kernel side, hw=spatial side``; dwconv: ``a=b=channels``;
    gemm: ``a=K, b=N, hw=M`` rows; add/relu: ``a`` elements.
    """

    kind: ProbeKind
    a: int
    b: int = 0
    k: int = 1
    hw: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ProbeKind.parse(self.kind, "probe kind"))

    @property
    def label(self) -> str:
        if self.kind.is_conv:
            return f"{self.kind}{self.k}x{self.k} {self.a}->{self.b} @{self.hw}x{self.hw}"
        if self.kind is ProbeKind.GEMM:
            return f"gemm M{self.hw} K{self.a} N{self.b}"
        return f"{self.kind} {self.a}"

    def spec(self) -> LayerSpec:
        """The cost model's view of this layer (same fields the tracer would fill)."""
        if self.kind.is_conv:
            sp, dw = self.hw * self.hw, self.kind is ProbeKind.DWCONV
            return LayerSpec(self.label, "convolution", OpKind.CONV, (1, self.a, self.hw, self.hw),
                             (1, self.b, self.hw, self.hw), c_in=self.a, c_out=self.b, kernel=self.k * self.k,
                             spatial=sp, groups=self.a if dw else 1, depthwise=dw, weight_param="w",
                             has_bias=True, in_elems=self.a * sp, out_elems=self.b * sp)
        if self.kind is ProbeKind.GEMM:
            return LayerSpec(self.label, "linear", OpKind.LINEAR, (self.hw, self.a), (self.hw, self.b),
                             c_in=self.a, c_out=self.b, spatial=self.hw, weight_param="w", has_bias=True,
                             in_elems=self.hw * self.a, out_elems=self.hw * self.b)
        n_in = 2 if self.kind is ProbeKind.ADD else 1
        return LayerSpec(self.label, self.kind.value, OpKind.ELEMENTWISE, (self.a,), (self.a,),
                         in_elems=n_in * self.a, out_elems=self.a)

    def graph(self) -> tuple[Any, dict[str, np.ndarray]]:
        """(ONNX model, feeds) of this one layer, fp32, batch 1."""
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        f32 = TensorProto.FLOAT

        def init(name: str, shape: tuple[int, ...]) -> Any:
            return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

        inits: list[Any] = []
        if self.kind.is_conv:
            groups = self.a if self.kind is ProbeKind.DWCONV else 1
            xs, ys = (1, self.a, self.hw, self.hw), (1, self.b, self.hw, self.hw)
            inits = [init("w", (self.b, self.a // groups, self.k, self.k)), init("bias", (self.b,))]
            nodes = [helper.make_node("Conv", ["x", "w", "bias"], ["y"], kernel_shape=[self.k, self.k],
                                      pads=[self.k // 2] * 4, group=groups)]
            ins = [("x", xs)]
        elif self.kind is ProbeKind.GEMM:
            xs, ys = (self.hw, self.a), (self.hw, self.b)
            inits = [init("w", (self.b, self.a)), init("bias", (self.b,))]
            nodes = [helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)]
            ins = [("x", xs)]
        elif self.kind is ProbeKind.ADD:
            xs = ys = (self.a,)
            nodes, ins = [helper.make_node("Add", ["x", "x2"], ["y"])], [("x", xs), ("x2", xs)]
        else:
            xs = ys = (self.a,)
            nodes, ins = [helper.make_node("Relu", ["x"], ["y"])], [("x", xs)]
        graph = helper.make_graph(nodes, self.label, [helper.make_tensor_value_info(n, f32, s) for n, s in ins],
                                  [helper.make_tensor_value_info("y", f32, ys)], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in ins}
        return model, feeds


def _relu_chain(n: int, elems: int = 16) -> tuple[Any, dict[str, np.ndarray]]:
    """n Relus in a row on a tiny tensor: timing over n separates per-run from per-op overhead."""
    from onnx import TensorProto, helper

    names = ["x"] + [f"r{i}" for i in range(n - 1)] + ["y"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]]) for i in range(n)]
    vi = [helper.make_tensor_value_info(x, TensorProto.FLOAT, (elems,)) for x in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "chain", vi[:1], vi[1:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": np.ones(elems, np.float32)}


def fit_grid(quick: bool = False) -> list[Shape]:
    """The fitting grid. Non-multiple channel counts (12, 17, 24, 40, 48) expose tiling steps."""
    chans = [8, 12, 16, 17, 24, 32, 40, 48] if quick else [8, 12, 16, 17, 24, 32, 40, 48, 64]
    shapes = [Shape(ProbeKind.CONV, ci, co, 3, 8 if quick else 16) for ci in chans for co in chans if quick is False or
              ci in (8, 17, 32, 48) or co in (8, 17, 32, 48)]
    if quick:
        shapes = shapes[::3]
    big = [(64, 128), (128, 128), (128, 256), (256, 256), (96, 96)] if not quick else [(64, 128)]
    shapes += [Shape(ProbeKind.CONV, ci, co, 3, 8) for ci, co in big]
    shapes += [Shape(ProbeKind.CONV, ci, co, 3, 32) for ci, co in ([(16, 16), (16, 32), (32, 32), (24, 40)]
                                                            if not quick else [(16, 16)])]
    one = [8, 17, 32, 48, 64, 128, 256] if not quick else [8, 17, 48, 128]
    shapes += [Shape(ProbeKind.CONV, ci, co, 1, 16) for ci in one for co in one if quick is False or ci == co or ci == 8]
    shapes += [Shape(ProbeKind.DWCONV, c, c, 3, hw) for c in ((16, 32, 64, 128, 256) if not quick else (32, 128))
               for hw in ((8, 16, 32) if not quick else (16,))]
    gemm = [(1, 256, 256), (1, 512, 1024), (8, 256, 256), (64, 128, 128), (64, 512, 512), (256, 256, 256),
            (1, 1024, 1024), (16, 64, 10)] if not quick else [(1, 256, 256), (64, 128, 128), (64, 512, 512)]
    shapes += [Shape(ProbeKind.GEMM, k, n, 1, m) for m, k, n in gemm]
    sizes = [1 << 10, 1 << 13, 1 << 16, 1 << 18, 1 << 20] if not quick else [1 << 12, 1 << 16, 1 << 19]
    shapes += [Shape(op, n) for op in (ProbeKind.ADD, ProbeKind.RELU) for n in sizes]
    return shapes


def bandwidth_shape(llc_bytes: int, quick: bool = False) -> Shape:
    """An Add whose three tensors (2 in, 1 out) need about 1.5x (quick: 1x) the last-level cache."""
    return Shape(ProbeKind.ADD, int(llc_bytes * (1.0 if quick else 1.5) / 12) + 1)


# ---------------------------------------------------------------- timing

def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def median_run_seconds(session: Any, feeds: dict[str, np.ndarray], budget_s: float = 0.05,
                       min_repeats: int = 5, max_repeats: int = 300, threads: int = 1) -> float:
    """Median time of ``session.run`` after warm-up, repeats within a time budget. With one thread
    onnxruntime computes on the calling thread and the clock is that thread's CPU time
    (``time.thread_time``: time descheduled on a busy machine is not counted); else wall time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    for _ in range(3):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - start < budget_s):
        t0 = clock()
        session.run(None, feeds)
        times.append(clock() - t0)
    return statistics.median(times)


def net_run_seconds(session: Any, feeds: dict[str, np.ndarray], threads: int = 1, budget_s: float = 0.05,
                    min_repeats: int = 15, max_repeats: int = 400) -> float:
    """The time of ``session``'s ops alone: runs interleaved with runs of a one-op reference graph (a
    Relu on 16 elements, whose op costs a negligible ~0.2 us), the median reference time subtracted
    from the median run time. Interleaving puts both under the same machine load, so the per-run
    overhead subtracted is the one the run actually paid (same clock as :func:`median_run_seconds`)."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    ref_model, ref_feeds = _relu_chain(1)
    ref = _session(ref_model, threads)
    for _ in range(3):
        session.run(None, feeds)
        ref.run(None, ref_feeds)
    runs: list[float] = []
    refs: list[float] = []
    start = time.perf_counter()
    while len(runs) < min_repeats or (len(runs) < max_repeats and time.perf_counter() - start < budget_s):
        t0 = clock()
        session.run(None, feeds)
        t1 = clock()
        ref.run(None, ref_feeds)
        t2 = clock()
        runs.append(t1 - t0)
        refs.append(t2 - t1)
    return max(statistics.median(runs) - statistics.median(refs), 1e-8)


def time_shape(shape: Shape, threads: int = 1, budget_s: float = 0.05) -> float:
    """Seconds of ``shape``'s op alone (per-run overhead excluded, see :func:`net_run_seconds`)."""
    model, feeds = shape.graph()
    return net_run_seconds(_session(model, threads), feeds, threads, budget_s)


def run_overhead_seconds(threads: int = 1) -> tuple[float, float]:
    """(per session.run overhead, per tiny op) from Relu chains of 1, 8, 32 ops (least-squares line)."""
    ns = np.array([1, 8, 32], float)
    ts = []
    for n in ns:
        model, feeds = _relu_chain(int(n))
        ts.append(median_run_seconds(_session(model, threads), feeds, 0.05, min_repeats=50, threads=threads))
    slope, intercept = np.polyfit(ns, np.array(ts), 1)
    return max(float(intercept), 0.0), max(float(slope), 0.0)


# ---------------------------------------------------------------- statistics

def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their average rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (numpy only)."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# ---------------------------------------------------------------- report

@dataclass(frozen=True)
class CalibrationPoint:
    label: str
    kind: str
    measured_s: float  # the op alone: per-run overhead excluded
    predicted_s: float

    @property
    def error_pct(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s * 100


@dataclass(frozen=True)
class CalibrationReport:
    """What the fit saw: per-shape measured vs predicted, MAPE (%) and Spearman rank correlation."""

    profile: HardwareProfile
    points: tuple[CalibrationPoint, ...]
    mape_pct: float
    spearman: float
    run_overhead_s: float
    machine: dict[str, Any] = field(default_factory=dict)
    class_fits: tuple[ClassFit, ...] = ()  # per op class, from the probes
    class_samples: tuple[OrtSample, ...] = ()
    skipped: tuple[str, ...] = ()  # probes that could not be paired with one layer

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.to_dict(), "mape_pct": self.mape_pct, "spearman": self.spearman,
                "run_overhead_s": self.run_overhead_s, "machine": self.machine,
                "points": [dict(dataclasses.asdict(p), error_pct=p.error_pct) for p in self.points],
                "class_fits": [dataclasses.asdict(f) for f in self.class_fits],
                "class_samples": [dataclasses.asdict(x) for x in self.class_samples], "skipped": list(self.skipped)}

    def table(self) -> str:
        head = f"{'layer':<32} {'measured us':>11} {'predicted us':>12} {'error':>8}"
        rows = [head, "-" * len(head)]
        rows += [f"{p.label[:32]:<32} {p.measured_s * 1e6:>11.2f} {p.predicted_s * 1e6:>12.2f} {p.error_pct:>7.1f}%"
                 for p in self.points]
        c, t, m = self.profile.compute, self.profile.tiling, self.profile.memory
        rows += ["-" * len(head),
                 f"fit: macs_per_cycle {c.macs_per_cycle} x clock {c.clock_hz:.3g} Hz = "
                 f"{self.profile.peak_macs_per_s / 1e9:.2f} GMAC/s; vector_ops_per_cycle {c.vector_ops_per_cycle} "
                 f"({c.vector_ops_per_cycle * c.clock_hz / 1e9:.2f} Gelem/s); tiles {t.tile_out}x{t.tile_in}; "
                 f"layer_cycles {self.profile.overhead.layer_cycles} "
                 f"({self.profile.overhead.layer_cycles / c.clock_hz * 1e6:.2f} us)",
                 f"memory: dram {m.dram_bandwidth_bytes_per_s / 1e9:.2f} GB/s, sram {m.sram_bytes >> 20} MiB; "
                 f"run overhead {self.run_overhead_s * 1e6:.2f} us per session.run (excluded from every timing)",
                 f"fit over {len(self.points)} layers: MAPE {self.mape_pct:.1f}%, Spearman {self.spearman:.3f}"]
        if self.class_fits:
            fusion = self.profile.fusion
            rows += [f"fusion (onnxruntime's optimised graphs): {', '.join(fusion.activations) or 'none'} fused into "
                     f"a conv; after an elementwise op: {'yes' if fusion.after_elementwise else 'no'}",
                     *fits_table(self.class_fits, "class / op")]
        if self.skipped:
            rows.append("skipped: " + "; ".join(self.skipped))
        return "\n".join(rows)


# ---------------------------------------------------------------- machine

def cpu_model() -> str:
    """The CPU's model name and its widest vector extension, which onnxruntime's kernels are chosen
    by: two machines both named "AMD EPYC" ran our zoo 1.7x apart (docs/BENCHMARKS.md, issue 12)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"))
                 if flag in flags), "")
    name = name or platform.processor() or platform.machine()
    return f"{name}, {simd}" if simd else name


def last_level_cache_bytes() -> tuple[int, str]:
    """(bytes, where from): the largest cache of cpu0 in sysfs, else an assumed 8 MiB."""
    best, level = 0, 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = d.joinpath("size").read_text().strip()
            lvl = int(d.joinpath("level").read_text())
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        n = int(size.rstrip("KMG")) * mult
        if n > best:
            best, level = n, lvl
    if best:
        return best, f"measured: L{level} cache size of cpu0 from /sys/devices/system/cpu/cpu0/cache"
    return DEFAULT_LLC_BYTES, "assumption: 8 MiB last-level cache (sysfs cache sizes not readable)"


def machine_info(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "onnxruntime": ort.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


# ---------------------------------------------------------------- fit

@dataclass(frozen=True)
class _Rates:
    s_per_mac: float
    s_per_elem: float
    s_per_layer: float


def _fit_rates(shapes: list[Shape], meas: np.ndarray, to: int, ti: int) -> list[_Rates]:
    """Candidate rates for these tiles: least squares on relative residuals, then on log error."""
    probe = _profile(_Rates(1e-9, 1e-9, 0.0), to, ti, 1 << 40, 1e15, "", "")
    x = np.array([[layer_cost(s.spec(), probe).macs_padded, 0.0 if s.spec().kind.uses_mac_array else
                   s.spec().out_elems, 1.0] for s in shapes])
    w = 1.0 / meas
    # No fit may claim the MAC array is more than 2x faster than the largest layers actually ran
    # (at least half the biggest MAC count: there the per-call overhead subtracted from timings is
    # negligible; on small layers the remainder can be near zero and imply any rate at all).
    big = x[:, 0] >= 0.5 * x[:, 0].max() if x[:, 0].max() > 0 else np.zeros(len(x), dtype=bool)
    floor = [0.5 * float(np.min(meas[big] / x[big, 0])) if big.any() else 1e-15, 1e-15, 0.0]
    sol = np.linalg.lstsq(x * w[:, None], np.ones_like(meas), rcond=None)[0]
    if sol[2] < 0:  # no negative per-layer overhead: refit without it
        sol = np.append(np.linalg.lstsq(x[:, :2] * w[:, None], np.ones_like(meas), rcond=None)[0], 0.0)
    sol = np.maximum(sol, floor)
    out = [_Rates(*sol)]
    for _ in range(20):  # Gauss-Newton on log error from the relative-LS start; rates stay above the floor
        pred = x @ sol
        step = np.linalg.lstsq(x / pred[:, None], np.log(meas / pred), rcond=None)[0]
        sol = np.maximum(sol + 0.5 * step, floor)
    return out + [_Rates(*sol)]


def _profile(r: _Rates, to: int, ti: int, sram: int, bw: float, description: str, source: str) -> HardwareProfile:
    clock = NOMINAL_CLOCK_HZ
    compute = Compute(macs_per_cycle=max(1, round(1 / (r.s_per_mac * clock))), clock_hz=clock, dtype=DType.FP32,
                      vector_ops_per_cycle=max(1, round(1 / (r.s_per_elem * clock))))
    return HardwareProfile(schema_version=SCHEMA_VERSION, name="ort-cpu", description=description or "-",
                           source=source or "-", compute=compute, tiling=Tiling(tile_out=to, tile_in=ti, block=(to, ti)),
                           memory=Memory(sram_bytes=sram, dram_bandwidth_bytes_per_s=bw, weight_compression="none"),
                           sparsity=Sparsity(block_skip=False, nm=(), index_bytes=4, nm_index_bits=8),
                           overhead=Overhead(layer_cycles=max(0, round(r.s_per_layer * clock))))


def predict(shapes: list[Shape], profile: HardwareProfile) -> np.ndarray:
    return np.array([layer_cost(s.spec(), profile).latency_s for s in shapes])


def fit_profile(shapes: list[Shape], meas: np.ndarray, sram: int, bw: float) -> HardwareProfile:
    """Tiles and rates with the lowest MAPE of the full cost model; a later (larger) tile must win by 1%."""
    best, best_err = None, math.inf
    for to in TILES:
        for ti in TILES:
            for rates in _fit_rates(shapes, meas, to, ti):
                p = _profile(rates, to, ti, sram, bw, "", "")
                err = mape(predict(shapes, p), meas)
                if err < best_err * 0.99:
                    best, best_err = p, err
    assert best is not None
    return best


def _timings(shapes: list[Shape], threads: int, progress: Progress | None, budget_s: float) -> np.ndarray:
    out = []
    for i, s in enumerate(shapes):
        if progress:
            progress(i, len(shapes), s.label)
        out.append(time_shape(s, threads, budget_s))
    return np.array(out)


def calibrate_ort_cpu(threads: int = 1, quick: bool = False, progress: Progress | None = None,
                      classes: bool = True) -> tuple[HardwareProfile, CalibrationReport]:
    """Time the grid on onnxruntime CPU, fit the profile; with ``classes``, then measure fusion and fit
    ``[efficiency]`` per op class on the probes. Returns the profile with the fit report."""
    from .ort_probes import measure_fusion, probe_samples

    info = machine_info(threads)
    overhead, _ = run_overhead_seconds(threads)
    sram, sram_src = last_level_cache_bytes()
    bw_shape = bandwidth_shape(sram, quick)
    bw_time = time_shape(bw_shape, threads, 0.2 if not quick else 0.05)
    bw = 12.0 * bw_shape.a / bw_time
    shapes = fit_grid(quick)
    meas = _timings(shapes, threads, progress, 0.02 if quick else 0.05)
    fitted = fit_profile(shapes, meas, sram, bw)
    all_shapes, all_meas = shapes + [bw_shape], np.append(meas, bw_time)
    pred = predict(all_shapes, fitted)
    err, rho = mape(pred, all_meas), spearman(pred, all_meas)
    fits: list[ClassFit] = []
    samples: list[OrtSample] = []
    skipped: list[str] = []
    if classes:
        fitted = dataclasses.replace(fitted, fusion=measure_fusion())
        budget = 0.02 if quick else 0.05

        def timer(session: Any, feeds: dict[str, np.ndarray]) -> float:
            return net_run_seconds(session, feeds, threads, budget)

        samples, skipped = probe_samples(fitted, timer, quick, progress)
        fits = fit_classes(samples, fitted.overhead.layer_cycles, per_op=True)
        fitted = dataclasses.replace(fitted, efficiency=efficiency_of(fits))
    info.update(sram_source=sram_src, bandwidth_probe=bw_shape.label, quick=quick)
    desc = (f"onnxruntime {info['onnxruntime']} CPUExecutionProvider, fp32, {threads} thread(s), on "
            f"{info['cpu']} ({info['cores']} cores): a measured profile")
    per_class = (f"; per-class fit over {len(samples)} probes: MAPE {_weighted_mape(fits):.1f}%" if fits else "")
    source = (f"measured: npu-compress profiles calibrate on {info['cpu']} ({info['cores']} cores), onnxruntime "
              f"{info['onnxruntime']}, {info['date']}, thread CPU time; rate fit MAPE {err:.1f}% over "
              f"{len(all_shapes)} layers{per_class}")
    profile = dataclasses.replace(fitted, description=desc, source=source)
    points = tuple(CalibrationPoint(s.label, s.kind.value, float(m), float(p)) for s, m, p in zip(all_shapes, all_meas, pred))
    return profile, CalibrationReport(profile, points, err, rho, overhead, info, tuple(fits), tuple(samples),
                                      tuple(skipped))


def _weighted_mape(fits: list[ClassFit]) -> float:
    """Over the classes (per-op refinements not counted twice)."""
    fits = [f for f in fits if f.op_class in OP_CLASSES]
    return sum(f.mape_after * f.samples for f in fits) / max(sum(f.samples for f in fits), 1)


# ---------------------------------------------------------------- TOML with sources

def profile_toml(profile: HardwareProfile, report: CalibrationReport) -> str:
    """The profile as TOML, every value line carrying a comment that names its source."""
    c, t, m, s = profile.compute, profile.tiling, profile.memory, profile.sparsity
    n, info = len(report.points), report.machine
    fit = f"fit: least squares (relative / log error) over {n} onnxruntime layer timings"
    lines = [
        "# Measured profile: onnxruntime CPUExecutionProvider on this machine, fitted by",
        "# `npu-compress profiles calibrate --provider cpu` (npu_compress/hardware/calibrate.py).",
        "# Only products with clock_hz matter (macs_per_cycle*clock_hz = MAC/s, etc.).",
        ("schema_version", SCHEMA_VERSION, "assumption: profile schema version this npu_compress reads"),
        ("name", profile.name, "measured profile name"),
        ("description", profile.description, "measured: machine and runtime the timings came from"),
        ("source", profile.source, "measured: provenance of the numbers below"),
        "", "[compute]",
        ("macs_per_cycle", c.macs_per_cycle, f"{fit} (padded MACs term)"),
        ("clock_hz", c.clock_hz, "assumption: nominal 100 MHz; only per-cycle rates times clock matter"),
        ("dtype", c.dtype.value, "assumption: float32 graphs, as calibrated"),
        ("vector_ops_per_cycle", c.vector_ops_per_cycle, f"{fit} (Add/Relu elements term)"),
        "", "[tiling]",
        ("tile_out", t.tile_out, "fit: best padded-MAC staircase over tiles {1,2,4,8,16,32}"),
        ("tile_in", t.tile_in, "fit: best padded-MAC staircase over tiles {1,2,4,8,16,32}"),
        ("block", list(t.block), "fit: block pruning at the fitted tile [tile_out, tile_in]"),
        "", "[memory]",
        ("sram_bytes", m.sram_bytes, info.get("sram_source", "assumption: last-level cache")),
        ("dram_bandwidth_bytes_per_s", m.dram_bandwidth_bytes_per_s,
         f"measured: bytes moved / time of {info.get('bandwidth_probe', 'a large Add')} (past the cache)"),
        ("weight_compression", m.weight_compression, "assumption: ORT CPU stores fp32 weights uncompressed"),
        "", "[sparsity]",
        ("block_skip", s.block_skip, "assumption: ORT CPU does not skip zero blocks"),
        ("nm", list(s.nm), "assumption: ORT CPU accelerates no N:M pattern"),
        ("index_bytes", s.index_bytes, "assumption: int32 block index (unused: no sparse kernels)"),
        ("nm_index_bits", s.nm_index_bits, "assumption: 8-bit N:M index (unused: no sparse kernels)"),
        "", "[overhead]",
        ("layer_cycles", profile.overhead.layer_cycles, f"{fit} (intercept: fixed per-op cost)"),
    ]
    if report.class_fits:
        version = info.get("onnxruntime", "?")
        lines += ["", "[fusion]",
                  ("activations", list(profile.fusion.activations),
                   f"measured: ops onnxruntime {version} folds into a conv (FusedConv), read from its optimised "
                   "graphs"),
                  ("after_elementwise", profile.fusion.after_elementwise,
                   f"measured: whether onnxruntime {version} folds a ReLU into a residual add"),
                  "", "[efficiency]",
                  f"# measured: per op class, {len(report.class_samples)} one-layer probe models exported through "
                  f"npu_compress's ONNX path, onnxruntime {version} thread CPU time (ort_probes.py)"]
        for f in report.class_fits:
            src = f"measured: {f.samples} {f.op_class} probes; MAPE {f.mape_before:.1f}% -> {f.mape_after:.1f}%"
            e = f.efficiency
            lines += [(f"{f.op_class}_compute_scale", e.compute_scale, src),
                      (f"{f.op_class}_elem_cycles", e.elem_cycles, src),
                      (f"{f.op_class}_overhead_cycles", e.overhead_cycles, src)]
    out = []
    for item in lines:
        if isinstance(item, str):
            out.append(item)
        else:
            key, value, comment = item
            out.append(f"{f'{key} = {_toml_value(value)}':<40} # {comment}")
    return "\n".join(out) + "\n"


__all__ = ["CalibrationPoint", "CalibrationReport", "Shape", "calibrate_ort_cpu", "fit_grid", "fit_profile",
           "mape", "median_run_seconds", "predict", "profile_toml", "spearman", "time_shape"]
