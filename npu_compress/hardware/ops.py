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

import enum
from dataclasses import dataclass, field
from typing import Any


class OpKind(str, enum.Enum):
    """What an op costs like."""

    CONV = "conv"  # MAC array, weights
    LINEAR = "linear"  # MAC array, weights
    MATMUL = "matmul"  # MAC array, two activations
    ATTENTION = "attention"  # fused scaled-dot-product attention: two matmuls + softmax
    NORM = "norm"  # batch/layer/group norm
    POOL = "pool"  # pooling, resampling, reductions
    ELEMENTWISE = "elementwise"  # activations, residual add, ...
    VIEW = "view"  # shape-only or copy ops an NPU compiler removes: no cost

    @property
    def uses_mac_array(self) -> bool:
        return self in (OpKind.CONV, OpKind.LINEAR, OpKind.MATMUL, OpKind.ATTENTION)


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


_CONV = {"convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
         "conv_transpose2d", "conv_transpose3d", "mkldnn_convolution"}
_LINEAR = {"linear", "addmm", "mm", "bmm", "matmul", "baddbmm"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_attention_math", "_scaled_dot_product_efficient_attention",
              "_scaled_dot_product_flash_attention"}
_NORM = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
         "native_batch_norm", "layer_norm", "native_layer_norm", "group_norm", "native_group_norm",
         "instance_norm", "_batch_norm_impl_index", "cudnn_batch_norm"}
_POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d",
         "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
         "adaptive_max_pool2d", "mean", "sum", "amax", "amin", "upsample_nearest1d", "upsample_nearest2d",
         "upsample_bilinear2d", "_upsample_nearest_exact2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa",
         "pixel_shuffle", "pixel_unshuffle"}
_VIEW = {"view", "_unsafe_view", "reshape", "t", "transpose", "permute", "flatten", "unflatten", "unsqueeze",
         "squeeze", "expand", "contiguous", "clone", "alias", "detach", "slice", "select", "split",
         "split_with_sizes", "chunk", "unbind", "getitem", "dropout", "feature_dropout", "cat", "stack",
         "_to_copy", "to", "lift_fresh_copy", "view_as", "expand_as", "type_as", "identity", "copy",
         "new_empty", "empty_like", "zeros_like", "ones_like", "full_like", "_assert_tensor_metadata",
         "native_dropout", "alpha_dropout", "narrow", "movedim", "as_strided", "index_select", "repeat",
         "_reshape_alias", "sym_size", "scalar_tensor", "arange", "zeros", "ones", "full", "empty"}


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


def classify(rec: OpRecord) -> OpKind:
    op = rec.op
    if op in _CONV:
        return OpKind.CONV
    if op in _ATTENTION:
        return OpKind.ATTENTION
    if op in _LINEAR:
        return OpKind.LINEAR if any(t.param for t in rec.inputs) else OpKind.MATMUL
    if op in _NORM:
        return OpKind.NORM
    if op in _POOL:
        return OpKind.POOL
    if op in _VIEW or not rec.outputs:
        return OpKind.VIEW
    return OpKind.ELEMENTWISE
