"""Op records: one neutral description of a model's ATen ops, whatever traced them.

Two tracers produce :class:`OpRecord` lists: a dispatch-mode run of the real model
(:mod:`.dispatch_trace`, fast, used by :func:`estimate`) and the pruning graph's
``torch.export`` program. The cost model reads only records, so both see the same costs.

Example::

    OpRecord(op="convolution", module="layer1.0.conv1",
             inputs=(TensorMeta("t3", (1, 16, 32, 32)), TensorMeta("w7", (16, 16, 3, 3), "layer1.0.conv1.weight")),
             outputs=(TensorMeta("t4", (1, 16, 32, 32)),), args={"groups": 1})
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from ..choices import Choice


class OpKind(Choice):
    """What an op costs like."""

    CONV = "conv"  # MAC array, weights
    LINEAR = "linear"  # MAC array, weights
    MATMUL = "matmul"  # MAC array, two activations
    ATTENTION = "attention"  # fused scaled-dot-product attention: two matmuls + softmax
    NORM = "norm"  # batch/layer/group norm
    POOL = "pool"  # pooling, resampling, reductions
    ELEMENTWISE = "elementwise"  # activations, residual add, ...
    MOVE = "move"  # data movement: concat, transpose/permute, materialising copies (priced by the profile)
    VIEW = "view"  # shape-only ops and no-op copies an NPU compiler removes: no cost

    @property
    def uses_mac_array(self) -> bool:
        return self in (OpKind.CONV, OpKind.LINEAR, OpKind.MATMUL, OpKind.ATTENTION)


class Stage(Choice):
    """What produced a tensor, for fusion: a MAC-array op, an op fused into one, an elementwise op, other.
    A fused activation runs in the output stage of a ``MAC`` or ``ELEMENTWISE`` layer."""

    MAC = "mac"
    FUSED = "fused"
    ELEMENTWISE = "elementwise"
    OTHER = "other"


@dataclass(frozen=True)
class TensorMeta:
    """A tensor seen by the tracer: a stable id, its shape, and its parameter name if it is one."""

    id: str
    shape: tuple[int, ...]
    param: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class OpRecord:
    """One ATen op call: its base name (no namespace, no overload), module path, tensors, int args."""

    op: str
    module: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> OpKind:
        return classify(self)

    @property
    def activations(self) -> tuple[TensorMeta, ...]:
        """Inputs that are not parameters or buffers."""
        return tuple(t for t in self.inputs if t.param is None)


# ---------------------------------------------------------------- the op vocabulary
# One vocabulary for the cost model (classify) and the pruning graph's channel walk
# (graph/channel_ops.py): ATen op families by base name (see base_name: no namespace, no overload,
# no in-place underscore), grouped by what the op does to a tensor.
CONV = frozenset({"convolution", "_convolution", "conv1d", "conv2d", "conv3d", "mkldnn_convolution"})
CONV_TRANSPOSE = frozenset({"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"})
LINEAR = frozenset({"linear", "addmm", "mm", "bmm", "matmul", "baddbmm"})  # with a weight: LINEAR, else MATMUL
ATTENTION = frozenset({"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                       "_scaled_dot_product_attention_math", "_scaled_dot_product_efficient_attention",
                       "_scaled_dot_product_flash_attention"})
BATCH_NORM = frozenset({"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                        "native_batch_norm", "_batch_norm_impl_index", "cudnn_batch_norm", "instance_norm"})
LAYER_NORM = frozenset({"layer_norm", "native_layer_norm", "rms_norm"})
GROUP_NORM = frozenset({"group_norm", "native_group_norm"})
SPATIAL = frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d",
                     "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                     "_adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "upsample_nearest1d",
                     "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d",
                     "upsample_linear1d", "upsample_trilinear3d", "_upsample_nearest_exact2d",
                     "_upsample_bilinear2d_aa"})
REDUCE = frozenset({"mean", "sum", "amax", "amin", "max", "min", "var", "std", "logsumexp", "prod", "var_mean"})
SOFTMAX = frozenset({"softmax", "log_softmax", "_softmax", "_log_softmax", "cumsum"})
UNARY = frozenset({"relu", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid", "relu6",
                   "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "abs", "neg", "clamp", "clamp_min",
                   "clamp_max", "exp", "square", "erf", "log_sigmoid", "sqrt", "rsqrt", "sin", "cos", "logical_not",
                   "bitwise_not", "sign", "round", "floor", "ceil", "trunc", "reciprocal", "log"})
# elementwise ops a runtime computes with a polynomial or a table, not one instruction (kernels of
# their own on a CPU runtime: several times a ReLU's cost)
TRANSCENDENTAL = frozenset({"gelu", "silu", "sigmoid", "tanh", "hardswish", "elu", "selu", "celu", "mish",
                            "softplus", "exp", "erf", "log_sigmoid", "sin", "cos", "log", "rsqrt", "sqrt",
                            "reciprocal", "softmax", "log_softmax", "_softmax", "_log_softmax"})
BINARY = frozenset({"add", "sub", "mul", "rsub", "maximum", "minimum", "where", "gt", "lt", "ge", "le", "eq", "ne",
                    "masked_fill", "logical_and", "logical_or"})  # elementwise, broadcasting
RESHAPE = frozenset({"view", "reshape", "_unsafe_view", "_reshape_alias", "flatten", "unflatten", "squeeze",
                     "unsqueeze", "view_as", "reshape_as"})
PERMUTE = frozenset({"permute", "transpose", "t", "movedim", "swapaxes", "swapdims"})
JOIN = frozenset({"cat", "concat", "stack"})  # write one new tensor from several
SPLIT = frozenset({"split", "split_with_sizes", "chunk", "unbind", "slice", "narrow", "select", "getitem"})
# the same values, maybe a new buffer: no work an NPU compiler keeps
PASS = frozenset({"clone", "contiguous", "alias", "detach", "dropout", "feature_dropout", "alpha_dropout",
                  "native_dropout", "_to_copy", "to", "lift_fresh_copy", "type_as", "identity", "copy"})
CREATE = frozenset({"zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_empty",
                    "scalar_tensor", "arange", "zeros", "ones", "full", "empty"})
META = frozenset({"_assert_tensor_metadata", "_assert_async", "_assert_scalar", "sym_constrain_range_for_size",
                  "sym_size"})
# shape-only or free ops (cost nothing); JOIN / PERMUTE / COPYING move data (OpKind.MOVE)
COPYING = frozenset({"repeat", "index_select", "channel_shuffle", "native_channel_shuffle", "roll", "flip"})
_NORM = BATCH_NORM | LAYER_NORM | GROUP_NORM
_POOL = SPATIAL | {"mean", "sum", "amax", "amin", "pixel_shuffle", "pixel_unshuffle"}  # vector unit, one pass
_VIEW = RESHAPE | SPLIT | PASS | CREATE | META | {"expand", "expand_as", "as_strided"}
_MOVE = JOIN | PERMUTE | COPYING
_SLICES = frozenset({"slice", "narrow"})  # taking part of a tensor


# one name for ops the two tracers spell differently (dispatch level: aten._softmax; export: softmax)
_ALIASES = {"_softmax": "softmax", "_log_softmax": "log_softmax",
            # every layout permutation moves each element once: priced as one op family, "permute"
            **dict.fromkeys(PERMUTE - {"permute"} | {"channel_shuffle", "native_channel_shuffle"}, "permute")}


def canonical(name: str) -> str:
    """The one name of an op family for pricing (``_softmax`` -> ``softmax``)."""
    return _ALIASES.get(name, name)


def base_name(op: Any) -> str:
    """The op's family name: ``aten.conv2d.default`` -> ``conv2d``, ``aten.relu_`` -> ``relu``."""
    packet = getattr(op, "overloadpacket", None)
    if packet is not None:
        name = packet.__name__
    elif isinstance(op, str):
        parts = op.split(".")
        name = parts[1] if len(parts) > 1 and parts[0] in ("aten", "prims") else parts[0]
    else:
        name = getattr(op, "__name__", str(op))
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def moves_data(rec: OpRecord) -> bool:
    """Whether a layout permutation changes the order of elements in memory: False when the dims it
    moves past each other are all of size 1 (``transpose(1, 2)`` of (B, N, 1, D) is a reshape).
    Without the dims recorded (``t``, ``movedim``), True."""
    shape = rec.activations[0].shape
    n = len(shape)
    if "dims" in rec.args:
        order = [d % n for d in rec.args["dims"]] if n else []
    elif "dim0" in rec.args and "dim1" in rec.args and n:
        order = list(range(n))
        a, b = rec.args["dim0"] % n, rec.args["dim1"] % n
        order[a], order[b] = order[b], order[a]
    else:
        return True
    kept = [d for d in order if shape[d] != 1]
    return kept != sorted(kept)


