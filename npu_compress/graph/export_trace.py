"""Export a model with ``torch.export`` and answer the questions the analysis asks of a node.

The graph is the pre-dispatch ATen graph (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``
...): no decompositions, which keeps export fast and the ops close to the modules. Region wrappers
that export puts around ``torch.autocast(...)`` and ``torch.set_grad_enabled(...)`` blocks are
inlined, so the ops inside are analysed and costed one by one, as the real run executes them.

Example::

    >>> tr = Trace.export(nn.Sequential(nn.Conv2d(3, 8, 3)), (torch.randn(1, 3, 8, 8),))
    >>> [tr.param_name(n) for n in tr.graph.nodes if n.op == "placeholder"][:2]
    ['0.weight', '0.bias']
"""
from __future__ import annotations

import logging
import operator
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


# torch.export's region wrappers (higher-order ops) -> position of their subgraph argument;
# the operands follow it
_WRAPPERS = {"wrap_with_autocast": 4, "wrap_with_set_grad_enabled": 1}


def _wrapper_subgraph(node: fx.Node) -> Optional[int]:
    if node.op != "call_function":
        return None
    return _WRAPPERS.get(getattr(node.target, "__name__", ""))


def inline_wrappers(gm: fx.GraphModule) -> int:
    """Replace every region wrapper in ``gm`` by the ops of its subgraph (nested ones too); returns
    how many were inlined. Shapes and module paths (``node.meta``) travel with the copied nodes."""
    count = 0
    while True:
        node = next((n for n in gm.graph.nodes if _wrapper_subgraph(n) is not None), None)
        if node is None:
            break
        pos = _wrapper_subgraph(node)
        holder = node.args[pos]
        sub: fx.GraphModule = getattr(gm, holder.target)
        env: dict[fx.Node, Any] = dict(zip([n for n in sub.graph.nodes if n.op == "placeholder"], node.args[pos + 1:]))
        results: Any = ()
        with gm.graph.inserting_before(node):
            for s in sub.graph.nodes:
                if s.op == "placeholder":
                    continue
                if s.op == "output":
                    results = s.args[0]
                elif s.op == "get_attr":  # a nested wrapper's subgraph: lift it onto the parent
                    name = f"{holder.target}_{s.target}"
                    setattr(gm, name, getattr(sub, s.target))
                    env[s] = gm.graph.get_attr(name)
                else:
                    env[s] = gm.graph.node_copy(s, lambda a: env[a])
        results = results if isinstance(results, (tuple, list)) else (results,)
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem:
                out = results[user.args[1]]
                user.replace_all_uses_with(env.get(out, out) if isinstance(out, fx.Node) else out)
                gm.graph.erase_node(user)
        if node.users:  # the wrapper's tuple is used as a whole: keep it as is (analysis will freeze it)
            log.debug("region wrapper %s kept: its result is used as a tuple", node.name)
            break
        gm.graph.erase_node(node)
        if not holder.users:
            gm.graph.erase_node(holder)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


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
        inline_wrappers(ep.graph_module)
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

    def modules_of(self, node: fx.Node) -> list[tuple[str, Optional[nn.Module]]]:
        """Every module that ran ``node``, innermost first: (path, instance or None)."""
        out = []
        for path, _ in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
            path = path.replace("L['self'].", "").replace("L__self__.", "")
            try:
                out.append((path, self.model.get_submodule(path)))
            except AttributeError:
                out.append((path, None))
        return out

    def module_of(self, node: fx.Node) -> tuple[str, Optional[nn.Module]]:
        """The innermost module that ran ``node``: (path, instance or None)."""
        stack = self.modules_of(node)
        return stack[0] if stack else ("", None)
