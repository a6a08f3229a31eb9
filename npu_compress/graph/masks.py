"""Masks: zero the pruned units in place, or build per-parameter multiplicative masks.

``apply_masks(model, g, keep)`` zeroes every slice of every unit with ``keep[u] == False``
(weights, biases, norm affine parameters and BatchNorm running statistics), so the masked model
computes exactly what the physically pruned model computes. LayerNorms over pruned channels get masked statistics
(``masked_norm.py``; ``norm_weights(g, f)`` are their per-channel weights). ``unit_masks(g, f)`` maps a per-unit
vector ``f`` (bool or float, differentiable) to ``{param: mask}``, each mask broadcastable to its
parameter, for a soft mask ``W * mask`` (e.g. through ``torch.nn.utils.parametrize``)::

    >>> m = unit_masks(g, torch.tensor([1.0, 0.5]))
    >>> m["conv1.weight"].shape      # (16, 1, 1, 1): one factor per output channel
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import masked_norm
from .pruning_graph import PruningGraph


def get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path)
    t = getattr(mod, attr)
    if not isinstance(t, torch.Tensor):
        raise KeyError(name)
    return t


def unit_masks(graph: PruningGraph, keep_or_soft: Any) -> dict[str, torch.Tensor]:
    """Per-parameter mask tensors (product of the factors of every unit touching an entry)."""
    f = graph.check_keep(keep_or_soft, soft=True)
    masks: dict[str, torch.Tensor] = {}
    if graph._channel is not None:
        for (param, dim), (idx, unit) in graph._channel.tables.items():
            shape = graph.param_shapes[param]
            vec = torch.ones(shape[dim], dtype=f.dtype, device=f.device).index_put((idx.to(f.device),),
                                                                                     f[unit.to(f.device)])
            view = [1] * len(shape)
            view[dim] = shape[dim]
            vec = vec.view(view)
            masks[param] = masks[param] * vec if param in masks else vec
        return masks
    for lay in graph._weights.layouts:
        masks[lay.param] = f[graph._weights.entry_unit(lay).to(f.device)]
    return masks


def norm_weights(graph: PruningGraph, keep_or_soft: Any) -> dict[str, torch.Tensor]:
    """``{norm module path: per-channel statistics weights}`` (shaped to broadcast over its
    normalized_shape) for every LayerNorm / RMSNorm whose statistics run over units' channels."""
    if graph._channel is None or not graph._channel.norms:
        return {}
    f = graph.check_keep(keep_or_soft, soft=True)
    out = {}
    for path, shape, axis, idx, unit in graph._channel.norms:
        vec = torch.ones(shape[axis], dtype=f.dtype, device=f.device).index_put((idx.to(f.device),),
                                                                                 f[unit.to(f.device)])
        view = [1] * len(shape)
        view[axis] = shape[axis]
        out[path] = vec.view(view)
    return out


def release_norms(model: nn.Module, graph: PruningGraph) -> nn.Module:
    """Every masked norm of ``graph`` in ``model`` computes plain statistics again (a dense phase)."""
    for path in norm_weights(graph, torch.ones(graph.num_units)):
        masked_norm.clear(model.get_submodule(path))
    return model


@torch.no_grad()
def apply_masks(model: nn.Module, graph: PruningGraph, keep: Any) -> nn.Module:
    """Zero, in place, every entry of every unit with ``keep[u]`` false. Returns ``model``."""
    keep = graph.check_keep(keep)
    for param, mask in unit_masks(graph, keep.float()).items():
        t = get_tensor(model, param)
        if tuple(t.shape) != graph.param_shapes[param]:
            from .types import PruningGraphError
            raise PruningGraphError(f"{param} has shape {tuple(t.shape)}, the graph was built for "
                                    f"{graph.param_shapes[param]}")
        t.masked_fill_(mask.to(t.device) == 0, 0)
    for path, w in norm_weights(graph, keep.float()).items():
        if bool((w == 0).any()):
            masked_norm.set_weights(model.get_submodule(path), w)
        else:
            masked_norm.clear(model.get_submodule(path))
    return model
