"""Per-op-class probes for the ``ort-cpu`` profile: what onnxruntime fuses, and what each class costs.

**Fusion, measured.** A conv followed by each candidate activation is exported (our own ONNX path),
optimised by onnxruntime, and the optimised graph is read back: an activation that is no longer a
node of its own was fused into the conv (``FusedConv``). The same for an activation after a
residual add. The result is the profile's ``[fusion]`` section.

**Classes, measured.** Small torch models of one priced layer each (dense / depthwise / grouped
convs over channels and map sizes including squeeze-excite 1x1 maps, GEMMs and activation matmuls,
unfused activations, pooling, layer norm, concat and transposes) are exported through the same ONNX
path and timed in onnxruntime; each timing is paired with the one layer the cost model prices in
that model, and :mod:`.efficiency_fit` fits ``[efficiency]`` per class.

Timing protocol: one intra-op thread, so onnxruntime computes on the calling thread, and the
clock is that thread's CPU time (``time.thread_time``): time the thread spends descheduled on a busy
machine is not counted. Runs interleaved with runs of a one-op reference graph; the difference of
the medians is the probe's own time (see ``calibrate.net_run_seconds``).
"""
from __future__ import annotations

import dataclasses
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .cost import layer_cost, op_class, trace_layers
from .efficiency_fit import ideal_cycles
from .layers import LayerSpec
from .ops import canonical
from .profile import Fusion, HardwareProfile

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------- probe models

class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, groups: int = 1, act: nn.Module | None = None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups)
        self.act = act or nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


class _Linear(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)

    def forward(self, x):  # (M, n_in)
        return self.fc(x)


class _WithConstant(nn.Module):
    """``op(x, c)`` with ``c`` a constant tensor: a binary op, a concat or a matmul on one input."""

    def __init__(self, op: str, shape: tuple[int, ...]):
        super().__init__()
        self.op = op
        self.register_buffer("c", torch.randn(shape) * 0.1)

    def forward(self, x):
        if self.op == "add":
            return x + self.c
        if self.op == "mul":
            return x * self.c
        if self.op == "cat":
            return torch.cat([x, self.c], dim=1)
        return torch.matmul(x, self.c)


class _Unary(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _ResidualAct(nn.Module):
    """conv, plus the input, then an activation: does the runtime fuse the activation into the add?"""

    def __init__(self, c: int, act: nn.Module):
        super().__init__()
        self.conv, self.act = nn.Conv2d(c, c, 1), act

    def forward(self, x):
        return self.act(self.conv(x) + x)


@dataclass(frozen=True)
class Probe:
    label: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]


# ATen base name -> the module a model would use (what the tracer records for it)
FUSION_CANDIDATES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "hardtanh": nn.ReLU6, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid, "hardswish": nn.Hardswish, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU,
}


