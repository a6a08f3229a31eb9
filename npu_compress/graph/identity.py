"""Pruned units by identity (parameter names, dims, indices), so a keep-set written with one graph is
checked against the graph rebuilt from the same model before it is applied.

    >>> ids = unit_identities(graph, keep)     # plain values: stored in the checkpoint
    >>> check_identities(rebuilt, keep, ids)   # PruningGraphError naming the first unit that differs

Channel units: each pruned unit as its slices ``[param, dim, [indices]]``. Block / N:M units follow
from the weights' layouts (parameter, matrix shape, tile, first unit), so the layouts are what is stored.
"""
from __future__ import annotations

from typing import Any

import torch

from .types import PruningGraphError, Structure


def unit_identities(graph: Any, keep: torch.Tensor) -> dict[str, Any]:
    """Plain values naming each pruned unit (channel) or the layout that defines every unit (block / N:M)."""
    if graph.structure is Structure.CHANNEL:
        pruned = torch.nonzero(~keep.bool()).flatten().tolist()
        return {"structure": graph.structure.value, "units": graph.num_units,
                "pruned": [_channel_unit(graph.units[u]) for u in pruned]}
    return {"structure": graph.structure.value, "units": graph.num_units,
            "layouts": [[lay.param, list(lay.shape), lay.rows, lay.cols, list(lay.tile), lay.offset]
                        for lay in graph._weights.layouts]}


def check_identities(graph: Any, keep: torch.Tensor, stored: dict[str, Any]) -> None:
    """PruningGraphError unless ``keep`` prunes in ``graph`` exactly the units ``stored`` names."""
    now = unit_identities(graph, keep)
    if stored.get("structure") != now["structure"] or stored.get("units") != now["units"]:
        raise PruningGraphError(f"the rebuilt graph has {now['units']} {now['structure']} units, the checkpoint "
                                f"{stored.get('units')} {stored.get('structure')} units")
    key = "pruned" if "pruned" in now else "layouts"
    for i, (a, b) in enumerate(zip(_plain(stored.get(key, [])), now[key])):
        if a != b:
            what = "pruned unit" if key == "pruned" else "weight layout"
            raise PruningGraphError(f"{what} {i} differs: the checkpoint has {_short(a)}, the rebuilt graph "
                                    f"{_short(b)}")
    if len(stored.get(key, [])) != len(now[key]):
        raise PruningGraphError(f"the checkpoint names {len(stored.get(key, []))} {key}, the rebuilt graph "
                                f"{len(now[key])}")


def _channel_unit(unit: Any) -> list:
    return sorted([s.param, int(s.dim), [int(i) for i in s.indices().tolist()]] for s in unit.slices)


def _plain(value: Any) -> Any:
    """Tuples (as stored) as lists, so stored and rebuilt identities compare equal."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = ["check_identities", "unit_identities"]
