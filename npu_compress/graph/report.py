"""Human-readable summary of a pruning graph: units, groups, and what was frozen and why.

Example (abridged)::

    channel graph: 52 units in 9 groups (group size 8)
    frozen: 3 groups
      - aten.roll.default at roll: op roll is not understood by the channel analysis (16 channels)
"""
from __future__ import annotations

from collections import OrderedDict

from .types import Structure


def render(graph) -> str:
    lines = []
    s = graph.structure
    if graph._channel is not None:
        cu = graph._channel
        lines.append(f"channel graph: {graph.num_units} units in {len(graph.groups)} groups "
                     f"(group size {graph.group_size})")
        for g, srcs in enumerate(cu.group_sources):
            r = graph.groups[g]
            lines.append(f"  group {g}: {len(r)} units, producers {', '.join(srcs[:6])}"
                         + (" ..." if len(srcs) > 6 else ""))
        lines.append(f"frozen: {cu.n_frozen_groups} groups; not prunable (one unit): {cu.n_single_unit_groups}")
        seen: "OrderedDict[tuple, int]" = OrderedDict()
        for rec, n in cu.frozen:
            key = (rec.op, rec.node, rec.reason)
            seen[key] = seen.get(key, 0) + n
        for (op, node, reason), n in seen.items():
            lines.append(f"  - {op} at {node}: {reason} ({n} channels)")
    else:
        wu = graph._weights
        what = f"blocks {wu.layouts[0].tile}" if s is Structure.BLOCK and wu.layouts else f"N:M {graph.nm}"
        lines.append(f"{s} graph: {graph.num_units} units in {len(graph.groups)} groups over "
                     f"{len(wu.layouts)} weights ({what})")
        for param, reason in wu.skipped:
            lines.append(f"  - skipped {param}: {reason}")
    return "\n".join(lines)
