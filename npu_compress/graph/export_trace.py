"""Export a model with ``torch.export`` and answer the questions the analysis asks of a node.

The graph is the pre-dispatch ATen graph (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``
...): no decompositions, which keeps export fast and the ops close to the modules.

Example::

    >>> tr = Trace.export(nn.Sequential(nn.Conv2d(3, 8, 3)), (torch.randn(1, 3, 8, 8),))
    >>> [tr.param_name(n) for n in tr.graph.nodes if n.op == "placeholder"][:2]
    ['0.weight', '0.bias']
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from ..errors import TraceError

log = logging.getLogger(__name__)


def as_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TraceError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")
    return example_inputs


@dataclass
class Trace:
    """An ExportedProgram plus lookups: placeholder -> state_dict key, node -> module, shapes."""

    exported: Any  # torch.export.ExportedProgram
    model: nn.Module
    params: dict[str, str]  # placeholder name -> parameter / buffer key
    constants: set[str]  # placeholders that are lifted constants (not sliceable)

    @classmethod
    def export(cls, model: nn.Module, example_inputs: Any) -> "Trace":
        inputs = as_tuple(example_inputs)
        was_training = model.training
        model.eval()
        try:
            ep = torch.export.export(model, inputs, strict=False)
        except Exception as exc:  # torch raises many types here; report one
            raise TraceError(f"torch.export failed on {type(model).__name__}: {exc}") from exc
        finally:
            model.train(was_training)
        sig = ep.graph_signature
        params = dict(sig.inputs_to_parameters)
        params.update(sig.inputs_to_buffers)
        constants = set(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
        return cls(ep, model, params, constants)

    @property
    def graph(self) -> fx.Graph:
        return self.exported.graph

    def param_name(self, node: Any) -> Optional[str]:
        """The state_dict key of a parameter / buffer placeholder, else None."""
        if isinstance(node, fx.Node) and node.op == "placeholder":
            return self.params.get(node.name)
        return None

    @staticmethod
    def shape(node: Any) -> Optional[tuple[int, ...]]:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def module_of(self, node: fx.Node) -> tuple[str, Optional[nn.Module]]:
        """The innermost module that ran ``node``: (path, instance or None)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return "", None
        path = list(stack.values())[-1][0]
        path = path.replace("L['self'].", "").replace("L__self__.", "")
        try:
            return path, self.model.get_submodule(path)
        except AttributeError:
            return path, None
