"""The pruning graph: units (channel groups, weight blocks, N:M weights) found on a torch.export graph.

    >>> g = build(model, (x,), load_profile("generic-4tops"))          # channel units
    >>> keep = torch.rand(len(g.units)) > 0.3
    >>> apply_masks(model, g, keep)        # zero in place; equals the pruned model
    >>> small = remove_pruned(model, g, keep)   # physically smaller copy
    >>> print(g.report())                  # what was frozen, and why
    >>> register_channel_rule("my_op", rule)   # teach the analysis an op (graph/rules.py)
"""
from .masks import apply_masks, norm_weights, release_norms, unit_masks
from .pruning_graph import PruningGraph, build
from .rules import register_channel_rule, unregister_channel_rule
from .surgery import remove_pruned
from .tensor_info import Info, ParamRef
from .types import ParamBlock, ParamSlice, PruningGraphError, Structure, Unit

__all__ = ["Info", "ParamBlock", "ParamRef", "ParamSlice", "PruningGraph", "PruningGraphError", "Structure", "Unit",
           "apply_masks", "build", "norm_weights", "register_channel_rule", "release_norms", "remove_pruned", "unit_masks",
           "unregister_channel_rule"]
