"""Trace a real forward run into :class:`OpRecord` s with a ``TorchDispatchMode``.

One eval-mode forward under ``no_grad`` (tens of milliseconds for ResNet-56, against seconds
for ``torch.export``): every ATen op the model runs is recorded with tensor ids, shapes,
which inputs are parameters, and the module that ran it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import TraceError
from .ops import OpRecord, TensorMeta, base_name, fold_linear_bias

_INT_ARGS = {"convolution": {8: "groups", 6: "transposed", 3: "stride"},
             "_convolution": {8: "groups", 6: "transposed", 3: "stride"},
             "conv1d": {6: "groups", 3: "stride"}, "conv2d": {6: "groups", 3: "stride"},
             "conv3d": {6: "groups", 3: "stride"},
             "conv_transpose1d": {6: "groups"}, "conv_transpose2d": {6: "groups"}, "conv_transpose3d": {6: "groups"},
             "transpose": {1: "dim0", 2: "dim1"}, "swapaxes": {1: "dim0", 2: "dim1"},
             "swapdims": {1: "dim0", 2: "dim1"}, "permute": {1: "dims"}}


def op_int_args(op: str, args: Sequence[Any]) -> dict[str, Any]:
    """The integer arguments the cost model needs (conv groups, transposed, stride; the dims a layout
    permutation moves), by position."""
    out: dict[str, Any] = {}
    for pos, key in _INT_ARGS.get(op, {}).items():
        if pos < len(args) and isinstance(args[pos], (int, bool)):
            out[key] = int(args[pos])
        elif pos < len(args) and isinstance(args[pos], (list, tuple)) and all(isinstance(d, int) for d in args[pos]):
            out[key] = tuple(int(d) for d in args[pos])
    if op.startswith("conv_transpose"):
        out["transposed"] = 1
    return out


class _Recorder(TorchDispatchMode):
    def __init__(self, param_names: dict[int, str], module_stack: list[str]):
        super().__init__()
        self.records: list[OpRecord] = []
        self._params = param_names  # storage data_ptr -> parameter name
        self._stack = module_stack
        self._ids: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []  # keep traced tensors alive so id() stays unique

    def _meta(self, t: torch.Tensor) -> TensorMeta:
        key = id(t)
        if key not in self._ids:
            self._ids[key] = f"t{len(self._ids)}"
            self._alive.append(t)
        param = None
        if t.device.type != "meta" and t.untyped_storage().nbytes() > 0:
            param = self._params.get(t.untyped_storage().data_ptr())
        return TensorMeta(self._ids[key], tuple(t.shape), param)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat_in, _ = tree_flatten((args, kwargs or {}))
        flat_out, _ = tree_flatten(out)
        name = base_name(func)
        self.records.append(OpRecord(
            op=name,
            module=self._stack[-1] if self._stack else "",
            inputs=tuple(self._meta(t) for t in flat_in if isinstance(t, torch.Tensor)),
            outputs=tuple(self._meta(t) for t in flat_out if isinstance(t, torch.Tensor)),
            args=op_int_args(name, args),
        ))
        return out


@contextlib.contextmanager
def _module_names(model: nn.Module, stack: list[str]) -> Iterator[None]:
    def enter(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            stack.append(name)
        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(name)))
        handles.append(mod.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, restoring each submodule's flag after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, f in flags.items():
            m.training = f


def trace_ops(model: nn.Module, example_inputs: tuple[Any, ...] | torch.Tensor) -> list[OpRecord]:
    """Run ``model`` once in eval mode and return every ATen op it executed, in order."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    params = {t.untyped_storage().data_ptr(): n for n, t in
              [*model.named_parameters(), *model.named_buffers()] if t.numel() > 0}
    stack: list[str] = []
    recorder = _Recorder(params, stack)
    try:
        with eval_mode(model), torch.no_grad(), _module_names(model, stack), recorder:
            model(*example_inputs)
    except Exception as e:  # the user's model failed on the given input: say so, keep the cause
        shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]
        raise TraceError(f"model {type(model).__name__} failed on example inputs of shape {shapes}: {e}") from e
    return fold_linear_bias(recorder.records)