def classify(rec: OpRecord) -> OpKind:
    op = rec.op
    if op in CONV or op in CONV_TRANSPOSE:
        return OpKind.CONV
    if op in ATTENTION:
        return OpKind.ATTENTION
    if op in LINEAR:
        return OpKind.LINEAR if any(t.param for t in rec.inputs) else OpKind.MATMUL
    if op in _NORM:
        return OpKind.NORM
    if op in _POOL:
        return OpKind.POOL
    if op in _SLICES and rec.activations and rec.outputs and rec.outputs[0].numel < rec.activations[0].numel:
        return OpKind.MOVE  # a view in torch, a copy in a runtime (ONNX Slice); free unless priced
    if op in _VIEW or not rec.outputs:
        return OpKind.VIEW
    if op in PERMUTE and rec.activations and not moves_data(rec):
        return OpKind.VIEW  # only size-1 dims change place: a reshape, no element moves
    if op in _MOVE:  # a move of parameters only is folded into a constant
        return OpKind.MOVE if rec.activations else OpKind.VIEW
    return OpKind.ELEMENTWISE


def fold_linear_bias(records: list[OpRecord]) -> list[OpRecord]:
    """One spelling of a biased linear layer, whichever tracer recorded it: a weighted matmul whose
    output (through reshapes) gets a 1-D parameter added is one layer with a bias. ``linear`` on a
    non-contiguous input (e.g. after a channels-last permute) runs as ``matmul`` then ``add`` at the
    dispatch level while ``torch.export`` shows ``linear``; ``x @ w.t() + b`` is the same layer."""
    out: list[OpRecord] = []
    from_linear: dict[str, int] = {}  # tensor id -> index in ``out`` of the weighted matmul it views
    rename: dict[str, str] = {}
    for rec in records:
        if rename:
            rec = replace(rec, inputs=tuple(replace(t, id=rename.get(t.id, t.id)) for t in rec.inputs))
        acts, params = rec.activations, [t for t in rec.inputs if t.param is not None]
        if rec.op in LINEAR and params:
            from_linear.update((t.id, len(out)) for t in rec.outputs)
        elif rec.op in RESHAPE and len(acts) == 1 and acts[0].id in from_linear:
            from_linear.update((t.id, from_linear[acts[0].id]) for t in rec.outputs)
        elif rec.op == "add" and len(acts) == 1 and acts[0].id in from_linear and len(params) == 1 \
                and len(params[0].shape) == 1 and rec.outputs and params[0].shape[0] == rec.outputs[0].shape[-1]:
            i = from_linear[acts[0].id]
            linear = out[i]
            if len([t for t in linear.inputs if t.param is not None]) == 1:  # no bias yet: this is it
                out[i] = replace(linear, inputs=(*linear.inputs, params[0]))
                rename.update((t.id, acts[0].id) for t in rec.outputs if t.id != acts[0].id)
                continue
        out.append(rec)
    return out
