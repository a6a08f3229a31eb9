"""The pruning graph: units, groups and the shape queries the cost model asks.

Example::

    >>> g = build(model, (torch.randn(1, 3, 32, 32),), load_profile("generic-4tops"))
    >>> len(g.units), len(g.groups), g.units[0].group
    (52, 9, 0)
    >>> keep = torch.ones(len(g.units), dtype=torch.bool); keep[0] = False
    >>> g.kept_channels(keep)["conv2d"]          # one unit of 8 channels fewer
    56
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..choices import NMPattern
from ..errors import TraceError
from .channel_ops import ChannelWalk
from .channel_units import ChannelUnits, build_channel_units, kept_counts
from .export_trace import Trace, as_tuple
from .tensor_info import Info
from .types import PruningGraphError, Structure, Unit
from .weight_units import WeightUnits, build_weight_units

log = logging.getLogger(__name__)


class _Groups(Sequence):
    """Group ``g`` is ``range(offsets[g], offsets[g+1])``: units of a group are consecutive."""

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets

    def __len__(self) -> int:
        return max(len(self.offsets) - 1, 0)

    def __getitem__(self, g: int) -> range:
        if not -len(self) <= g < len(self):
            raise IndexError(g)
        g %= len(self)
        return range(int(self.offsets[g]), int(self.offsets[g + 1]))


class _LazyUnits(Sequence):
    def __init__(self, wu: WeightUnits):
        self.wu, self.n = wu, wu.n_units

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, u: int) -> Unit:
        if not -self.n <= u < self.n:
            raise IndexError(u)
        return self.wu.unit(u % self.n)


class PruningGraph:
    """Units of one structure over one model, built by :func:`build`.

    - ``units[u]``: a :class:`Unit`; ``groups[g]``: the range of unit indices of group ``g``
      (channel: coupled channels, keep at least one unit; block: one weight; N:M: M weights).
    - ``channel_dims`` / ``kept_channels(keep)``: for every node (``node.name`` of
      ``exported.graph``) whose channel count pruning changes, the dim and the count kept.
      Attention: q/k/v/output nodes of shape (B, H, N, hd) or (B, N, 3, H, hd) report the heads
      dim H and the kept heads; a (B, N, H*hd) tensor reports its last dim, which shrinks by
      ``hd`` per removed head (by ``3*hd`` for the fused qkv output).
    - block / N:M: ``unit_param`` (index into ``params``) and ``kept_fraction(keep)``.
    """

    def __init__(self, structure: Structure, trace: Trace, example_inputs: tuple, group_size: Optional[int],
                 nm: Optional[tuple[int, int]], channel: Optional[ChannelUnits] = None,
                 weights: Optional[WeightUnits] = None):
        self.structure, self.exported, self.group_size, self.nm = structure, trace.exported, group_size, nm
        self.example_inputs = tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t
                                    for t in example_inputs)
        self.param_shapes = {n: tuple(p.shape) for n, p in trace.model.state_dict(keep_vars=True).items()}
        self.output_shapes = [tuple(v.shape) for v in _output_vals(trace)]
        self._channel, self._weights = channel, weights
        self._unit_channels: Optional[tuple] = None
        self._covers: Optional[list[torch.Tensor]] = None
        if channel is not None:
            self.units: Sequence[Unit] = channel.units
            self.groups: Sequence[range] = _Groups(channel.group_offsets)
            self.channel_dims: dict[str, int] = channel.channel_dims
            self.params = sorted({p for p, _ in channel.tables})
            self.unit_param: Optional[torch.Tensor] = None
        else:
            self.units = _LazyUnits(weights)
            self.groups = _Groups(weights.group_offsets())
            self.channel_dims = {}
            self.params = [lay.param for lay in weights.layouts]
            self.unit_param = weights.unit_param()
        self.unit_group = torch.repeat_interleave(
            torch.arange(len(self.groups)), torch.as_tensor(np.diff(self.groups.offsets)))

    @property
    def num_units(self) -> int:
        return len(self.units)

    # -- keep vectors -----------------------------------------------------------------------
    def check_keep(self, keep: Any, soft: bool = False) -> torch.Tensor:
        """``keep`` as a tensor of one entry per unit (bool, or float when ``soft``)."""
        t = torch.as_tensor(keep) if not isinstance(keep, torch.Tensor) else keep
        if t.dim() != 1 or t.numel() != self.num_units:
            raise PruningGraphError(f"keep must have one entry per unit ({self.num_units}), got shape "
                                    f"{tuple(t.shape)}")
        if soft:
            return t if t.is_floating_point() else t.float()
        t = t.detach().bool() if t.dtype == torch.bool else t.detach() != 0
        if self.structure is Structure.CHANNEL and len(self.groups):
            kept = torch.zeros(len(self.groups), dtype=torch.long).index_add_(0, self.unit_group, t.long())
            empty = (kept == 0).nonzero().flatten().tolist()
            if empty:
                raise PruningGraphError(f"every channel group must keep at least one unit; groups {empty[:5]} "
                                        f"keep none (group {empty[0]}: units {self.groups[empty[0]]})")
            bare = [c for c in self.covers if not bool(t[c].any())]
            if bare:
                raise PruningGraphError(f"every producer and split segment must keep a channel; {len(bare)} would "
                                        f"keep none (keep one of units {bare[0].tolist()})")
        return t

    @property
    def covers(self) -> list[torch.Tensor]:
        """Channel graphs: unit sets of which one must stay so that every producer keeps a channel, where
        "one unit per group" does not already ensure it (a concat feeding a grouped conv)."""
        if self._channel is None:
            return []
        if self._covers is None:
            self._covers = [torch.as_tensor(c, dtype=torch.long) for c in self._channel.covers]
        return self._covers

    def droppable(self, keep: torch.Tensor, units: Sequence[int]) -> list[int]:
        """Of ``units`` (kept ones, in the given order), those that can be dropped one after another
        while every group and every producer keeps a unit."""
        keep = keep.clone()
        out = []
        for u in units:
            keep[u] = False
            ok = bool(keep[list(self.groups[int(self.unit_group[u])])].any()) and \
                all(bool(keep[c].any()) for c in self.covers if bool((c == u).any()))
            if ok:
                out.append(u)
            else:
                keep[u] = True
        return out

    # -- cost-model queries ---------------------------------------------------------------
    def kept_channels(self, keep: Any) -> dict[str, int]:
        """Channels kept along ``channel_dims[node]`` for every node in ``channel_dims``."""
        if self._channel is None:
            return {}
        return kept_counts(self._channel.kept_index, self.check_keep(keep, soft=True).detach())

    def unit_channels(self) -> tuple[list[str], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Channel graphs: ``(nodes, channels kept whatever the keep-set, per unit (node indices,
        channels the unit holds there))`` — ``kept_channels`` as a sum, for incremental costing."""
        if self._channel is None:
            raise PruningGraphError("unit_channels is for channel graphs")
        if self._unit_channels is None:
            node_idx, units, const, names = self._channel.kept_index
            order = np.argsort(units, kind="stable")
            bounds = np.searchsorted(units[order], np.arange(self.num_units + 1))
            per_unit = [np.unique(node_idx[order[a:b]], return_counts=True) for a, b in zip(bounds[:-1], bounds[1:])]
            self._unit_channels = (list(names), np.asarray(const, dtype=np.int64), per_unit)
        return self._unit_channels

    def kept_fraction(self, keep: Any) -> dict[str, float]:
        """Block / N:M: fraction of each weight's units (blocks, or weights) kept."""
        if self._weights is None:
            raise PruningGraphError("kept_fraction is for block / nm graphs; use kept_channels for channel graphs")
        k = self.check_keep(keep, soft=True).detach().double()
        sums = torch.zeros(len(self.params), dtype=torch.double).index_add_(0, self.unit_param, k)
        sizes = torch.bincount(self.unit_param, minlength=len(self.params)).double()
        return {p: float(s / n) for p, s, n in zip(self.params, sums, sizes)}

    # -- per-entry views, for pruners ------------------------------------------------------
    def param_tables(self) -> dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]:
        """Channel graphs: ``(param, dim) -> (entry index along dim, unit of each entry)``."""
        if self._channel is None:
            raise PruningGraphError("param_tables is for channel graphs; use entry_units for block / nm")
        return dict(self._channel.tables)

    def entry_units(self) -> list[tuple[str, torch.Tensor]]:
        """Block / N:M graphs: ``(param, unit index of every entry, shaped like the weight)``."""
        if self._weights is None:
            raise PruningGraphError("entry_units is for block / nm graphs; use param_tables for channel")
        return [(lay.param, self._weights.entry_unit(lay)) for lay in self._weights.layouts]

    def param_unit_ranges(self) -> list[tuple[str, int, int]]:
        """Block / N:M graphs: ``(param, first unit, unit count)``; a weight's units are consecutive."""
        if self._weights is None:
            raise PruningGraphError("param_unit_ranges is for block / nm graphs")
        return [(lay.param, lay.offset, lay.n_units) for lay in self._weights.layouts]

    def report(self) -> str:
        from .report import render
        return render(self)

    def __repr__(self) -> str:
        return (f"PruningGraph({self.structure.value}, units={self.num_units}, groups={len(self.groups)}, "
                f"params={len(self.params)})")