def class_probes(quick: bool = False) -> list[Probe]:
    """The grid: every op class over channel counts and map sizes edge models use (224-pixel nets
    run 112..7-pixel maps; CIFAR nets 32..8)."""
    out: list[Probe] = []
    chans = (16, 64) if quick else (16, 32, 64, 128)
    sizes = (8, 28) if quick else (8, 16, 28, 56)
    for c, hw in itertools.product(chans, sizes):
        out.append(Probe(f"conv3x3 {c}->{c} @{hw}", lambda c=c: _Conv(c, c, 3), (1, c, hw, hw)))
        out.append(Probe(f"dwconv3x3 {c} @{hw}", lambda c=c: _Conv(c, c, 3, groups=c), (1, c, hw, hw)))
        out.append(Probe(f"conv1x1 {c}->{2 * c} @{hw}", lambda c=c: _Conv(c, 2 * c, 1), (1, c, hw, hw)))
    if not quick:
        for c_in, c_out, hw in ((3, 32, 112), (3, 16, 32), (24, 40, 28), (96, 24, 14), (256, 256, 7),
                                (512, 512, 7), (40, 120, 28), (160, 960, 7)):
            out.append(Probe(f"conv1x1 {c_in}->{c_out} @{hw}", lambda a=c_in, b=c_out: _Conv(a, b, 1),
                             (1, c_in, hw, hw)))
            out.append(Probe(f"conv3x3 {c_in}->{c_out} @{hw}", lambda a=c_in, b=c_out: _Conv(a, b, 3),
                             (1, c_in, hw, hw)))
        for c, hw in ((32, 112), (96, 56), (144, 28), (240, 14), (480, 14), (960, 7)):
            out.append(Probe(f"dwconv3x3 {c} @{hw}", lambda c=c: _Conv(c, c, 3, groups=c), (1, c, hw, hw)))
            out.append(Probe(f"dwconv5x5 {c} @{hw}", lambda c=c: _Conv(c, c, 5, groups=c), (1, c, hw, hw)))
    for c in ((64, 256) if quick else (32, 64, 256, 512, 1024)):  # squeeze-excite: 1x1 convs on 1x1 maps
        out.append(Probe(f"se-reduce {c}->{c // 4} @1", lambda c=c: _Conv(c, c // 4, 1), (1, c, 1, 1)))
        out.append(Probe(f"se-expand {c // 4}->{c} @1", lambda c=c: _Conv(c // 4, c, 1), (1, c // 4, 1, 1)))
    groups = ((32, 4, 16), (64, 8, 8), (128, 4, 8)) if quick else \
        ((32, 2, 28), (32, 4, 16), (64, 8, 8), (64, 4, 28), (128, 4, 8), (128, 32, 14), (256, 8, 14), (96, 3, 28))
    for c, g, hw in groups:
        out.append(Probe(f"gconv3x3 {c} g{g} @{hw}", lambda c=c, g=g: _Conv(c, c, 3, groups=g), (1, c, hw, hw)))
    gemms = ((1, 256, 256), (64, 128, 128), (196, 192, 768)) if quick else \
        ((1, 256, 256), (1, 512, 1000), (1, 1280, 1000), (16, 64, 10), (64, 128, 128), (64, 512, 512),
         (196, 192, 768), (196, 768, 192), (49, 384, 1536), (256, 256, 256))
    for m, k, n in gemms:
        out.append(Probe(f"linear M{m} {k}->{n}", lambda k=k, n=n: _Linear(k, n), (m, k)))
    for heads, length, d in (((4, 49, 32), (6, 196, 64)) if quick else
                             ((4, 49, 32), (6, 196, 64), (3, 196, 64), (8, 64, 16), (12, 197, 64))):
        out.append(Probe(f"matmul {heads}x{length}x{d}",
                         lambda h=heads, n=length, d=d: _WithConstant("matmul", (1, h, d, n)), (1, heads, length, d)))
    elems = ((16, 8), (16, 28), (64, 56)) if quick else ((16, 8), (16, 28), (64, 28), (64, 56), (128, 56), (32, 112))
    unary = {"relu": torch.relu, "gelu": nn.functional.gelu, "sigmoid": torch.sigmoid,
             "hardswish": nn.functional.hardswish, "softmax": lambda x: torch.softmax(x, dim=-1)}
    for (c, hw), (name, fn) in itertools.product(elems, unary.items()):
        out.append(Probe(f"{name} {c}x{hw}x{hw}", lambda fn=fn: _Unary(fn), (1, c, hw, hw)))
    for (c, hw), op in itertools.product(elems, ("add", "mul")):
        out.append(Probe(f"{op} {c}x{hw}x{hw}", lambda op=op, s=(1, c, hw, hw): _WithConstant(op, s), (1, c, hw, hw)))
    for (c, hw), (name, fn) in itertools.product(elems, {
            "maxpool3s2": lambda x: nn.functional.max_pool2d(x, 3, 2, 1),
            "avgpool2": lambda x: nn.functional.avg_pool2d(x, 2),
            "global-mean": lambda x: x.mean((2, 3))}.items()):
        out.append(Probe(f"{name} {c}x{hw}x{hw}", lambda fn=fn: _Unary(fn), (1, c, hw, hw)))
    for length, c in (((49, 384), (196, 192)) if quick else ((49, 384), (196, 192), (196, 96), (3136, 96),
                                                             (784, 192))):
        out.append(Probe(f"layernorm {length}x{c}", lambda c=c: nn.LayerNorm(c), (1, length, c)))
    for c, hw in elems:
        out.append(Probe(f"cat {c}+{c} @{hw}", lambda s=(1, c, hw, hw): _WithConstant("cat", s), (1, c, hw, hw)))
        out.append(Probe(f"nchw->nhwc {c} @{hw}", lambda: _Unary(lambda x: x.permute(0, 2, 3, 1)), (1, c, hw, hw)))
        out.append(Probe(f"transpose {c}x{hw * hw}", lambda: _Unary(lambda x: x.transpose(1, 2)), (1, c, hw * hw)))
        out.append(Probe(f"slice {c}->{c // 2} @{hw}", lambda c=c: _Unary(lambda x: x[:, : c // 2]), (1, c, hw, hw)))
    return out


# ---------------------------------------------------------------- onnxruntime

def _onnx(model: nn.Module, shape: tuple[int, ...]) -> Any:
    from ..export.onnx_export import _to_onnx

    return _to_onnx(model.eval(), torch.zeros(shape), 17)


def _session(proto: Any, threads: int = 1, optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def optimized_op_types(model: nn.Module, shape: tuple[int, ...]) -> list[str]:
    """The node types of onnxruntime's optimised graph of ``model`` (CPU provider, default level)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "optimized.onnx")
        _session(_onnx(model, shape), optimized_path=path)
        # layout changes onnxruntime adds around its blocked (NCHWc) conv kernels are not ops of the model
        return [n.op_type for n in onnx.load(path).graph.node if not n.op_type.startswith("Reorder")]


def measure_fusion() -> Fusion:
    """Which activations onnxruntime fuses into a conv, and whether into a residual add (read from its
    optimised graphs)."""
    fused = []
    for name, make in FUSION_CANDIDATES.items():
        ops = optimized_op_types(_Conv(16, 16, 3, act=make()), (1, 16, 8, 8))
        if len(ops) == 1:  # the conv alone (FusedConv): the activation runs in its output stage
            fused.append(name)
    after_add = "Relu" not in optimized_op_types(_ResidualAct(16, nn.ReLU()), (1, 16, 8, 8))
    return Fusion(activations=tuple(fused), after_elementwise=after_add)


def feeds_for(session: Any, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {session.get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)}


# ---------------------------------------------------------------- samples

@dataclass(frozen=True)
class OrtSample:
    """One probe: the layer we price, and onnxruntime's time for it."""

    probe: str
    op_class: str
    op: str
    ideal_cycles: float
    out_elems: int
    measured_s: float
    clock_hz: float

    @property
    def measured_cycles(self) -> float:
        return self.measured_s * self.clock_hz

    def ideal(self, tile_in: int) -> float:
        return self.ideal_cycles


def priced_layers(model: nn.Module, shape: tuple[int, ...], profile: HardwareProfile) -> list[LayerSpec]:
    """The layers ``profile`` runs as ops of their own in ``model`` (fused ones left out)."""
    specs = trace_layers(model, (torch.zeros(shape),))
    return [s for s in specs if layer_cost(s, profile).bound != "fused"]  # moves count: they are probed


def probe_samples(profile: HardwareProfile, time_fn: Callable[[Any, dict[str, np.ndarray]], float],
                  quick: bool = False, progress: Progress | None = None,
                  grid: list[Probe] | None = None) -> tuple[list[OrtSample], list[str]]:
    """Time each probe (``time_fn(session, feeds)``: seconds of its ops, per-run overhead excluded); pair
    it with the one layer the cost model prices in it. Returns (samples, skipped probes with why)."""
    grid = grid if grid is not None else class_probes(quick)
    samples, skipped = [], []
    for i, probe in enumerate(grid):
        if progress:
            progress(i, len(grid), probe.label)
        model = probe.build().eval()
        layers = priced_layers(model, probe.input_shape, profile)
        if len(layers) != 1:
            skipped.append(f"{probe.label}: {len(layers)} priced layers, not 1")
            continue
        session = _session(_onnx(model, probe.input_shape))
        seconds = time_fn(session, feeds_for(session, probe.input_shape))
        spec = dataclasses.replace(layers[0], fused=False, fused_into=None)
        samples.append(OrtSample(probe.label, op_class(spec), canonical(spec.op), ideal_cycles(spec, profile),
                                 spec.out_elems,
                                 seconds, profile.compute.clock_hz))
    return samples, skipped


__all__ = ["FUSION_CANDIDATES", "OrtSample", "Probe", "class_probes", "measure_fusion", "optimized_op_types",
           "priced_layers", "probe_samples"]
