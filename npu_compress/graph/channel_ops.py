"""Walk the exported graph once, op by op, tracking channel elements (see ``channels.py``).

Each handler reads the :class:`Info` of its inputs and returns the Info of its output (or a list,
for ops returning several tensors). Anything a handler does not understand freezes the channels
it touches, so a wrong model is never produced: e.g. ``torch.roll(x, 1, dims=1)`` freezes every
channel of ``x`` and the report names ``aten.roll.default``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np
from torch import fx, nn

from ..hardware import ops
from ..hardware.ops import base_name
from . import tensor_info as ti
from . import producers, rules
from .attention import sdpa_handler
from .channels import AttrFix, ChannelState, NormStats
from .export_trace import Trace
from .tensor_info import Info, ParamRef
from .types import FreezeRecord

log = logging.getLogger(__name__)

# the channel walk's op families are the cost model's (one vocabulary: hardware/ops.py), plus ops
# that only matter to channels: no-op copies and creations act per element like a unary op
UNARY = ops.UNARY | ops.PASS - {"native_dropout", "copy"} | {"zeros_like", "ones_like", "full_like",
                                                              "empty_like", "rand_like", "randn_like"}
BINARY = ops.BINARY
SPATIAL, REDUCE, SOFTMAX, RESHAPE, PERMUTE = ops.SPATIAL, ops.REDUCE, ops.SOFTMAX, ops.RESHAPE, ops.PERMUTE
IGNORE = ops.META


def op_name(node: fx.Node) -> str:
    """The op's family name in the shared vocabulary (``aten.relu_.default`` -> ``relu``)."""
    return base_name(node.target)


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class ChannelWalk:
    """One pass over ``trace.graph``; results in ``self.state`` and ``self.info``."""

    def __init__(self, trace: Trace):
        self.tr = trace
        self.state = ChannelState()
        self.info: dict[str, Any] = {}
        self._attr_elems: dict[tuple[str, str], np.ndarray] = {}  # (module, attribute) -> what it counts
        self.handlers: dict[str, Callable[[fx.Node], Any]] = {}
        for names, fn in [(UNARY, self.unary), (BINARY, self.binary), (SPATIAL, self.spatial),
                          (REDUCE, self.reduce), (SOFTMAX, self.softmax), (RESHAPE, self.reshape),
                          (PERMUTE, self.permute)]:
            self.handlers.update(dict.fromkeys(names, fn))
        self.handlers.update(dict.fromkeys(ops.CONV - {"mkldnn_convolution"}, self.conv))
        self.handlers.update(dict.fromkeys(ops.CONV_TRANSPOSE, self.conv_transpose))
        self.handlers.update(dict.fromkeys(ops.LAYER_NORM - {"native_layer_norm"}, self.layer_norm))
        self.handlers.update({
            "getitem": self.getitem, "expand": self.expand, "repeat": self.repeat, "cat": self.cat,
            "concat": self.cat, "stack": self.stack, "chunk": self.chunk, "split": self.split,
            "split_with_sizes": self.split, "unbind": self.unbind, "slice": self.slice, "narrow": self.slice,
            "select": self.select, "batch_norm": self.batch_norm, "instance_norm": self.batch_norm,
            "_native_batch_norm_legit_no_training": self.batch_norm, "group_norm": self.group_norm,
            "linear": self.linear, "matmul": self.matmul, "embedding": self.embedding,
            "scaled_dot_product_attention": self.sdpa, "constant_pad_nd": self.pad, "pad": self.pad,
            "div": self.div, "pow": self.pow})
        # registered rules (the public extension point, graph/rules.py) come before the built-in ones
        self.op_rules, self.module_rules = rules.op_rules(), rules.module_rules()

    # -- driver ---------------------------------------------------------------------------
    def run(self) -> "ChannelWalk":
        for node in self.tr.graph.nodes:
            if node.op == "placeholder":
                self.info[node.name] = self.placeholder(node)
            elif node.op == "call_function":
                name = op_name(node)
                if name in IGNORE:
                    continue
                self.info[node.name] = self._handle(name, node)
            elif node.op == "output":
                self.output(node)
        return self

    def _handle(self, name: str, node: fx.Node) -> Any:
        try:
            registered = self._module_rules_of(node) + ([self.op_rules[name]] if name in self.op_rules else [])
            for rule in registered:
                out = rule(self, node)
                if out is not NotImplemented:
                    return out
            return self.handlers.get(name, self.unknown)(node)
        except Exception as exc:  # an unforeseen corner of a handler: freeze, never crash
            log.debug("channel analysis failed at %s: %r", node.name, exc)
            self.freeze_inputs(node, f"channel analysis of {name} failed ({type(exc).__name__}: {exc})")
            return None

    def _module_rules_of(self, node: fx.Node) -> list:
        """Rules registered for the types of the modules that ran ``node``, innermost first."""
        if not self.module_rules:
            return []
        return [rule for _, mod in self.tr.modules_of(node) if mod is not None
                for cls, rule in self.module_rules.items() if isinstance(mod, cls)]

    # -- what a channel rule may call (docs: graph/rules.py) -----------------------------------
    def val(self, a: Any) -> Any:
        return self.info.get(a.name) if isinstance(a, fx.Node) else None

    def tie(self, ids: np.ndarray) -> None:
        """These elements become one class: removed together or not at all."""
        self.state.union_all(np.asarray(ids, dtype=np.int64))

    def new_channels(self, n: int, node: fx.Node) -> np.ndarray:
        """``n`` fresh element ids: channels ``node`` produces."""
        return self.state.new_elements(n, node.name)

    def module_of(self, node: fx.Node) -> tuple[str, Optional[nn.Module]]:
        return self.tr.module_of(node)

    def update_attribute(self, path: str, attr: str, ids: np.ndarray) -> bool:
        """After pruning, ``module(path).attr`` (or list entry ``"name[i]"``) = kept channels among ``ids``.

        An attribute holds one value: a second update of the same one (a module run several times, e.g.
        one attention module looping over its heads) ties its channels to the first's, position by
        position. False (nothing recorded) when the two counts differ: the caller freezes."""
        ids = np.asarray(ids, dtype=np.int64).copy()
        first = self._attr_elems.get((path, attr))
        if first is not None:
            if first.size != ids.size:
                return False
            self.state.union(first, ids)
            return True
        self._attr_elems[(path, attr)] = ids
        self.state.attr_fixes.append(AttrFix(path, attr, ids))
        return True

    def keep_one(self, ids: np.ndarray) -> None:
        """At least one of these channels must stay."""
        self.state.keep_one.append(np.asarray(ids, dtype=np.int64).copy())

    def shape(self, a: Any) -> Optional[tuple[int, ...]]:
        return self.tr.shape(a)

    def freeze(self, obj: Any, node: fx.Node, reason: str) -> None:
        """Freeze the channels of ``obj`` (Info / list); mark a ParamRef as used in an unknown way."""
        if isinstance(obj, Info):
            self.state.freeze(obj.ids, node.name, str(node.target), reason)
        elif isinstance(obj, ParamRef):
            self.state.unknown_params.setdefault(obj.name, FreezeRecord(node.name, str(node.target), reason))
        elif isinstance(obj, (list, tuple)):
            for o in obj:
                self.freeze(o, node, reason)

    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        for a in node.all_input_nodes:
            self.freeze(self.val(a), node, reason)

    def unknown(self, node: fx.Node) -> None:
        self.freeze_inputs(node, f"op {op_name(node)} is not understood by the channel analysis")
        return None

    def placeholder(self, node: fx.Node) -> Any:
        name = self.tr.param_name(node)
        shape = self.shape(node)
        if name is None or shape is None:
            return None  # user input or lifted constant: never pruned
        return ParamRef(name, tuple(range(len(shape))), shape)

    def output(self, node: fx.Node) -> None:
        for a in node.all_input_nodes:
            self.freeze(self.val(a), node, "model output (its channels are never pruned)")

    # -- shape-preserving ops ---------------------------------------------------------------
    def unary(self, node: fx.Node) -> Any:
        x = self.val(node.args[0]) if node.args else None
        if op_name(node) in ("clamp", "clamp_min", "clamp_max") and any(
                isinstance(a, fx.Node) for a in node.args[1:]):
            return self.unknown(node)
        return x

    def getitem(self, node: fx.Node) -> Any:
        src = self.val(node.args[0])
        if isinstance(src, list):
            return src[node.args[1]]
        return None

    def div(self, node: fx.Node) -> Any:
        """``x / scalar`` keeps channels; a tensor divisor is refused (masked zeros would give inf)."""
        if isinstance(node.args[1], fx.Node):
            return self.unknown(node)
        return self.val(node.args[0])

    def pow(self, node: fx.Node) -> Any:
        """``x ** p`` with a scalar ``p >= 0`` keeps channels (finite at the masked zeros)."""
        exp = node.args[1] if len(node.args) > 1 else None
        if isinstance(exp, (int, float)) and exp >= 0 and isinstance(node.args[0], fx.Node):
            return self.val(node.args[0])
        return self.unknown(node)

    def binary(self, node: fx.Node) -> Any:
        operands = [a for a in node.args if isinstance(a, fx.Node)]
        return self.merge(node, operands, self.shape(node))

    def merge(self, node: fx.Node, operands: Sequence[fx.Node], out_shape: Sequence[int],
              shapes: Optional[Sequence[Sequence[int]]] = None) -> Any:
        """Elementwise (broadcasting) combination: unions tracked positions, attaches parameters."""
        if out_shape is None:
            return self.unknown(node)
        shapes = shapes or [self.shape(a) for a in operands]
        nd = len(out_shape)
        tracked, others = [], []
        for a, shp in zip(operands, shapes):
            v, off = self.val(a), nd - len(shp)
            if isinstance(v, Info):
                if any(shp[d] == 1 and out_shape[d + off] != 1 for d in v.dims):
                    self.freeze(v, node, "a channel dim is broadcast against a larger one")
                    continue
                tracked.append(Info(tuple(d + off for d in v.dims), v.ids))
            else:
                others.append((v, shp, off))
        if not tracked:
            refs = [v for v, _, _ in others if isinstance(v, ParamRef)]
            if len(refs) == 1 and len(others) == 1 and tuple(shapes[0]) == tuple(out_shape):
                return refs[0]  # param (op) scalar keeps its mapping
            self.freeze(refs, node, "parameter combined with another tensor")
            return None
        dims = tracked[0].dims
        if any(t.dims != dims for t in tracked):
            self.freeze(tracked, node, "operands carry channels on different dims")
            return None
        for v, shp, off in others:
            if not self._merge_other(node, tracked, v, shp, off):
                return None
        for t in tracked[1:]:
            self.state.union(tracked[0].ids, t.ids)
        return tracked[0]

    def _merge_other(self, node: fx.Node, tracked: list[Info], v: Any, shp: Sequence[int], off: int) -> bool:
        varying = [d for d in tracked[0].dims if d - off >= 0 and shp[d - off] != 1]
        if not varying:
            return True
        if isinstance(v, ParamRef) and len(tracked[0].dims) == 1:
            d = varying[0]
            pd = v.pmap[d - off]
            if pd is not None and v.pshape[pd] == shp[d - off]:
                self.state.attach(v.name, pd, np.arange(shp[d - off]), tracked[0].ids)
                return True
        self.freeze(tracked, node, "combined with a tensor that varies along the channel dim untracked")
        self.freeze(v, node, "combined with channels in an unsupported way")
        return False

    def spatial(self, node: fx.Node) -> Any:
        x = self.val(node.args[0])
        if isinstance(x, Info) and x.dims != (1,):
            return self.unknown(node)
        if isinstance(x, ParamRef):
            return self.unknown(node)
        return [x, x] if op_name(node) in ("max_pool2d_with_indices", "adaptive_max_pool2d",
                                              "adaptive_max_pool1d") else x

    def pad(self, node: fx.Node) -> Any:
        x, pad = self.val(node.args[0]), list(arg(node, 1, "pad", []))
        shp = self.shape(node.args[0])
        if not isinstance(x, Info):
            return self.unknown(node) if isinstance(x, ParamRef) else None
        for i in range(0, len(pad), 2):
            d = len(shp) - 1 - i // 2
            if d in x.dims and (pad[i] or pad[i + 1]):
                return self.unknown(node)
        return x

    def reduce(self, node: fx.Node) -> Any:
        if len(node.args) > 1 and isinstance(node.args[1], fx.Node):
            return self.binary(node)  # torch.max(a, b) and friends are elementwise
        x = self.val(node.args[0])
        shp = self.shape(node.args[0])
        if not isinstance(x, Info):
            return self.unknown(node) if isinstance(x, ParamRef) else None
        dims = arg(node, 1, "dim", None)
        dims = list(range(len(shp))) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
        dims = [_dim(d, len(shp)) for d in dims]
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool)
                               else False)
        if set(dims) & set(x.dims):
            self.freeze(x, node, f"{op_name(node)} reduces over the channel dim")
            return None
        out = x if keep else ti.shift_dims(x, dims)
        return [out, out] if op_name(node) in ("max", "min", "var_mean") else out

    def softmax(self, node: fx.Node) -> Any:
        x = self.val(node.args[0])
        if isinstance(x, Info) and _dim(node.args[1], len(self.shape(node.args[0]))) in x.dims:
            self.freeze(x, node, f"{op_name(node)} mixes the channel dim")
            return None
        return self.unknown(node) if isinstance(x, ParamRef) else x

    # -- views ----------------------------------------------------------------------------
    def _view_result(self, node: fx.Node, x: Info, out: Optional[Info]) -> Optional[Info]:
        lost = np.setdiff1d(x.ids, out.ids if out is not None else np.empty(0, np.int64))
        if lost.size:
            self.state.freeze(lost, node.name, str(node.target), "view keeps no tracked dim for these channels")
        return out

    def reshape(self, node: fx.Node) -> Any:
        x, in_shape, out_shape = self.val(node.args[0]), self.shape(node.args[0]), self.shape(node)
        if isinstance(x, ParamRef):
            ref = ti.param_view(x, in_shape, out_shape)
            return ref if ref is not None else self.unknown(node)
        if not isinstance(x, Info):
            return None
        out = ti.reshape_info(x, in_shape, out_shape)
        if out is not None and x.ids.ndim > 1 and out.ids.ndim == 1 and not bool((np.diff(out.ids) > 0).all()):
            rules.tie_reordered(self, x.ids)  # view -> transpose -> reshape: a channel shuffle
        return self._view_result(node, x, out)

    def permute(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        if x is None:
            return None
        nd = len(shp)
        name = op_name(node)
        if name == "permute":
            order = [_dim(d, nd) for d in node.args[1]]
        elif name == "movedim":
            src, dst = _dim(node.args[1], nd), _dim(node.args[2], nd)
            order = [d for d in range(nd) if d != src]
            order.insert(dst, src)
        else:
            a, b = (0, 1) if name == "t" else (_dim(node.args[1], nd), _dim(node.args[2], nd))
            order = list(range(nd))
            order[a], order[b] = order[b], order[a]
        if isinstance(x, ParamRef):
            return ti.param_permute(x, order)
        return ti.permute_info(x, order)

    def expand(self, node: fx.Node) -> Any:
        x, in_shape, out_shape = self.val(node.args[0]), self.shape(node.args[0]), self.shape(node)
        if isinstance(x, ParamRef):
            return ti.param_expand(x, in_shape, out_shape)
        if not isinstance(x, Info):
            return None
        lead = (1,) * (len(out_shape) - len(in_shape))
        ids = np.broadcast_to(ti.full(x, in_shape).reshape(lead + tuple(in_shape)), out_shape)
        return self._view_result(node, x, ti.compress(np.ascontiguousarray(ids)))

    def repeat(self, node: fx.Node) -> Any:
        x, in_shape, reps = self.val(node.args[0]), self.shape(node.args[0]), list(node.args[1])
        if isinstance(x, ParamRef):
            return self.unknown(node)
        if not isinstance(x, Info):
            return None
        lead = (1,) * (len(reps) - len(in_shape))
        ids = np.tile(ti.full(x, in_shape).reshape(lead + tuple(in_shape)), reps)
        return self._view_result(node, x, ti.compress(ids))

    # -- cat / split ----------------------------------------------------------------------
    def cat(self, node: fx.Node) -> Any:
        parts = list(node.args[0])
        out_shape = self.shape(node)
        k = _dim(arg(node, 1, "dim", 0), len(out_shape))
        vals = [self.val(p) for p in parts]
        if not any(isinstance(v, Info) and k in v.dims for v in vals):
            shapes = [tuple(1 if d == k else s for d, s in enumerate(self.shape(p))) for p in parts]
            out = tuple(1 if d == k else s for d, s in enumerate(out_shape))
            return self.merge(node, parts, out, shapes)
        if not all(v is None or (isinstance(v, Info) and v.dims == (k,)) for v in vals):
            self.freeze(vals, node, "cat of tensors with channels on several dims")
            return None
        ids = [v.ids if isinstance(v, Info) else
               self.state.new_elements(self.shape(p)[k], node.name, frozen=True) for v, p in zip(vals, parts)]
        return Info((k,), np.concatenate(ids))

    def stack(self, node: fx.Node) -> Any:
        parts = list(node.args[0])
        out_shape = self.shape(node)
        k = _dim(arg(node, 1, "dim", 0), len(out_shape))
        in_shape = self.shape(parts[0])
        merged = self.merge(node, parts, in_shape)
        if not isinstance(merged, Info):
            return self.unknown(node) if merged is not None else None
        return Info(tuple(d + 1 if d >= k else d for d in merged.dims), merged.ids)

    def chunk(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        n, k = node.args[1], _dim(arg(node, 2, "dim", 0), len(shp))
        n_out = len(node.meta.get("val") or ()) or n
        if not isinstance(x, Info):
            return self.unknown(node) if isinstance(x, ParamRef) else [None] * n_out
        if k not in x.dims:
            return [x] * n_out
        if shp[k] % n:
            self.freeze(x, node, "chunk of a channel dim not divisible by the number of chunks")
            return ti.split_info(x, k, [int(t.shape[k]) for t in node.meta["val"]])
        pieces = ti.split_info(x, k, [shp[k] // n] * n)
        for p in pieces[1:]:
            self.state.union(pieces[0].ids, p.ids)  # chunks shrink evenly
        return pieces

    def split(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        k = _dim(arg(node, 2, "dim", 0), len(shp))
        sizes = [int(t.shape[k]) for t in node.meta["val"]]
        if isinstance(x, ParamRef):
            return self.unknown(node)
        if not isinstance(x, Info):
            return [None] * len(sizes)
        parts = ti.split_info(x, k, sizes)
        if k in x.dims:
            attr = self._sizes_attribute(node, sizes) if x.dims == (k,) else None
            held = self._sizes_scalars(node, sizes) if x.dims == (k,) and attr is None else None
            if attr is not None:  # sizes held by the module (MixNet's mixed conv): each segment pruned, the list updated
                path, name = attr
                for i, part in enumerate(parts):
                    self.update_attribute(path, f"{name}[{i}]", part.ids)
                    self.keep_one(part.ids)
            elif held is not None:
                self._split_by_scalars(node, x, parts, *held)
            else:
                self.freeze(x, node, "split sizes are constants in the model code")
        return parts

    def _int_attributes(self, node: fx.Node) -> tuple[str, list[tuple[str, int]]]:
        """(module path, its public int attributes) of the module running ``node`` (none: no module)."""
        path, mod = self.tr.module_of(node)
        if mod is None:
            return path, []
        return path, [(k, v) for k, v in vars(mod).items() if not k.startswith("_") and type(v) is int]

    def _sizes_scalars(self, node: fx.Node, sizes: list[int]
                       ) -> Optional[tuple[str, list[tuple[str, list[int]]]]]:
        """Split sizes held by int attributes of the module running ``node``: (module path,
        [(attribute, the segments whose channels it counts)]). Either every distinct size is the value
        of exactly one attribute (EfficientViT's ``[key_dim, key_dim, val_dim]``: the attribute counts
        one of the segments it sizes), or the segments are equal and one attribute holds their total
        (CSPNet's ``split(self.expand_chs // 2)``: it counts them all). Segments of one size are tied,
        so where several attributes hold one value all of them are updated alike. None when neither
        holds. A wrong guess (an attribute equal to a size by chance) cannot slip through: the graph's
        surgery proof runs the pruned model against the masked one and freezes the groups that break."""
        path, ints = self._int_attributes(node)
        if not ints or len(sizes) < 2:
            return None
        counts: dict[str, list[int]] = {}
        for i, size in enumerate(sizes):
            names = [k for k, v in ints if v == size]
            if not names:
                break
            for k in names:  # equal values (key_dim == val_dim): each counts one segment of that size
                counts.setdefault(k, [i])
        else:
            return path, list(counts.items())
        total = [k for k, v in ints if v == sum(sizes)]
        if len(set(sizes)) == 1 and len(total) == 1:
            return path, [(total[0], list(range(len(sizes))))]
        return None

    def _split_by_scalars(self, node: fx.Node, x: Info, parts: list[Info], path: str,
                          held: list[tuple[str, list[int]]]) -> None:
        """Segments of one size shrink together (tied position by position); each attribute is
        updated to the kept count of the segments it counts."""
        first_of_size: dict[int, Info] = {}
        for p in parts:
            first = first_of_size.setdefault(len(p.ids), p)
            if first is not p:
                self.state.union(first.ids, p.ids)
        for attr, counted in held:
            if not self.update_attribute(path, attr, np.concatenate([parts[i].ids for i in counted])):
                self.freeze(x, node, f"split sizes held by {path or 'the model'}.{attr}, which another "
                                     "use sizes differently")
                return
        for p in parts:
            self.keep_one(p.ids)

    def _sizes_attribute(self, node: fx.Node, sizes: list[int]) -> Optional[tuple[str, str]]:
        """(module path, attribute) of the one list attribute of the module running ``node`` that
        holds exactly ``sizes``; None when there is none or several."""
        path, mod = self.tr.module_of(node)
        if mod is None or len(sizes) < 2:
            return None
        found = [k for k, v in vars(mod).items() if not k.startswith("_") and isinstance(v, (list, tuple))
                 and len(v) == len(sizes) and all(type(e) is int for e in v) and list(v) == sizes]
        return (path, found[0]) if len(found) == 1 else None

    def unbind(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        k = _dim(arg(node, 1, "dim", 0), len(shp))
        if isinstance(x, ParamRef):
            return self.unknown(node)
        if not isinstance(x, Info):
            return [None] * shp[k]
        if k in x.dims:
            self.state.not_channel_dim.append((node.name, node.args[0].name, k))
        return [ti.take_info(x, k, i) for i in range(shp[k])]

    def slice(self, node: fx.Node) -> Any:
        x, shp, out = self.val(node.args[0]), self.shape(node.args[0]), self.shape(node)
        if isinstance(x, ParamRef):
            return self.unknown(node)
        if not isinstance(x, Info):
            return None
        k = _dim(arg(node, 1, "dim", 0), len(shp))
        if k not in x.dims or tuple(shp) == tuple(out):
            return x
        if op_name(node) == "narrow":
            start, stop, step = node.args[2], node.args[2] + node.args[3], 1
        else:
            start, stop, step = (arg(node, 2, "start", 0) or 0, arg(node, 3, "end", None), arg(node, 4, "step", 1))
            start, stop, step = slice(start, stop, step).indices(shp[k])
        if not self._slice_at_attribute(node, x, k, shp[k], start, stop, step):
            self.freeze(x, node, "slice bounds are constants in the model code")
        ax = x.dims.index(k)
        return Info(x.dims, np.ascontiguousarray(x.ids.take(range(start, stop, step), axis=ax)))

    def _slice_at_attribute(self, node: fx.Node, x: Info, k: int, size: int, start: int, stop: int,
                            step: int) -> bool:
        """``x[:, :b]`` or ``x[:, b:]`` with ``b`` an int attribute of the module running the slice
        (ReXNet's partial residual ``cat([x[:, 0:self.in_channels] + shortcut, x[:, self.in_channels:]])``):
        a split at ``b``, each side pruned, every attribute holding ``b`` updated to the kept count
        before it. False (the caller freezes) for any other slice. As for split sizes, an attribute
        equal to ``b`` by chance is caught by the graph's surgery proof."""
        if x.dims != (k,) or step != 1 or (start == 0) == (stop == size):
            return False
        b = stop if start == 0 else start
        path, ints = self._int_attributes(node)
        names = [a for a, v in ints if v == b]
        if not names or not all(self.update_attribute(path, a, x.ids[:b]) for a in names):
            return False
        self.keep_one(x.ids[:b])
        self.keep_one(x.ids[b:])
        return True

    def select(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        if isinstance(x, ParamRef):
            return self.unknown(node)
        if not isinstance(x, Info):
            return None
        k = _dim(node.args[1], len(shp))
        if k in x.dims:
            self.freeze(x, node, "select picks one channel by a constant index")
        return ti.take_info(x, k, node.args[2] % shp[k])

    # -- norms ----------------------------------------------------------------------------
    def _params(self, node: fx.Node, idx: Sequence[int]) -> Optional[list[Optional[str]]]:
        names = []
        for i in idx:
            a = node.args[i] if len(node.args) > i else None
            if a is None:
                names.append(None)
            elif isinstance(a, fx.Node) and self.tr.param_name(a):
                names.append(self.tr.param_name(a))
            else:
                return None
        return names

    def batch_norm(self, node: fx.Node) -> Any:
        x = self.val(node.args[0])
        tuple_out = op_name(node).startswith("_native")
        params = self._params(node, [1, 2, 3, 4])
        if isinstance(x, Info) and (x.dims != (1,) or params is None):
            return self.unknown(node)
        if isinstance(x, Info):
            for p in params:
                if p is not None:
                    self.state.attach(p, 0, np.arange(len(x.ids)), x.ids)
        elif isinstance(x, ParamRef):
            return self.unknown(node)
        return [x, None, None] if tuple_out else x

    def layer_norm(self, node: fx.Node) -> Any:
        """LayerNorm (or RMSNorm) over the channel dim (ViT / ConvNeXt residual streams): prunable when
        an ``nn.LayerNorm`` (or a subclass, e.g. a ``LayerNorm2d`` that permutes inside) runs it. Its
        affine parameters go with the channels and its statistics are masked at run time
        (``graph/masked_norm.py``: mean and variance over the kept channels only), so the masked
        model equals the pruned one. Anything else normalising over channels freezes them."""
        x, shp = self.val(node.args[0]), self.shape(node.args[0])
        if isinstance(x, ParamRef):
            return self.unknown(node)
        nshape = tuple(int(n) for n in node.args[1])
        first = len(shp) - len(nshape)
        if not isinstance(x, Info) or not set(range(first, len(shp))) & set(x.dims):
            return x
        why = self._unmaskable_norm(node, x, first, nshape)
        if why:
            self.freeze(x, node, f"{op_name(node)} normalizes over the channel dim and {why}, so its "
                                 "statistics cannot be masked (the masked and the pruned model would differ)")
            return None
        path, _ = self.module_of(node)
        axis = x.dims[0] - first
        for p in self._params(node, self._norm_params(node)) or []:
            if p is not None:
                self.state.attach(p, axis, np.arange(len(x.ids)), x.ids)
        self.state.norm_stats.append(NormStats(path, nshape, axis, x.ids.copy()))
        return x

    def _unmaskable_norm(self, node: fx.Node, x: Info, first: int, nshape: tuple[int, ...]) -> str:
        """Why this layer_norm's statistics cannot be masked ("" when they can)."""
        path, mod = self.module_of(node)
        module_type = nn.RMSNorm if op_name(node) == "rms_norm" else nn.LayerNorm
        if len(x.dims) != 1 or x.dims[0] < first:
            return "its channels are spread over several dims"
        if not isinstance(mod, module_type):
            return (f"no {module_type.__name__} module runs it "
                    f"({type(mod).__name__ if mod is not None else 'a function'} does)")
        if tuple(mod.normalized_shape) != nshape:
            return f"it normalizes {nshape}, not its module's normalized_shape {tuple(mod.normalized_shape)}"
        if self._params(node, self._norm_params(node)) is None:
            return "its weight or bias is not a parameter of the model"
        if self._layer_norms_under(path) != 1:
            return f"module {path} runs {self._layer_norms_under(path)} layer norms"
        return ""

    @staticmethod
    def _norm_params(node: fx.Node) -> list[int]:
        """Argument positions of the affine parameters: layer_norm (x, shape, weight, bias, eps),
        rms_norm (x, shape, weight, eps)."""
        return [2] if op_name(node) == "rms_norm" else [2, 3]

    def _layer_norms_under(self, path: str) -> int:
        """How many layer_norm nodes ``path`` (or a module inside it) runs."""
        if not hasattr(self, "_ln_count"):
            self._ln_count: dict[str, int] = {}
            for n in self.tr.graph.nodes:
                if n.op == "call_function" and op_name(n) in ops.LAYER_NORM:
                    for p in {p for p, _ in self.tr.modules_of(n)}:
                        self._ln_count[p] = self._ln_count.get(p, 0) + 1
        return self._ln_count.get(path, 0)

    def group_norm(self, node: fx.Node) -> Any:
        x = self.val(node.args[0])
        groups = node.args[1]
        params = self._params(node, [2, 3])
        if not isinstance(x, Info):
            return self.unknown(node) if isinstance(x, ParamRef) else None
        path, mod = self.tr.module_of(node)
        if x.dims != (1,) or params is None or not isinstance(mod, nn.GroupNorm):
            return self.unknown(node)
        per = x.ids.reshape(groups, -1)  # (G, C/G): a whole norm group is one class
        for row in per:
            self.state.union_all(row)
        for p in params:
            if p is not None:
                self.state.attach(p, 0, np.arange(len(x.ids)), x.ids)
        self.state.attr_fixes.append(AttrFix(path, "num_groups", per[:, 0].copy()))
        return x

    # -- producers (in producers.py / attention.py) ---------------------------------------
    def conv(self, node: fx.Node) -> Any:
        if op_name(node) in ("convolution", "_convolution"):
            if node.args[6]:
                return producers.conv_transpose(self, node, node.args[8])
            return producers.conv(self, node, node.args[8])
        return producers.conv(self, node, arg(node, 6, "groups", 1))

    def conv_transpose(self, node: fx.Node) -> Any:
        return producers.conv_transpose(self, node, arg(node, 6, "groups", 1))

    def linear(self, node: fx.Node) -> Any:
        return producers.linear(self, node)

    def embedding(self, node: fx.Node) -> Any:
        return producers.embedding(self, node)

    def matmul(self, node: fx.Node) -> Any:
        return producers.matmul(self, node)

    def sdpa(self, node: fx.Node) -> Any:
        return sdpa_handler(self, node)