def _output_vals(trace: Trace) -> list:
    out = [n for n in trace.graph.nodes if n.op == "output"][0]
    flat, _ = tree_flatten(out.args[0])
    return [n.meta["val"] for n in flat if hasattr(n, "meta") and isinstance(n.meta.get("val"), torch.Tensor)]


def _check_nm(nm: Any) -> NMPattern:
    return NMPattern.parse(nm, "nm", PruningGraphError)


def build(model: nn.Module, example_inputs: Any, profile: Any, structure: Union[str, Structure] = "channel",
          nm: Any = (2, 4), group_size: Optional[int] = None) -> PruningGraph:
    """Export ``model`` (eval mode) and find its units of ``structure`` (channel / block / nm).

    ``group_size`` (channel units): channels per unit, default ``profile.tiling.tile_out``.
    Block units use ``profile.tiling.block``; N:M units keep N of every M weights.
    """
    structure = Structure.parse(structure)
    nm_pair = _check_nm(nm) if structure is Structure.NM else None
    tiling = getattr(profile, "tiling", None)
    if tiling is None and (group_size is None or structure is Structure.BLOCK):
        raise PruningGraphError(f"profile must be a HardwareProfile (with .tiling), got {type(profile).__name__}")
    if group_size is None:
        group_size = int(tiling.tile_out)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise PruningGraphError(f"group_size must be a positive integer, got {group_size!r}")
    inputs = as_tuple(example_inputs)
    trace = Trace.export(model, inputs)
    if structure is Structure.CHANNEL:
        graph = _proven_channel_graph(trace, inputs, group_size)
    else:
        wu = build_weight_units(trace, structure, tuple(profile.tiling.block), nm_pair)
        graph = PruningGraph(structure, trace, inputs, None, nm_pair, weights=wu)
    log.info("%r", graph)
    return graph


