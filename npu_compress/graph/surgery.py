"""Physical removal of pruned channel units: a smaller deep copy of the model.

Every parameter / buffer slice of a removed unit is cut out with ``index_select``; then the module
attributes that describe shapes are fixed so the copy runs, trains, exports and round-trips its
state_dict: ``Conv.in_channels/out_channels/groups``, ``Linear.in_features/out_features``,
``BatchNorm.num_features``, ``LayerNorm.normalized_shape`` (and RMSNorm's), ``GroupNorm.num_groups/num_channels``,
``Embedding.embedding_dim`` and an attention module's ``num_heads``. Example::

    >>> small = remove_pruned(model, g, keep)       # model itself is untouched
    >>> small.conv1.out_channels, small.conv1.weight.shape[0]
    (8, 8)

The copy is run once on the graph's example inputs; if the model's code hardcodes a shape that
pruning changed, that run fails and a TraceError says so instead of returning a broken model.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import TraceError
from . import masked_norm
from .masks import get_tensor
from .pruning_graph import PruningGraph
from .types import PruningGraphError, Structure

log = logging.getLogger(__name__)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path)
    if attr in mod._parameters:
        old = mod._parameters[attr]
        mod._parameters[attr] = nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad)
    else:
        mod._buffers[attr] = value.detach().clone()


def _fix_module(mod: nn.Module, fixed: dict[str, int]) -> None:
    for attr, value in fixed.items():
        name, _, index = attr.partition("[")
        if index:  # one entry of a list attribute: splits[1]
            entries = list(getattr(mod, name))
            entries[int(index.rstrip("]"))] = value
            old = getattr(mod, name)
            setattr(mod, name, type(old)(entries) if isinstance(old, tuple) else entries)
        else:
            setattr(mod, attr, value)
    if isinstance(mod, nn.modules.conv._ConvNd):
        w = mod.weight.shape
        if mod.transposed:
            mod.in_channels, mod.out_channels = w[0], w[1] * mod.groups
        else:
            mod.out_channels, mod.in_channels = w[0], w[1] * mod.groups
    elif isinstance(mod, nn.Linear):
        mod.out_features, mod.in_features = mod.weight.shape
    elif isinstance(mod, (nn.modules.batchnorm._NormBase,)):
        ref = mod.weight if mod.weight is not None else mod.running_mean
        if ref is not None:
            mod.num_features = ref.shape[0]
    elif isinstance(mod, (nn.LayerNorm, nn.RMSNorm)) and mod.weight is not None:
        mod.normalized_shape = tuple(mod.weight.shape)
    elif isinstance(mod, nn.GroupNorm) and mod.weight is not None:
        mod.num_channels = mod.weight.shape[0]
    elif isinstance(mod, nn.Embedding):
        mod.embedding_dim = mod.weight.shape[1]


def remove_pruned(model: nn.Module, graph: PruningGraph, keep: Any) -> nn.Module:
    """A deep copy of ``model`` without the channels of units where ``keep`` is false."""
    return pruned_and_outputs(model, graph, keep)[0]


def pruned_and_outputs(model: nn.Module, graph: PruningGraph, keep: Any) -> tuple[nn.Module, list[torch.Tensor]]:
    """``remove_pruned`` and the tensors its check run gave on ``graph.example_inputs`` (eval mode)."""
    if graph.structure is not Structure.CHANNEL:
        raise PruningGraphError(f"remove_pruned is for channel units; {graph.structure.value} units keep their "
                                "shapes (zeroed with apply_masks, packed at export)")
    keep = graph.check_keep(keep)
    removed: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (param, dim), (idx, unit) in graph._channel.tables.items():
        drop = idx[~keep[unit]]
        if drop.numel():
            removed.setdefault(param, []).append((dim, drop))
    small = copy.deepcopy(model)
    touched: dict[str, dict[str, int]] = {}
    with torch.no_grad():
        for param, cuts in removed.items():
            t = get_tensor(small, param)
            if tuple(t.shape) != graph.param_shapes[param]:
                raise PruningGraphError(f"{param} has shape {tuple(t.shape)}, the graph was built for "
                                        f"{graph.param_shapes[param]}")
            for dim, drop in cuts:
                kept = np.setdiff1d(np.arange(t.shape[dim]), drop.numpy())
                t = t.index_select(dim, torch.as_tensor(kept, device=t.device))
            _set_tensor(small, param, t)
            touched.setdefault(param.rpartition(".")[0], {})
    for path, attr, units in graph._channel.attr_fixes:
        value = int((units < 0).sum() + keep[torch.as_tensor(units[units >= 0])].sum())
        touched.setdefault(path, {})[attr] = value
    for path, fixed in touched.items():
        _fix_module(small.get_submodule(path), fixed)
    for path, *_ in graph._channel.norms:  # its statistics now run over the kept channels themselves
        masked_norm.clear(small.get_submodule(path))
    return small, _check_runs(small, graph, model.training)


def _check_runs(small: nn.Module, graph: PruningGraph, training: bool) -> list[torch.Tensor]:
    small.eval()
    try:
        with torch.no_grad():
            out = [t for t in tree_flatten(small(*graph.example_inputs))[0] if isinstance(t, torch.Tensor)]
        shapes = [tuple(t.shape) for t in out]
    except Exception as exc:  # the model's own code failed on the new shapes
        raise TraceError(f"the pruned model does not run ({type(exc).__name__}: {exc}); its code probably "
                         "hardcodes a channel count that pruning changed") from exc
    finally:
        small.train(training)
    if shapes != graph.output_shapes:
        raise TraceError(f"the pruned model's outputs have shapes {shapes}, expected {graph.output_shapes}")
    return out
