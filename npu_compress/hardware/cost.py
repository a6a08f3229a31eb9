"""The NPU cost model (docs/ARCHITECTURE.md, "The cost model"): latency and memory of a model on a hardware profile.

Per layer, channels padded to the profile's tiles::

    macs_pad  = ceil(c_out/tile_out)*tile_out * ceil(c_in/tile_in)*tile_in * kh*kw * h_out*w_out / groups
    t_compute = macs_pad / (macs_per_cycle * clock_hz)           (vector unit for elementwise/pooling)
    t_memory  = (weight_bytes_packed + activation bytes spilled past SRAM) / dram_bandwidth
    latency   = sum over layers of max(t_compute, t_memory) + layer_cycles / clock_hz
    memory    = sum of weight_bytes_packed

A layer's activations spill when its input plus output activations exceed ``sram_bytes``.
Depthwise convs pad only the output channels (one input channel per output).
A profile's optional ``[efficiency]`` refines ``t_compute`` and the overhead per op class
(conv, depthwise, grouped, matmul, elementwise, activation, pool, norm, move), as fitted to the chip's compiler::

    t_compute = max(compute_scale * t_compute, elem_cycles * output_elements / clock_hz)
    latency   = max(t_compute, t_memory) + overhead_cycles / clock_hz
Fused layers (see :mod:`.layers`) cost nothing: batch norm folded into a conv always, an activation
in the output stage of the layer before it where the profile's ``[fusion]`` says the compiler does
that (every one by default). Data movement (``move``: concat, transpose) is free unless priced.

Example::

    >>> report = estimate(model, torch.randn(1, 3, 32, 32), load_profile("ethos-u55-256"))
    >>> report.latency_s, report.memory_bytes
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from ..choices import Choice, NMPattern
from .dispatch_trace import trace_ops
from .layers import LayerSpec, layers_from_records, peak_activation_elems
from .ops import BATCH_NORM, JOIN, TRANSCENDENTAL, OpKind, OpRecord, canonical
from .profile import ClassEfficiency, HardwareProfile, class_default, load_profile

# Vector-unit element operations per output element, by op (assumption: simple per-element
# pipelines; normalisation reads twice: statistics, then scale).
_VECTOR_PASSES = {OpKind.NORM: 2, OpKind.ELEMENTWISE: 1, OpKind.POOL: 1, OpKind.MOVE: 1}


class FormatKind(Choice):
    """How a weight is stored: dense, packed blocks, or N:M (values + indices)."""

    DENSE = "dense"
    BLOCK = "block"
    NM = "nm"


class Bound(Choice):
    """What limits a layer: its compute, its memory traffic, nothing (fused into the layer before, or
    a move the profile does not price)."""

    COMPUTE = "compute"
    MEMORY = "memory"
    FUSED = "fused"
    FREE = "free"


@dataclass(frozen=True)
class WeightFormat:
    """How a layer's weights are stored: dense, packed blocks, or N:M.

    ``density`` is the kept fraction of blocks (block) or is N/M (nm).
    >>> WeightFormat(FormatKind.NM, density=0.5, n=2, m=4).pattern
    NMPattern(n=2, m=4)
    """

    kind: FormatKind = FormatKind.DENSE
    density: float = 1.0
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FormatKind.parse(self.kind, "weight format"))

    @property
    def pattern(self) -> NMPattern | None:
        return NMPattern(self.n, self.m) if self.kind is FormatKind.NM else None


DENSE = WeightFormat()


@dataclass(frozen=True)
class LayerCost:
    name: str
    op: str
    kind: OpKind
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    macs_padded: int
    weight_bytes: int
    spilled_bytes: int
    t_compute_s: float
    t_memory_s: float
    latency_s: float
    bound: Bound


@dataclass(frozen=True)
class CostReport:
    """What :func:`estimate` returns. JSON (``to_dict``) uses the same names."""

    profile: str
    latency_s: float
    memory_bytes: int  # what a memory budget counts: packed weight bytes
    weight_bytes: int
    peak_activation_bytes: int
    macs: int
    params: int
    layers: tuple[LayerCost, ...] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, show_fused: bool = False) -> str:
        """A per-layer table for people, then the totals."""
        head = f"{'layer':<28} {'op':<14} {'out shape':<18} {'MACs(pad)':>11} {'weights':>9} " \
               f"{'compute us':>10} {'memory us':>9} {'bound':>7}"
        rows = [head, "-" * len(head)]
        for c in self.layers:
            if c.bound in (Bound.FUSED, Bound.FREE) and not show_fused:
                continue
            rows.append(f"{c.name[-28:]:<28} {c.op[:14]:<14} {str(c.out_shape)[:18]:<18} {c.macs_padded:>11,} "
                        f"{_fmt_bytes(c.weight_bytes):>9} {c.t_compute_s * 1e6:>10.2f} {c.t_memory_s * 1e6:>9.2f} "
                        f"{c.bound:>7}")
        rows.append("-" * len(head))
        rows.append(f"profile {self.profile}: latency {self.latency_s * 1e3:.4f} ms, memory {_fmt_bytes(self.memory_bytes)}"
                    f", peak activations {_fmt_bytes(self.peak_activation_bytes)}, {self.macs:,} MACs, "
                    f"{self.params:,} params")
        return "\n".join(rows)


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


def _pad(c: int, tile: int) -> int:
    return math.ceil(c / tile) * tile


def padded_macs(spec: LayerSpec, profile: HardwareProfile) -> tuple[int, int]:
    """(true MACs, tile-padded MACs) of a MAC-array layer; (0, 0) for others."""
    to, ti = profile.tiling.tile_out, profile.tiling.tile_in
    if spec.kind == OpKind.ATTENTION:  # q @ k^T (L x d x S), then attn @ v (L x S x dv)
        rows = spec.spatial
        true = rows * spec.extra * (spec.c_in + spec.c_out)
        return true, rows * (_pad(spec.extra, to) * _pad(spec.c_in, ti) + _pad(spec.c_out, to) * _pad(spec.extra, ti))
    if not spec.kind.uses_mac_array:
        return 0, 0
    per_group_in = spec.c_in // max(spec.groups, 1)
    true = spec.c_out * per_group_in * spec.kernel * spec.spatial
    if spec.depthwise:
        return true, _pad(spec.c_out, to) * per_group_in * spec.kernel * spec.spatial
    pad = _pad(spec.c_out, to) * _pad(spec.c_in, ti) * spec.kernel * spec.spatial // max(spec.groups, 1)
    return true, pad


def weight_bytes(spec: LayerSpec, profile: HardwareProfile, fmt: WeightFormat = DENSE) -> int:
    """Stored bytes of a layer's weights in the given format, bias at accumulator width."""
    if spec.fused or spec.weight_param is None:
        return 0
    dt = profile.compute.dtype
    bias = spec.c_out * dt.bias_bytes if spec.has_bias else 0
    if spec.kind == OpKind.NORM:
        return spec.weight_count * dt.bytes
    if fmt.kind is FormatKind.BLOCK:
        bo, bi = profile.tiling.block
        total = math.ceil(spec.c_out / bo) * math.ceil(spec.c_in // max(spec.groups, 1) * spec.kernel / bi)
        kept = round(fmt.density * total)
        return kept * (bo * bi * dt.bytes + profile.sparsity.index_bytes) + bias
    if fmt.kind is FormatKind.NM:
        kept = math.ceil(spec.weight_count * fmt.n / fmt.m)
        return kept * dt.bytes + math.ceil(kept * profile.sparsity.nm_index_bits / 8) + bias
    return spec.weight_count * dt.bytes + bias


def _compute_fraction(profile: HardwareProfile, fmt: WeightFormat) -> float:
    """Share of MAC-array work the hardware still does for a sparse weight format."""
    if fmt.kind is FormatKind.BLOCK and profile.sparsity.block_skip:
        return fmt.density
    if fmt.kind is FormatKind.NM and fmt.pattern in profile.sparsity.nm:
        return fmt.n / fmt.m
    return 1.0


def op_class(spec: LayerSpec) -> str:
    """The profile's ``[efficiency]`` class of a layer (see :data:`OP_CLASSES`)."""
    if spec.kind == OpKind.CONV:
        return "depthwise" if spec.depthwise else "grouped" if spec.groups > 1 else "conv"
    if spec.kind == OpKind.ATTENTION:
        return "attention"
    if spec.kind == OpKind.LINEAR and spec.spatial > 1:
        return "gemm"  # a linear over many rows (tokens, pixels); one row (a classifier's input): matmul
    if spec.kind in (OpKind.LINEAR, OpKind.MATMUL):
        return "matmul"
    if spec.kind == OpKind.ELEMENTWISE and spec.op in TRANSCENDENTAL:
        return "activation"
    if spec.kind == OpKind.ELEMENTWISE and spec.const_operand and len(spec.out_shape) >= 4:
        return "scale"
    return {OpKind.POOL: "pool", OpKind.NORM: "norm", OpKind.MOVE: "move"}.get(spec.kind, "elementwise")


def _runs(spec: LayerSpec, profile: HardwareProfile) -> int:
    """How many operators the chip runs a layer as: a conv strided beyond ``[compute] max_conv_stride``
    runs once per output position (the Ethos-U55's lowering), anything else once."""
    limit = profile.compute.max_conv_stride
    return spec.spatial if spec.kind == OpKind.CONV and limit and spec.stride > limit and spec.spatial > 1 else 1


def constant_read_cycles(spec: LayerSpec, profile: HardwareProfile) -> float:
    """Cycles one op spends reading a constant operand materialised at the full shape of its 4-D
    activation (``[memory] constant_read_cycles``; 0 where a profile does not model it): per element,
    more on maps of at most 8 rows. A norm's separate affine reads its map with rows padded to 16
    (Vela's 16-deep bricks: the rows are the depth of its layout)."""
    mem = profile.memory
    if len(spec.out_shape) < 4 or not (mem.constant_read_cycles or mem.constant_read_cycles_short):
        return 0.0
    channels_last = spec.kind == OpKind.NORM and "layer_norm" in spec.op  # (N, H, W, C), normalised over C
    rows = spec.out_shape[1] if channels_last else spec.out_shape[2]
    per_elem = mem.constant_read_cycles if rows > 8 else mem.constant_read_cycles_short
    padded = _pad(rows, 16) / rows if spec.kind == OpKind.NORM else 1.0
    return spec.out_elems * padded * per_elem


def _written_elems(spec: LayerSpec, profile: HardwareProfile) -> float:
    """Output elements a layer pays per-element costs for: a depthwise conv's channels padded to
    ``[tiling] depthwise_out_granule`` (Vela: a depthwise conv costs the same at 33 and 40 channels); an
    elementwise op whose output stays in channel bricks, its channels padded to ``[tiling] brick_depth``
    (Vela: a residual add of 8 channels costs what one of 16 does, unless it writes NHWC)."""
    granule = profile.tiling.depthwise_out_granule
    if spec.depthwise and granule and spec.c_out:
        return spec.out_elems * _pad(spec.c_out, granule) / spec.c_out
    brick = profile.tiling.brick_depth
    if spec.brick_out and brick and spec.c_out and spec.kind == OpKind.ELEMENTWISE:
        return spec.out_elems * _pad(spec.c_out, brick) / spec.c_out
    return spec.out_elems


def _overhead_cycles(eff: ClassEfficiency, profile: HardwareProfile) -> float:
    """Fixed cycles per op of a class: its fitted overhead, else ``[overhead] layer_cycles``."""
    return profile.overhead.layer_cycles if eff.overhead_cycles is None else eff.overhead_cycles


def _separate_affine(spec: LayerSpec, profile: HardwareProfile) -> bool:
    """A norm whose affine scale and shift the chip runs as two ops of their own (``[fusion] norm_affine
    = false``), priced as ``scale`` ops: on a 4-D activation, where they are a cost of their own."""
    return (spec.kind == OpKind.NORM and spec.weight_param is not None and len(spec.out_shape) >= 4
            and not profile.fusion.norm_affine)


def layer_cost(spec: LayerSpec, profile: HardwareProfile, fmt: WeightFormat = DENSE) -> LayerCost:
    """Cost of one layer. Call with ``spec.resized(c_in=..., c_out=...)`` for a pruned layer."""
    clock = profile.compute.clock_hz
    macs, macs_pad = padded_macs(spec, profile)
    macs_pad = round(macs_pad * _compute_fraction(profile, fmt))
    wbytes = weight_bytes(spec, profile, fmt)
    cls = op_class(spec)
    eff = profile.efficiency.of(cls, canonical(spec.op))
    fused = spec.fused and (not spec.fused_into or profile.fusion.fuses(spec.op, spec.fused_into))
    # a view: a layout permutation that pruning left moving only size-1 dims (ChannelCosts re-derives
    # a layer's kind with its pruned shapes) moves no element
    in_place = spec.op in JOIN and not spec.copied and profile.fusion.concat_in_place
    if fused or in_place or spec.kind == OpKind.VIEW or (spec.kind == OpKind.MOVE and eff == class_default("move")):
        return LayerCost(spec.name, spec.op, spec.kind, spec.in_shape, spec.out_shape, 0, 0, wbytes, 0,
                         0.0, 0.0, 0.0, Bound.FUSED if fused else Bound.FREE)
    act_bytes = (spec.in_elems + spec.out_elems) * profile.compute.dtype.bytes
    spilled = act_bytes if act_bytes > profile.memory.sram_bytes else 0
    written = _written_elems(spec, profile)
    if spec.kind.uses_mac_array:
        t_compute = macs_pad / profile.peak_macs_per_s
        if spec.kind == OpKind.ATTENTION:  # softmax over the L x S scores on the vector unit
            t_compute += spec.spatial * spec.extra / (profile.compute.vector_ops_per_cycle * clock)
    else:
        elems = spec.in_elems if spec.kind == OpKind.POOL else written
        t_compute = elems * _VECTOR_PASSES.get(spec.kind, 1) / (profile.compute.vector_ops_per_cycle * clock)
    t_compute = max(eff.compute_scale * t_compute, eff.elem_cycles * written / clock)
    runs = _runs(spec, profile)  # each run reads all the weights and pays the per-op overhead
    t_memory = (runs * wbytes + spilled) / profile.memory.dram_bandwidth_bytes_per_s
    if cls == "scale":
        t_memory += constant_read_cycles(spec, profile) / clock
    latency = max(t_compute, t_memory) + runs * _overhead_cycles(eff, profile) / clock
    if _separate_affine(spec, profile):  # the norm's scale and shift (and mean): ``scale`` ops of their own
        n = 3 if spec.op in BATCH_NORM else 2
        scale = profile.efficiency.of("scale")
        op_compute = max(scale.compute_scale * spec.out_elems / profile.compute.vector_ops_per_cycle,
                         scale.elem_cycles * spec.out_elems) / clock
        op_memory = constant_read_cycles(spec, profile) / clock
        t_compute, t_memory = t_compute + n * op_compute, t_memory + n * op_memory
        latency += n * (max(op_compute, op_memory) + _overhead_cycles(scale, profile) / clock)
    return LayerCost(spec.name, spec.op, spec.kind, spec.in_shape, spec.out_shape, macs, macs_pad, wbytes,
                     spilled, t_compute, t_memory, latency, Bound.COMPUTE if t_compute >= t_memory else Bound.MEMORY)


def report_from_layers(layers: Iterable[LayerSpec], profile: HardwareProfile, peak_elems: int, params: int,
                       formats: dict[str, WeightFormat] | None = None) -> CostReport:
    """Sum layer costs into a report. ``formats`` maps weight parameter names to their storage."""
    formats = formats or {}
    costs = tuple(layer_cost(s, profile, formats.get(s.weight_param or "", DENSE)) for s in layers)
    wbytes = sum(c.weight_bytes for c in costs)
    return CostReport(profile=profile.name, latency_s=sum(c.latency_s for c in costs), memory_bytes=wbytes,
                      weight_bytes=wbytes, peak_activation_bytes=peak_elems * profile.compute.dtype.bytes,
                      macs=sum(c.macs for c in costs), params=params, layers=costs)


def report_from_records(records: list[OpRecord], profile: HardwareProfile, params: int,
                        formats: dict[str, WeightFormat] | None = None) -> CostReport:
    layers = layers_from_records(records)
    return report_from_layers(layers, profile, peak_activation_elems(records, layers), params, formats)


def estimate(model: nn.Module, example_inputs: Any, profile: HardwareProfile | str | None = None,
             formats: dict[str, WeightFormat] | None = None) -> CostReport:
    """Predicted latency and memory of ``model`` on ``profile`` (name, path or profile; default generic-4tops).

    ``formats`` gives packed storage (block / N:M) per weight parameter name; dense otherwise.
    """
    profile = load_profile(profile) if profile is not None else load_profile()
    records = trace_ops(model, example_inputs)
    params = sum(p.numel() for p in model.parameters())
    return report_from_records(records, profile, params, formats)


def trace_layers(model: nn.Module, example_inputs: Any) -> list[LayerSpec]:
    """The costed layers of ``model``: the per-layer functions of kept channels pruners use."""
    return layers_from_records(trace_ops(model, example_inputs))


__all__ = ["Bound", "FormatKind", "CostReport", "LayerCost", "WeightFormat", "estimate", "layer_cost", "padded_macs", "weight_bytes",
           "report_from_layers", "report_from_records", "trace_layers"]
