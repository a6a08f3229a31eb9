"""Per-unit weight importance: squared L2 norm of the entries a unit owns.

"Output side" entries are the ones that carry a channel forward: producer rows, biases, norm
affine parameters, additive parameters (positional embeddings). The input columns of the
consumer conv/linear are the other side: a soft mask applied to both would act twice (f²).

    >>> s = unit_sq_norms(graph, model)            # (n_units,) float64
    >>> z = normalized_by_group(s.sqrt(), graph)   # 1.0 = the group's mean unit
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..graph.types import Structure


def _input_dim(module: nn.Module) -> int | None:
    """The dim of a weight that indexes input channels, for modules that consume channels."""
    if isinstance(module, (nn.modules.conv._ConvTransposeNd,)):
        return 0
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return 1
    return None


def output_side_tables(graph, model: nn.Module) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """(param, dim, entry index, unit) for the output-side parameter entries of a channel graph."""
    params = dict(model.named_parameters())
    for (name, dim), (idx, unit) in graph.param_tables().items():
        if name not in params:
            continue  # buffers (running statistics) are not masked softly
        owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        if name.endswith(".weight") and _input_dim(owner) == dim:
            continue
        yield name, dim, idx, unit


@torch.no_grad()
def unit_sq_norms(graph, model: nn.Module) -> torch.Tensor:
    """(n_units,) float64: Σ of squared output-side entries (channel) or of the unit's weights (block/N:M)."""
    out = torch.zeros(graph.num_units, dtype=torch.float64)
    if graph.structure is Structure.CHANNEL:
        params = dict(model.named_parameters())
        for name, dim, idx, unit in output_side_tables(graph, model):
            t = params[name].detach().double()
            per_entry = t.pow(2).sum(dim=[d for d in range(t.dim()) if d != dim]) if t.dim() > 1 else t.pow(2)
            out.index_add_(0, unit, per_entry[idx])
        return out
    params = dict(model.named_parameters())
    for name, entry_unit in graph.entry_units():
        w = params[name].detach().double()
        out.index_add_(0, entry_unit.flatten(), w.pow(2).flatten())
    return out


def normalized_by_group(scores: torch.Tensor, graph) -> torch.Tensor:
    """Each score divided by the mean score of its group (channel: coupled group; block: weight)."""
    g = graph.unit_group
    sums = torch.zeros(len(graph.groups), dtype=scores.dtype).index_add_(0, g, scores)
    counts = torch.bincount(g, minlength=len(graph.groups)).to(scores.dtype)
    mean = sums / counts.clamp_min(1)
    return scores / mean[g].clamp_min(torch.finfo(scores.dtype).tiny)
