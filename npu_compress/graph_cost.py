"""Costs of keep-sets of a pruning graph: the bridge from graph (units) to cost model.

``predict(graph, keep, profile)`` is the cost report of the model with the unkept units
removed (channel) or packed (block / N:M), computed from the exported graph with pruned shapes,
without building the pruned model; it equals ``estimate()`` of ``remove_pruned(...)``.

``unit_costs(graph, profile, kind, keep)`` is c_u, the cost saved by removing unit u alone from
``keep`` (linearised; re-linearise as masks move: docs/ARCHITECTURE.md). Only the layers whose tensors the
unit touches are re-costed (:class:`ChannelCosts`), so one call costs about as much as one ``predict``.
"""
from __future__ import annotations

import dataclasses
import math
from collections import ChainMap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .hardware.budget import BudgetKind, measure
from .hardware.cost import DENSE, CostReport, FormatKind, WeightFormat, layer_cost, report_from_layers
from .hardware.export_records import records_from_exported
from .hardware.layers import LayerSpec, layers_from_records, peak_activation_elems, spec_from_record
from .hardware.ops import OpKind, OpRecord, TensorMeta
from .hardware.profile import HardwareProfile
from .graph.types import Structure


@dataclass(frozen=True)
class _Costed:
    """The costed layers of one keep-set, each with the tensor ids its cost depends on."""

    records: list[OpRecord]
    costed: list[OpRecord]  # the non-view records, one per layer
    layers: list[LayerSpec]
    ids: list[frozenset[str]]


def _shapes(graph: Any, kept: dict[str, int]) -> dict[str, tuple[int, ...]]:
    out = {}
    for node in graph.exported.graph.nodes:
        if node.name in kept:
            val = node.meta.get("val")
            shape = list(val.shape)
            shape[graph.channel_dims[node.name]] = int(kept[node.name])
            out[node.name] = tuple(int(s) for s in shape)
    return out


def _costed(graph: Any, keep: Any) -> _Costed:
    kept = graph.kept_channels(keep) if graph.channel_dims else {}
    records = records_from_exported(graph.exported, _shapes(graph, kept))
    layers = layers_from_records(records)
    costed = [r for r in records if r.kind != OpKind.VIEW]
    ids = [frozenset(t.id for t in (*r.activations, *r.outputs)) for r in costed]
    return _Costed(records, costed, layers, ids)


def weight_formats(graph: Any, keep: Any) -> dict[str, WeightFormat]:
    """Packed storage per weight for a block / N:M keep-set (empty for channel graphs)."""
    if graph.structure is Structure.CHANNEL:
        return {}
    fractions = graph.kept_fraction(keep)
    if graph.structure is Structure.BLOCK:
        return {p: WeightFormat(FormatKind.BLOCK, density=f) for p, f in fractions.items()}
    n, m = graph.nm  # a weight is stored N:M once any of its entries is dropped; dense otherwise
    return {p: WeightFormat(FormatKind.NM, density=n / m, n=n, m=m) for p, f in fractions.items() if f < 1.0}


def predict(graph: Any, keep: Any, profile: HardwareProfile) -> CostReport:
    """Cost report of ``graph``'s model with ``keep`` applied (channels removed or weights packed)."""
    c = _costed(graph, keep)
    params = _kept_params(graph, keep)
    return report_from_layers(c.layers, profile, peak_activation_elems(c.records, c.layers), params,
                              weight_formats(graph, keep))


def _kept_params(graph: Any, keep: Any) -> int:
    """Parameter count after removing the unkept channel units (block / N:M: unchanged, zeros count)."""
    removed: dict[tuple[str, int], set[int]] = {}
    if graph.structure is Structure.CHANNEL:
        for u in (~graph.check_keep(keep)).nonzero().flatten().tolist():
            for sl in graph.units[u].slices:
                removed.setdefault((sl.param, sl.dim), set()).update(sl.indices().tolist())
    total = 0
    for name in graph.exported.graph_signature.parameters:
        shape = graph.param_shapes[name]
        total += math.prod(size - len(removed.get((name, d), ())) for d, size in enumerate(shape))
    return total


