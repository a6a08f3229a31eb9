"""Handlers of the ops that create channels: conv, transposed conv, linear, embedding, matmul.

A producer makes fresh elements for its output channels and attaches its weight rows and bias
to them; its input channels attach to the weight's input columns. Example, ``conv2d`` with
weight (16, 8, 3, 3) on an input carrying elements ``e[0..7]``::

    attach("conv.weight", 1, idx=[0..7], elem=e)      # input columns
    out = new_elements(16); attach("conv.weight", 0, [0..15], out); attach("conv.bias", 0, ...)

A depthwise conv creates no elements: its output channel ``i*m + j`` is input channel ``i``.
A grouped conv removes the same offset in every group (channels leave evenly per group).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
from torch import fx, nn

from .channels import AttrFix
from .tensor_info import Info, ParamRef


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _weights(walk, node: fx.Node, wi: int = 1, bi: int = 2) -> Optional[tuple[str, Optional[str]]]:
    w_node, b_node = _arg(node, wi, "weight"), _arg(node, bi, "bias")
    w = walk.tr.param_name(w_node)
    b = walk.tr.param_name(b_node) if b_node is not None else None
    if w is None or (b_node is not None and b is None):
        return None
    return w, b


def _attach_out(walk, w: str, b: Optional[str], dim: int, out: np.ndarray) -> None:
    walk.state.attach(w, dim, np.arange(len(out)), out)
    if b is not None:
        walk.state.attach(b, 0, np.arange(len(out)), out)


def _conv_module(walk, w: str) -> tuple[str, Optional[nn.Module]]:
    path = w.rsplit(".", 1)[0] if "." in w else ""
    try:
        mod = walk.tr.model.get_submodule(path)
    except AttributeError:
        return path, None
    ok = isinstance(mod, nn.modules.conv._ConvNd) and w == (f"{path}.weight" if path else "weight")
    return path, mod if ok else None


def conv(walk, node: fx.Node, groups: int) -> Any:
    names = _weights(walk, node)
    x = walk.val(node.args[0])
    if names is None or isinstance(x, ParamRef):
        return walk.unknown(node)
    w, b = names
    cout, cpg = walk.tr.shape(node.args[1])[:2]
    if isinstance(x, Info) and x.dims != (1,):
        walk.freeze(x, node, "conv input carries channels on a non-channel dim")
        x = None
    st = walk.state
    if groups > 1 and cpg == 1:  # depthwise (channel multiplier cout // groups)
        if x is None:
            return None
        path, mod = _conv_module(walk, w)
        if mod is None:
            walk.freeze(x, node, "depthwise conv outside an nn.Conv module: its groups cannot be updated")
            return None
        out = np.repeat(x.ids, cout // groups)
        _attach_out(walk, w, b, 0, out)
        st.attr_fixes.append(AttrFix(path, "groups", x.ids.copy()))
        return Info((1,), out)
    if x is not None:
        cols = x.ids.reshape(groups, cpg)
        for g in range(1, groups):
            st.union(cols[0], cols[g])
        st.attach(w, 1, np.arange(len(x.ids)) % cpg, x.ids)
    out = st.new_elements(cout, node.name)
    rows = out.reshape(groups, -1)
    for g in range(1, groups):
        st.union(rows[0], rows[g])
    _attach_out(walk, w, b, 0, out)
    return Info((1,), out)


def conv_transpose(walk, node: fx.Node, groups: int) -> Any:
    names = _weights(walk, node)
    x = walk.val(node.args[0])
    if names is None or groups != 1 or isinstance(x, ParamRef):
        return walk.unknown(node)
    w, b = names
    if isinstance(x, Info):
        if x.dims != (1,):
            return walk.unknown(node)
        walk.state.attach(w, 0, np.arange(len(x.ids)), x.ids)
    out = walk.state.new_elements(walk.tr.shape(node.args[1])[1], node.name)
    _attach_out(walk, w, b, 1, out)
    return Info((1,), out)


def linear(walk, node: fx.Node) -> Any:
    names = _weights(walk, node)
    x = walk.val(node.args[0])
    if names is None or isinstance(x, ParamRef):
        return walk.unknown(node)
    w, b = names
    last = len(walk.tr.shape(node.args[0])) - 1
    if isinstance(x, Info):
        if x.dims == (last,):
            walk.state.attach(w, 1, np.arange(len(x.ids)), x.ids)
        elif last in x.dims:
            walk.freeze(x, node, "linear input carries channels on several dims")
        else:
            return x  # channels on leading dims pass through; this layer's outputs stay fixed
    out = walk.state.new_elements(walk.tr.shape(node.args[1])[0], node.name)
    _attach_out(walk, w, b, 0, out)
    return Info((len(walk.tr.shape(node)) - 1,), out)


def embedding(walk, node: fx.Node) -> Any:
    w = walk.tr.param_name(node.args[0])
    if w is None:
        return walk.unknown(node)
    out = walk.state.new_elements(walk.tr.shape(node.args[0])[1], node.name)
    walk.state.attach(w, 1, np.arange(len(out)), out)
    return Info((len(walk.tr.shape(node)) - 1,), out)


def matmul(walk, node: fx.Node) -> Any:
    """Rows of ``a`` or columns of ``b`` pass through. A contracted dim tracked in both operands
    (``q^T @ k`` over an attention's key channels) ties channel j of ``a`` to channel j of ``b``:
    removing both removes one term of every sum, exactly what zeroing them does. Any other tracked
    contracted or mixed dim is frozen."""
    a, b = walk.val(node.args[0]), walk.val(node.args[1])
    sa, sb, so = walk.tr.shape(node.args[0]), walk.tr.shape(node.args[1]), walk.tr.shape(node)
    for ref in (a, b):
        if isinstance(ref, ParamRef):  # a parameter used as a plain matrix: must keep its shape
            walk.freeze(ref, node, "parameter used as a matmul operand")
    a = a if isinstance(a, Info) else None
    b = b if isinstance(b, Info) else None
    if a is None and b is None:
        return None
    if len(sa) >= 2 and len(sb) >= 2:
        if b is None and a.dims == (len(sa) - 2,):
            return Info((len(so) - 2,), a.ids)
        if a is None and b.dims == (len(sb) - 1,):
            return Info((len(so) - 1,), b.ids)
        if a is not None and b is not None and a.dims == (len(sa) - 1,) and b.dims == (len(sb) - 2,):
            walk.state.union(a.ids, b.ids)
            return None  # the output's dims are rows of a and columns of b: no channels left
    walk.freeze([a, b], node, "matmul contracts or mixes channel dims")
    return None