# ---------------------------------------------------------------- surgery, proven by running it

PROBE_TOLERANCE = 1e-4  # masked vs pruned outputs of the probe, relative to the output scale


def _proven_channel_graph(trace: Trace, inputs: tuple, group_size: int) -> PruningGraph:
    """The channel graph, with every group whose removal the model's own code does not survive frozen.

    The rules are exact for the ops they see, but a model may also hold a width the export graph
    does not show (a Python int used in a reshape, not an attribute surgery knows). So the graph is
    proven once: drop one unit of every group, build the pruned model and compare it with the masked
    one; groups that break it (found by bisection) are frozen, the report says why, and the graph is
    built again. Never a keep-set whose pruned model does not run."""
    walk = ChannelWalk(trace).run()
    graph = PruningGraph(Structure.CHANNEL, trace, inputs, group_size, None,
                         channel=build_channel_units(walk, group_size))
    bad = _breaking_groups(graph, trace.model, list(range(len(graph.groups))))
    if not bad:
        return graph
    walk = ChannelWalk(trace).run()
    for g, why in bad:
        for src in graph._channel.group_sources[g]:
            info = walk.info.get(src)
            if isinstance(info, Info):
                walk.state.freeze(info.ids, src, "surgery", f"pruning these channels breaks the model: {why}")
    log.info("froze %d channel group(s) the model's own code does not survive pruning", len(bad))
    return PruningGraph(Structure.CHANNEL, trace, inputs, group_size, None,
                        channel=build_channel_units(walk, group_size))


def _breaking_groups(graph: PruningGraph, model: nn.Module, groups: list[int]) -> list[tuple[int, str]]:
    """Groups among ``groups`` whose removal (one unit each) breaks the model, with the reason."""
    why = _probe(graph, model, groups)
    if why is None:
        return []
    if len(groups) == 1:
        return [(groups[0], why)]
    half = len(groups) // 2
    found = _breaking_groups(graph, model, groups[:half]) + _breaking_groups(graph, model, groups[half:])
    return found or [(g, why) for g in groups]  # only together: freeze them all


def _probe(graph: PruningGraph, model: nn.Module, groups: list[int]) -> Optional[str]:
    """None when dropping the last unit of each of ``groups`` gives a pruned model equal to the masked
    one; else what went wrong."""
    from .masks import apply_masks
    from .surgery import pruned_and_outputs

    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for g in groups:
        units = graph.groups[g]
        if len(units) >= 2:
            keep[units[-1]] = False
    for cover in graph.covers:
        if not bool(keep[cover].any()):
            keep[cover[-1]] = True
    if bool(keep.all()):
        return None
    try:
        _, b = pruned_and_outputs(model, graph, keep)  # the outputs of its own check run
    except TraceError as e:
        return str(e)
    masked = apply_masks(copy.deepcopy(model), graph, keep)
    was = model.training
    try:
        with torch.no_grad():
            a = [t for t in tree_flatten(masked.eval()(*graph.example_inputs))[0] if isinstance(t, torch.Tensor)]
    finally:
        model.train(was)
    for x, y in zip(a, b):
        scale = max(float(x.abs().max()), 1.0)
        if x.shape != y.shape or float((x - y).abs().max()) > PROBE_TOLERANCE * scale:
            return "the pruned model computes something else than the masked one"
    return None

