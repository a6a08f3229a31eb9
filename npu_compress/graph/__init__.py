"""The pruning graph: units (channel groups, weight blocks, N:M weights) found on a torch.export graph.

    >>> g = build(model, (x,), load_profile("generic-4tops"))          # channel units
    >>> keep = torch.rand(len(g.units)) > 0.3
    >>> apply_masks(model, g, keep)        # zero in place; equals the pruned model
    >>> small = remove_pruned(model, g, keep)   # physically smaller copy
    >>> print(g.report())                  # what was frozen, and why
"""
from .masks import apply_masks, unit_masks
from .pruning_graph import PruningGraph, build
from .surgery import remove_pruned
from .types import ParamBlock, ParamSlice, PruningGraphError, Structure, Unit

__all__ = ["ParamBlock", "ParamSlice", "PruningGraph", "PruningGraphError", "Structure", "Unit", "apply_masks",
           "build", "remove_pruned", "unit_masks"]
