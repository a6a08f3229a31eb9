"""Op records from a ``torch.export`` program, so the pruning graph costs what ``estimate`` costs.

Tensor ids are fx node names (``conv2d_3``); an op with several outputs (``split``) gives ids
``split.0, split.1, ...`` that its ``getitem`` users read. ``shapes`` overrides node shapes, which
is how a pruned keep-set is costed without building the pruned model.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.export import ExportedProgram

from .dispatch_trace import op_int_args
from .ops import PERMUTE, RESHAPE, SPLIT, OpRecord, TensorMeta, base_name, fold_linear_bias

# views of a parameter are that parameter (as at the dispatch level, where they share its storage)
_PARAM_VIEWS = RESHAPE | PERMUTE | SPLIT | {"expand", "alias", "detach"}


def _shape(val: Any) -> tuple[int, ...] | None:
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def records_from_exported(ep: ExportedProgram,
                          shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[OpRecord]:
    """One record per ``call_function`` node, in graph order. ``shapes`` replaces shapes by node id."""
    sig = ep.graph_signature
    param_of: dict[str, str] = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    shapes = shapes or {}

    def meta(node: torch.fx.Node, index: int | None = None) -> TensorMeta | None:
        tid = node.name if index is None else f"{node.name}.{index}"
        val = node.meta.get("val")
        if index is not None and isinstance(val, (tuple, list)):
            val = val[index]
        shape = shapes.get(tid) or _shape(val)
        return None if shape is None else TensorMeta(tid, shape, param_of.get(node.name))

    records: list[OpRecord] = []
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        name = base_name(node.target)
        first = node.args[0] if node.args else None
        if name in _PARAM_VIEWS and isinstance(first, torch.fx.Node) and first.name in param_of:
            param_of[node.name] = param_of[first.name]
        if name == "getitem":
            src, idx = node.args[0], node.args[1]
            ins = [meta(src, idx)] if isinstance(src, torch.fx.Node) else []
        else:
            flat, _ = torch.utils._pytree.tree_flatten((node.args, node.kwargs))
            ins = [meta(a) for a in flat if isinstance(a, torch.fx.Node)]
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            outs = [meta(node, i) for i in range(len(val))]
        else:
            outs = [meta(node)]
        records.append(OpRecord(op=name, module=_module_path(node),
                                inputs=tuple(t for t in ins if t is not None),
                                outputs=tuple(t for t in outs if t is not None),
                                args=op_int_args(name, node.args)))
    return fold_linear_bias(records)
