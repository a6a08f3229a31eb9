"""Costed layers: :class:`LayerSpec` s derived from op records, with NPU fusion decided.

A spec holds the channel-level dimensions the cost formula needs, so the cost of a layer
is a function of its kept channels: ``layer_cost(spec.resized(c_in=24, c_out=40), profile)``.

Fusion, as NPU compilers do it (e.g. Vela folds BatchNorm and fuses activations): a batch norm
whose only activation input comes, through shape-only ops (not ``cat``), from a MAC-array op (or
an op fused into one) is folded into it; a unary elementwise op (activation, scaling) fed that way, or fed by an
unfused elementwise op such as a residual add, runs in that op's output stage. Both cost nothing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .ops import BATCH_NORM, JOIN, PERMUTE, SPLIT, OpKind, OpRecord, Stage


@dataclass(frozen=True)
class LayerSpec:
    """One costed op. For conv: ``macs = c_out * c_in/groups * kernel * spatial``.

    Example: a 3x3 conv 16->32 on a 1x16x8x8 input with padding 1 has
    ``c_in=16, c_out=32, kernel=9, spatial=64, groups=1`` (spatial = batch * output positions).
    """

    name: str  # module path (or op name when the op ran outside any submodule)
    op: str  # ATen op family, e.g. "convolution"
    kind: OpKind
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    c_in: int = 0  # reduction channels (conv/linear/matmul)
    c_out: int = 0  # output channels
    kernel: int = 1  # kh * kw
    spatial: int = 0  # output positions (batch included); for attention: batch * heads * L
    groups: int = 1
    depthwise: bool = False  # groups follow channels when channels are removed
    extra: int = 0  # attention: key length S; others unused
    weight_param: str | None = None
    has_bias: bool = False
    in_elems: int = 0  # activation elements read
    out_elems: int = 0  # activation elements written
    stride: int = 1  # conv: the largest of its spatial strides
    fused: bool = False
    fused_into: Stage | None = None  # a fused elementwise op: the kind of layer it runs in, MAC | ELEMENTWISE
    # an elementwise op with a constant tensor operand (a parameter or buffer, or a view of one: a
    # per-channel scale or shift, a layer scale); after a conv it folds into it like an activation
    const_operand: bool = False
    # a concat with an input no op writes right before it (a split or slice of another tensor, a model
    # input, a parameter) or that another op also reads: it cannot be assembled in place, every input
    # is copied (Vela: Concat ops)
    copied: bool = False
    # an elementwise op whose 4-D output may stay in the NPU's channel-brick layout (Vela's NHCWB16):
    # every reader takes that layout, and it is not a model output (see :func:`_brick_outputs`)
    brick_out: bool = False

    @property
    def weight_count(self) -> int:
        if self.kind not in (OpKind.CONV, OpKind.LINEAR):
            return 2 * self.c_out if self.kind == OpKind.NORM and self.weight_param else 0
        return self.c_out * (self.c_in // max(self.groups, 1)) * self.kernel

    def resized(self, c_in: int | None = None, c_out: int | None = None) -> "LayerSpec":
        """The same layer with ``c_in`` / ``c_out`` channels kept (activation sizes scale)."""
        ci = self.c_in if c_in is None else c_in
        co = self.c_out if c_out is None else c_out
        groups = ci if self.depthwise else self.groups
        in_scale = ci / self.c_in if self.c_in else 1.0
        out_scale = co / self.c_out if self.c_out else 1.0
        return dataclasses.replace(self, c_in=ci, c_out=co, groups=groups,
                                   in_elems=round(self.in_elems * in_scale),
                                   out_elems=round(self.out_elems * out_scale))


def _prod(xs: tuple[int, ...]) -> int:
    return math.prod(xs) if xs else 1


def _conv_spec(rec: OpRecord, base: dict) -> LayerSpec:
    x, out = rec.activations[0], rec.outputs[0]
    weight = next(t for t in rec.inputs if t.param is not None)
    groups = int(rec.args.get("groups", 1))
    transposed = bool(rec.args.get("transposed", 0))
    c_in, c_out = x.shape[1], out.shape[1]
    # depthwise: one input channel per group; groups follow the channels when they are pruned
    depthwise = groups > 1 and not transposed and weight.shape[1] == 1
    groups = c_in if depthwise else groups
    # transposed conv: every input position is multiplied into the kernel window
    spatial = x.shape[0] * _prod(x.shape[2:]) if transposed else out.shape[0] * _prod(out.shape[2:])
    n_params = sum(1 for t in rec.inputs if t.param is not None)
    stride = rec.args.get("stride", 1)
    stride = max(stride, default=1) if isinstance(stride, tuple) else stride
    return LayerSpec(**base, c_in=c_in, c_out=c_out, kernel=_prod(weight.shape[2:]), spatial=spatial,
                     groups=groups, depthwise=depthwise, stride=1 if transposed else stride,
                     weight_param=weight.param, has_bias=n_params > 1)


def _linear_spec(rec: OpRecord, base: dict) -> LayerSpec:
    out = rec.outputs[0]
    params = [t for t in rec.inputs if t.param is not None]
    weight = max(params, key=lambda t: len(t.shape))
    acts = rec.activations
    x = acts[0] if acts else weight
    c_in = x.shape[-1]
    c_out = out.shape[-1]
    return LayerSpec(**base, c_in=c_in, c_out=c_out, spatial=out.numel // max(c_out, 1),
                     weight_param=weight.param, has_bias=len(params) > 1)


def _matmul_spec(rec: OpRecord, base: dict) -> LayerSpec:
    a = rec.activations[-2] if len(rec.activations) >= 2 else rec.activations[0]
    out = rec.outputs[0]
    c_out = out.shape[-1]
    return LayerSpec(**base, c_in=a.shape[-1], c_out=c_out, spatial=out.numel // max(c_out, 1))


def _attention_spec(rec: OpRecord, base: dict) -> LayerSpec:
    q, k = rec.activations[0], rec.activations[1]
    out = rec.outputs[0]  # (B, H, L, dv)
    return LayerSpec(**base, c_in=q.shape[-1], c_out=out.shape[-1], spatial=out.numel // max(out.shape[-1], 1),
                     extra=k.shape[-2])


def _norm_spec(rec: OpRecord, base: dict) -> LayerSpec:
    out = rec.outputs[0]
    params = [t for t in rec.inputs if t.param is not None]
    c = out.shape[-1] if "layer_norm" in rec.op else (out.shape[1] if len(out.shape) > 1 else out.shape[0])
    # affine scale/shift (and BN statistics) count as weights unless folded into a preceding conv
    return LayerSpec(**base, c_in=c, c_out=c, spatial=out.numel // max(c, 1),
                     weight_param=params[0].param if params else None)


_SPEC = {OpKind.CONV: _conv_spec, OpKind.LINEAR: _linear_spec, OpKind.MATMUL: _matmul_spec,
         OpKind.ATTENTION: _attention_spec, OpKind.NORM: _norm_spec}


def spec_from_record(rec: OpRecord, fused: bool = False) -> LayerSpec:
    """The costed layer of one op record (VIEW records are not costed: do not pass them)."""
    kind = rec.kind
    in_elems = sum(t.numel for t in rec.activations)
    out_elems = rec.outputs[0].numel if rec.outputs else 0
    base = dict(name=rec.module or rec.op, op=rec.op, kind=kind,
                in_shape=rec.activations[0].shape if rec.activations else (),
                out_shape=rec.outputs[0].shape if rec.outputs else (),
                in_elems=in_elems, out_elems=out_elems, fused=fused)
    make = _SPEC.get(kind)
    if make is not None:
        return make(rec, base)
    c = base["out_shape"][1] if len(base["out_shape"]) > 1 else 0
    return LayerSpec(**base, c_in=c, c_out=c, const_operand=kind == OpKind.ELEMENTWISE and _const_operand(rec))


def _const_operand(rec: OpRecord) -> bool:
    """Whether an op reads a constant tensor (a parameter or buffer, or a view of one) beside its input."""
    return any(t.param is not None for t in rec.inputs)


_FOLDABLE_NORMS = BATCH_NORM - {"instance_norm"}  # folds into a preceding conv (statistics are per channel)
_MOVES = (OpKind.VIEW, OpKind.MOVE)  # pass their input's fusion tag along (but a join writes a new tensor)


def _readers(records: list[OpRecord]) -> dict[str, list[OpRecord]]:
    """Tensor id -> the records that read it as an activation, in execution order."""
    readers: dict[str, list[OpRecord]] = {}
    for rec in records:
        rewritten = {t.id for t in rec.outputs}
        for t in rec.activations:
            if t.id not in rewritten:  # an in-place op (relu_) is the tensor's writer: later ops read it
                readers.setdefault(t.id, []).append(rec)
    return readers


def _brick_outputs(records: list[OpRecord], readers: dict[str, list[OpRecord]]) -> set[str]:
    """Ids of 4-D tensors an NPU compiler can keep in its channel-brick layout (Vela: NHCWB16, 16
    channels deep) because every reader takes that layout: a conv other than a strided 1x1 (Vela
    reads its input in NHWC with a stride), a pool whose output stays 4-D (a global mean down to 2-D is
    a ReduceSum, read in NHWC), a binary elementwise op or a norm (whatever layout it writes), and a
    unary elementwise op (an activation, fused into the op before it) or a reshape that changes nothing
    whose own output stays in bricks. A model output, a permute, a concat, a view that reshapes, a
    linear, a matmul: NHWC. Measured with Vela 5.1.0 (tests/test_constant_operands.py)."""
    final = {t.id for t in records[-1].outputs} if records else set()
    bricks: set[str] = set()

    def takes_bricks(rec: OpRecord) -> bool:
        out = rec.outputs[0] if rec.outputs else None
        if out is None:
            return False
        kind = rec.kind
        if kind == OpKind.CONV:
            spec = _conv_spec(rec, dict(name="", op=rec.op, kind=kind, in_shape=(), out_shape=()))
            return not (spec.kernel == 1 and spec.stride > 1)
        if kind == OpKind.POOL:
            return len(out.shape) == 4
        if kind == OpKind.ELEMENTWISE and len(rec.activations) == 1:
            return out.id in bricks  # a unary op (an activation) runs in its input's op: what it writes counts
        if kind in (OpKind.ELEMENTWISE, OpKind.NORM):  # reads bricks whatever layout it writes
            return True
        if kind == OpKind.VIEW:
            return out.id in bricks and out.shape == rec.activations[0].shape
        return False

    for rec in reversed(records):  # readers run after writers: decide each tensor after its readers
        for t in rec.outputs:
            users = readers.get(t.id, [])
            if len(t.shape) == 4 and t.id not in final and users and all(takes_bricks(u) for u in users):
                bricks.add(t.id)
    return bricks


def layers_from_records(records: list[OpRecord]) -> list[LayerSpec]:
    """Costed layers in execution order, with fusion into preceding MAC-array ops decided."""
    readers = _readers(records)
    bricks = _brick_outputs(records, readers)
    producer: dict[str, Stage] = {}  # tensor id -> what produced it (through views)
    written: set[str] = set()  # tensors an op wrote (or whole views of them): a concat can take them in place
    layers: list[LayerSpec] = []
    for rec in records:
        kind = rec.kind
        acts = rec.activations
        if rec.op not in SPLIT and (kind != OpKind.VIEW or (len(acts) == 1 and acts[0].id in written)):
            written.update(t.id for t in rec.outputs)
        if kind in _MOVES:
            # a layout permutation runs as an operator of its own (Vela: a Transpose): what follows it
            # cannot run in the output stage of the layer before it
            passes = len(acts) == 1 and rec.op not in JOIN and rec.op not in PERMUTE
            tag = producer.get(acts[0].id, Stage.OTHER) if passes else Stage.OTHER
            if kind == OpKind.MOVE:  # costed by the profile's "move" class (free by default)
                spec = spec_from_record(rec)
                if rec.op in JOIN:
                    # an input some other op also reads cannot live in the concat's buffer (Vela:
                    # GhostNet's cat([x1, cheap(x1)]) runs a Concat copy)
                    spec = dataclasses.replace(spec, copied=any(
                        t.id not in written or len(readers.get(t.id, ())) > 1 for t in rec.inputs))
                layers.append(spec)
        else:
            src = producer.get(acts[0].id) if len(acts) == 1 else None
            # batch norm folds into a MAC op (layer/group norm need cross-channel statistics: never);
            # unary activations also run in an elementwise op's output stage
            fused = (rec.op in _FOLDABLE_NORMS and src in (Stage.MAC, Stage.FUSED)) or \
                    (kind == OpKind.ELEMENTWISE and src in (Stage.MAC, Stage.FUSED, Stage.ELEMENTWISE))
            spec = spec_from_record(rec, fused=fused)
            if kind == OpKind.ELEMENTWISE and rec.outputs and rec.outputs[0].id in bricks:
                spec = dataclasses.replace(spec, brick_out=True)
            if fused and kind == OpKind.ELEMENTWISE:  # whether it is free is the profile's call ([fusion])
                spec = dataclasses.replace(spec, fused_into=Stage.ELEMENTWISE if src is Stage.ELEMENTWISE else Stage.MAC)
            layers.append(spec)
            tag = Stage.MAC if kind.uses_mac_array else Stage.FUSED if fused else \
                Stage.ELEMENTWISE if kind == OpKind.ELEMENTWISE else Stage.OTHER
        for t in rec.outputs:
            producer[t.id] = tag
    return layers


def peak_activation_elems(records: list[OpRecord], layers: list[LayerSpec] | None = None) -> int:
    """Largest total size of live activations over the run.

    A tensor lives from the op that first touches it to its last reader (model outputs to the
    end). Shape-only ops and fused ops write no new tensor: their outputs alias their input.
    ``layers``: ``layers_from_records(records)`` when the caller has it already.
    """
    fused_ids = _fused_output_ids(records, layers if layers is not None else layers_from_records(records))
    root: dict[str, str] = {}  # tensor id -> id of the tensor that owns the memory
    size: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}

    def touch(tid: str, numel: int, i: int) -> None:
        size.setdefault(tid, numel)
        first.setdefault(tid, i)
        last[tid] = max(last.get(tid, i), i)

    read = {t.id for rec in records for t in rec.activations}
    if records:
        read.update(t.id for t in records[-1].outputs)
    for i, rec in enumerate(records):
        for t in rec.activations:
            touch(root.setdefault(t.id, t.id), t.numel, i)
        aliased = (rec.kind in _MOVES and rec.op not in JOIN) and bool(rec.activations)
        for t in rec.outputs:
            alias = (aliased or t.id in fused_ids) and bool(rec.activations)
            root[t.id] = root[rec.activations[0].id] if alias else t.id
            if t.id in read:  # outputs nobody reads (pooling indices, norm statistics) take no memory
                touch(root[t.id], t.numel, i)
    if records:
        for t in records[-1].outputs:
            last[root[t.id]] = len(records)
    delta = [0] * (len(records) + 2)
    for tid, n in size.items():
        delta[first[tid]] += n
        delta[last[tid] + 1] -= n
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _fused_output_ids(records: list[OpRecord], layers: list[LayerSpec]) -> set[str]:
    ids: set[str] = set()
    costed = [r for r in records if r.kind != OpKind.VIEW]
    for rec, spec in zip(costed, layers):
        if spec.fused:
            ids.update(t.id for t in rec.outputs)
    return ids