class ChannelCosts:
    """A channel keep-set's cost, moved one unit at a time: each unit's layers are found once, and a
    flip re-prices only those (not the whole model, as :func:`predict` does).

    ``delta(u)``: the cost change of flipping unit ``u``; ``flip(u)`` applies it. Layers keep the
    fusion and op kinds of the keep-set the state was built at (as :func:`unit_costs` always did);
    :func:`predict` re-derives them, so a caller that moves far checks its final keep-set with it.

        state = ChannelCosts(graph, profile, "latency", keep)
        if state.total + state.delta(u) <= target:
            state.flip(u)
    """

    def __init__(self, graph: Any, profile: HardwareProfile, kind: BudgetKind | str, keep: Any,
                 layers_at: Any = None):
        """``layers_at``: the keep-set whose fusion and op kinds the layers keep (default ``keep``)."""
        self.graph, self.profile, self.kind = graph, profile, BudgetKind(kind)
        self.keep = graph.check_keep(keep, soft=True).detach() > 0.5
        names, const, self._unit_nodes = graph.unit_channels()
        self._names = names
        self._base = _costed(graph, self.keep if layers_at is None else layers_at)
        self._dims = [graph.channel_dims[n] for n in names]
        dense = {node.name: tuple(node.meta["val"].shape) for node in graph.exported.graph.nodes
                 if node.name in graph.channel_dims}
        self._dense_shapes = [dense[n] for n in names]
        k = self.keep.numpy().astype(np.int64)
        self.counts = const.copy()
        for u in np.flatnonzero(k):
            nodes, mult = self._unit_nodes[u]
            self.counts[nodes] += mult
        self.shapes = {n: self._shape(j, int(c)) for j, (n, c) in enumerate(zip(names, self.counts))}
        index = {n: j for j, n in enumerate(names)}
        node_layers: list[list[int]] = [[] for _ in names]
        for i, ids in enumerate(self._base.ids):
            for t in ids:
                if t in index:
                    node_layers[index[t]].append(i)
        self._node_layers = [np.asarray(sorted(set(x)), dtype=np.int64) for x in node_layers]
        self._unit_layers: dict[int, np.ndarray] = {}
        self._last: tuple[int, Any] | None = None
        self.layer_costs = np.array([self._price(i, self.shapes) for i in range(len(self._base.layers))])
        self.total = float(self.layer_costs.sum())

    def _shape(self, j: int, count: int) -> tuple[int, ...]:
        shape = list(self._dense_shapes[j])
        shape[self._dims[j]] = count
        return tuple(shape)

    def _price(self, i: int, shapes: Any) -> float:
        return measure(layer_cost(_respec(self._base.layers[i], self._base, i, shapes), self.profile), self.kind)

    def layers_of(self, u: int) -> np.ndarray:
        """Indices of the layers unit ``u``'s channels pass through."""
        if u not in self._unit_layers:
            nodes = self._unit_nodes[u][0]
            self._unit_layers[u] = np.unique(np.concatenate([self._node_layers[j] for j in nodes])) \
                if len(nodes) else np.empty(0, dtype=np.int64)
        return self._unit_layers[u]

    def _moved(self, u: int) -> tuple[dict[str, tuple[int, ...]], dict[int, float]]:
        if self._last is not None and self._last[0] == u:  # delta(u) then flip(u): priced once
            return self._last[1]
        nodes, mult = self._unit_nodes[u]
        sign = -1 if bool(self.keep[u]) else 1
        overlay = {self._names[j]: self._shape(j, int(self.counts[j]) + sign * int(m)) for j, m in zip(nodes, mult)}
        shapes = ChainMap(overlay, self.shapes)
        moved = overlay, {int(i): self._price(int(i), shapes) for i in self.layers_of(u)}
        self._last = (u, moved)
        return moved

    def delta(self, u: int) -> float:
        """Cost after flipping unit ``u`` minus the cost now (removing: <= 0; adding: >= 0)."""
        _, priced = self._moved(u)
        return sum(c - float(self.layer_costs[i]) for i, c in priced.items())

    def flip(self, u: int) -> None:
        """Remove unit ``u`` if kept, add it if not."""
        overlay, priced = self._moved(u)
        self._last = None
        nodes, mult = self._unit_nodes[u]
        self.counts[nodes] += (-1 if bool(self.keep[u]) else 1) * mult
        self.shapes.update(overlay)
        for i, c in priced.items():
            self.total += c - float(self.layer_costs[i])
            self.layer_costs[i] = c
        self.keep[u] = ~self.keep[u]


def unit_costs(graph: Any, profile: HardwareProfile, kind: BudgetKind | str, keep: Any = None) -> torch.Tensor:
    """(n_units,) float64: cost saved by removing each unit alone from ``keep`` (default: all kept).

    Latency in seconds or memory in bytes. For units already removed, the cost of adding them back.
    """
    kind = BudgetKind(kind)
    n = graph.num_units
    keep = torch.ones(n, dtype=torch.bool) if keep is None else graph.check_keep(keep, soft=True).detach() > 0.5
    if graph.structure is not Structure.CHANNEL:
        return _weight_unit_costs(graph, profile, kind, keep)
    state = ChannelCosts(graph, profile, kind, keep)
    return torch.tensor([abs(state.delta(u)) for u in range(n)], dtype=torch.float64)


def _respec(spec: LayerSpec, base: _Costed, i: int, shapes: dict[str, tuple[int, ...]]) -> LayerSpec:
    """Layer i of ``base`` re-derived with new tensor shapes (fusion decided on the base keep-set)."""
    rec = base.costed[i]

    def re(t: TensorMeta) -> TensorMeta:
        return TensorMeta(t.id, shapes.get(t.id, t.shape), t.param)

    new = OpRecord(rec.op, rec.module, tuple(re(t) for t in rec.inputs), tuple(re(t) for t in rec.outputs), rec.args)
    # what layers_from_records decided from the op's neighbours stays: fusion's stage, a concat's copy,
    # the layout an elementwise op writes
    return dataclasses.replace(spec_from_record(new, fused=spec.fused), fused_into=spec.fused_into, copied=spec.copied,
                               brick_out=spec.brick_out)


def _weight_unit_costs(graph: Any, profile: HardwareProfile, kind: BudgetKind, keep: torch.Tensor) -> torch.Tensor:
    """Block / N:M: every unit of one weight saves the same: that weight's cost for one unit less."""
    c = _costed(graph, keep)
    formats = weight_formats(graph, keep)
    sizes = torch.bincount(graph.unit_param, minlength=len(graph.params)).double()
    per_param = torch.zeros(len(graph.params), dtype=torch.float64)
    index = {p: i for i, p in enumerate(graph.params)}
    for spec in c.layers:
        i = index.get(spec.weight_param or "")
        if i is None:
            continue
        fmt = formats.get(spec.weight_param, DENSE)
        step = 1.0 / float(sizes[i])
        if fmt.kind is FormatKind.NM:  # one N:M weight: its share of the weight's (packed) cost
            per_param[i] = measure(layer_cost(spec, profile, fmt), kind) * step
        else:
            less = WeightFormat(fmt.kind, max(fmt.density - step, 0.0), fmt.n, fmt.m)
            per_param[i] = measure(layer_cost(spec, profile, fmt), kind) - measure(layer_cost(spec, profile, less),
                                                                                     kind)
    return per_param[graph.unit_param]
