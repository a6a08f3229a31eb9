"""Multi-head attention: whole heads are units.

``F.scaled_dot_product_attention(q, k, v)`` with q, k, v of shape (B, H, N, hd): every element
of head ``h`` in q, k and v is unioned into one class, so removing head ``h`` removes its q/k/v
rows of the projection(s) that made them and, through the output (B, H, N, hd) -> (B, N, H*hd),
the matching ``hd`` input columns of the output projection. The module running the op must have
``num_heads == H``; it is decremented by surgery (an :class:`AttrFix`), and so is any integer
attribute holding ``H * hd`` (timm's ``attn_dim``, used to reshape the heads' output). Example, 2
heads of 4::

    qkv = Linear(8, 24) -> reshape (B, N, 3, 2, 4) -> permute -> unbind -> sdpa
    classes: {qkv rows 0-3, 8-11, 16-19} (head 0), {4-7, 12-15, 20-23} (head 1)
"""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import fx

from . import tensor_info as ti
from .channels import AttrFix
from .tensor_info import Info, ParamRef


def _heads(info: Info, shape: tuple[int, ...]) -> np.ndarray:
    """(H, hd) element ids of a (..., H, N, hd) tensor."""
    ids = ti.full(info, shape)
    index = tuple(slice(None) if d in (len(shape) - 3, len(shape) - 1) else 0 for d in range(len(shape)))
    return ids[index]


def sdpa_handler(walk, node: fx.Node) -> Any:
    qkv = node.args[:3]
    vals = [walk.val(t) for t in qkv]
    if not any(isinstance(v, Info) for v in vals):
        return walk.unknown(node) if any(isinstance(v, ParamRef) for v in vals) else None
    shapes = [walk.tr.shape(t) for t in qkv]
    nd = len(shapes[0])
    heads = shapes[0][nd - 3]
    path, mod = walk.tr.module_of(node)
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    mshape = walk.tr.shape(mask) if isinstance(mask, fx.Node) else None
    problem = None
    if not all(isinstance(v, Info) for v in vals):
        problem = "q, k and v are not all made of prunable channels"
    elif any(not set(v.dims) <= {nd - 3, nd - 1} for v in vals):
        problem = "q, k or v carry channels on the batch or token dim"
    elif any(len(s) != nd or s[nd - 3] != heads for s in shapes) or node.kwargs.get("enable_gqa"):
        problem = "q, k and v have different head counts"
    elif mshape is not None and len(mshape) >= 3 and mshape[len(mshape) - 3] != 1:
        problem = "attention mask varies per head"
    elif mod is None or getattr(mod, "num_heads", None) != heads:
        problem = f"module {path!r} has no attribute num_heads == {heads}"
    if problem:
        walk.freeze(vals, node, problem)
        return None
    per_head = [_heads(v, s) for v, s in zip(vals, shapes)]  # each (H, hd)
    for h in range(heads):
        walk.state.union_all(np.concatenate([p[h] for p in per_head]))
    walk.state.attr_fixes.append(AttrFix(path, "num_heads", per_head[0][:, 0].copy()))
    for attr in _derived_widths(mod, heads, shapes[2][nd - 1]):  # e.g. timm's attn_dim = num_heads * head_dim
        walk.state.attr_fixes.append(AttrFix(path, attr, np.repeat(per_head[2][:, 0], shapes[2][nd - 1])))
    return vals[2]


def _derived_widths(mod: Any, heads: int, head_dim: int) -> list[str]:
    """Integer attributes of the attention module that hold ``num_heads * head_dim`` (the width the
    module reshapes its output to, stored at construction): they shrink with the kept heads."""
    width = heads * head_dim
    if heads < 2 or head_dim < 2:  # too small a product to tell a derived width from a coincidence
        return []
    return [k for k, v in vars(mod).items() if not k.startswith("_") and k != "num_heads"
            and type(v) is int and v == width]
