"""Turn the walk's union-find into channel units, per-parameter index tables and freeze records.

Classes (unioned elements) of a group are ordered by their smallest element and cut into units
of ``group_size`` channels, counted on the widest producer of the class (a head of 64 dims in a
fused qkv is 192 rows wide, so with ``group_size=8`` one head is one unit). Groups with fewer than
two units are not prunable and get no units. Example: conv1 (8 ch) + conv2 (8 ch) residual,
``group_size=4`` -> one group, classes {c1[i], c2[i]}, units [0..3], [4..7].
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .channels import channel_axis
from .channel_ops import ChannelWalk
from .tensor_info import Info
from .types import FreezeRecord, ParamSlice, Unit, slice_or_tensor

log = logging.getLogger(__name__)


@dataclass
class ChannelUnits:
    units: list[Unit]
    group_offsets: np.ndarray  # units of group g: offsets[g] .. offsets[g+1]
    group_sources: list[list[str]]  # producer node names per (unit-bearing) group
    frozen: list[tuple[FreezeRecord, int]]  # record, channels it froze
    # (param, dim) -> (entry index, unit) for entries that go with a unit
    tables: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]
    channel_dims: dict[str, int]
    kept_index: tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]  # node idx, unit, const, names
    attr_fixes: list[tuple[str, str, np.ndarray]]  # module, attr, unit per counted entry (-1: fixed)
    n_frozen_groups: int = 0
    n_single_unit_groups: int = 0
    # unit sets of which one must stay so that a producer (or a split segment) keeps a channel, where
    # its group does not already see to it (a concat feeding a grouped conv ties two producers in one)
    covers: list[np.ndarray] = field(default_factory=list)
    # LayerNorms whose statistics run over units' channels: (module, normalized_shape, channel axis,
    # entry index along the axis, unit) — masked at run time (masked_norm.py)
    norms: list[tuple[str, tuple[int, ...], int, torch.Tensor, torch.Tensor]] = field(default_factory=list)


class _Freezer:
    def __init__(self, grp: np.ndarray):
        self.grp = grp
        self.frozen = np.zeros(grp.max() + 1 if grp.size else 0, dtype=bool)
        self.records: list[tuple[FreezeRecord, int]] = []

    def __call__(self, classes: np.ndarray, record: FreezeRecord, n_channels: int) -> None:
        groups = np.unique(self.grp[np.ravel(classes)])
        self.frozen[groups] = True
        self.records.append((record, n_channels))


def _node_axes(walk: ChannelWalk, cls: np.ndarray, freeze: _Freezer) -> dict[str, tuple[int, np.ndarray]]:
    """Channel dim of every tracked node and the class at each position along it."""
    axes = {}
    for name, info in walk.info.items():
        if not isinstance(info, Info):
            continue
        c = cls[info.ids]
        ax = channel_axis(c)
        if ax is None:
            freeze(c, FreezeRecord(name, "view", "channels are spread over several dims"), int(c.size))
            continue
        other = tuple(0 if i != ax else slice(None) for i in range(c.ndim))
        axes[name] = (info.dims[ax], c[other])
    for node, inp, k in walk.state.not_channel_dim:
        if inp in axes and axes[inp][0] == k:
            freeze(axes[inp][1], FreezeRecord(node, "unbind", "unbind along the channel dim"), len(axes[inp][1]))
    return axes


def _cut_units(cls: np.ndarray, grp: np.ndarray, src: np.ndarray, frozen: np.ndarray, group_size: int):
    """Unit per class (-1: none), classes per unit, group per unit, and the width of each class."""
    n_cls = len(grp)
    width = np.zeros(n_cls, dtype=np.int64)  # a class's largest number of elements in one producer
    if cls.size:
        base = int(src.max()) + 1
        keys, per_key = np.unique(cls * base + src, return_counts=True)
        np.maximum.at(width, keys // base, per_key)
    unit_of_class = np.full(n_cls, -1, dtype=np.int64)
    unit_classes: list[np.ndarray] = []
    unit_groups: list[int] = []
    for g in range(len(frozen)):
        if frozen[g]:
            continue
        members = np.flatnonzero(grp == g)  # ascending = ordered by smallest element
        cuts, acc = [], 0
        for i, w in enumerate(width[members].tolist()):
            acc += w
            if acc >= group_size:
                cuts.append(i + 1)
                acc = 0
        chunks = [c for c in np.split(members, cuts) if c.size]
        if len(chunks) < 2:
            continue
        for chunk in chunks:
            unit_of_class[chunk] = len(unit_classes)
            unit_classes.append(chunk)
            unit_groups.append(g)
    return unit_of_class, unit_classes, unit_groups, width


def build_channel_units(walk: ChannelWalk, group_size: int) -> ChannelUnits:
    st = walk.state
    st.unify_attachments()
    cls = st.classes()
    src = np.asarray(st.source, dtype=np.int64)
    grp = st.groups(cls)
    freeze = _Freezer(grp)
    for record, elems in st.freezes:
        freeze(cls[elems], record, int(elems.size))
    for a in st.attaches:
        if a.param in st.unknown_params:
            freeze(cls[a.elem], st.unknown_params[a.param], int(np.unique(a.elem).size))
    axes = _node_axes(walk, cls, freeze)
    unit_of_class, unit_classes, unit_groups, width = _cut_units(cls, grp, src, freeze.frozen, group_size)
    uniq_groups = sorted(set(unit_groups))
    gid = {g: i for i, g in enumerate(uniq_groups)}
    offsets = np.zeros(len(uniq_groups) + 1, dtype=np.int64)
    for g in unit_groups:
        offsets[gid[g] + 1] += 1
    offsets = np.cumsum(offsets)
    tables, slices = _param_tables(st.attaches, cls, unit_of_class, len(unit_classes))
    units = [Unit(u, gid[g], tuple(slices[u]), int(width[unit_classes[u]].sum()))
             for u, g in enumerate(unit_groups)]
    sources = [[] for _ in uniq_groups]
    first_elem_src = {}
    for e in range(len(cls)):
        first_elem_src.setdefault((grp[cls[e]], src[e]), e)
    for (g, s) in first_elem_src:
        if g in gid:
            sources[gid[g]].append(st.sources[s])
    channel_dims, kept_index = _kept_tables(axes, unit_of_class)
    fixes = [(f.module, f.attr, unit_of_class[cls[f.elems]]) for f in st.attr_fixes]
    n_single = sum(1 for g in range(len(freeze.frozen)) if not freeze.frozen[g] and g not in gid)
    covers = _covers(cls, src, unit_of_class, offsets, [gid[g] for g in unit_groups], st.keep_one)
    norms = []
    for n in st.norm_stats:
        unit = unit_of_class[cls[n.elems]]
        if (unit >= 0).any():
            idx = np.flatnonzero(unit >= 0)
            norms.append((n.module, n.shape, n.axis, torch.as_tensor(idx), torch.as_tensor(unit[idx])))
    return ChannelUnits(units, offsets, sources, freeze.records, tables, channel_dims, kept_index, fixes,
                        int(freeze.frozen.sum()), n_single, covers, norms)


def _covers(cls: np.ndarray, src: np.ndarray, unit_of_class: np.ndarray, offsets: np.ndarray,
            unit_group: list[int], keep_one: list[np.ndarray]) -> list[np.ndarray]:
    """Unit sets of which one must stay: per producer, and per element set the walk asked to keep
    non-empty (a split segment), whose channels all lie in units — unless they hold a whole group
    (then "one unit per group" already keeps a channel of it)."""
    covers: dict[tuple[int, ...], np.ndarray] = {}
    if not cls.size:
        return []
    units_of = unit_of_class[cls]
    order = np.argsort(src, kind="stable")
    bounds = np.flatnonzero(np.diff(src[order])) + 1
    for elems in [*np.split(order, bounds), *keep_one]:
        units = np.unique(units_of[elems])
        if units.size == 0 or units[0] < 0:  # a channel no unit removes: the producer never empties
            continue
        groups = {unit_group[u] for u in units.tolist()}
        if any(np.isin(np.arange(offsets[g], offsets[g + 1]), units).all() for g in groups):
            continue
        covers.setdefault(tuple(units.tolist()), units)
    return list(covers.values())


def _param_tables(attaches: list, cls: np.ndarray, unit_of_class: np.ndarray, n_units: int):
    tables: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    slices: list[list[ParamSlice]] = [[] for _ in range(n_units)]
    by_key: dict[tuple[str, int], list] = {}
    for a in attaches:
        by_key.setdefault((a.param, a.dim), []).append(a)
    for (param, dim), items in by_key.items():
        idx = np.concatenate([a.idx for a in items])
        unit = unit_of_class[cls[np.concatenate([a.elem for a in items])]]
        idx, first = np.unique(idx, return_index=True)
        unit = unit[first]
        sel = unit >= 0
        idx, unit = idx[sel], unit[sel]
        if not idx.size:
            continue
        tables[(param, dim)] = (torch.as_tensor(idx), torch.as_tensor(unit))
        order = np.lexsort((idx, unit))
        idx, unit = idx[order], unit[order]
        bounds = np.flatnonzero(np.diff(unit)) + 1
        for u_idx, u in zip(np.split(idx, bounds), unit[np.r_[0, bounds]].tolist()):
            slices[u].append(ParamSlice(param, dim, slice_or_tensor(u_idx)))
    return tables, slices


def _kept_tables(axes: dict[str, tuple[int, np.ndarray]], unit_of_class: np.ndarray):
    names, node_idx, units, const = [], [], [], []
    channel_dims: dict[str, int] = {}
    for name, (dim, classes) in axes.items():
        u = unit_of_class[classes]
        if not (u >= 0).any():
            continue
        channel_dims[name] = dim
        names.append(name)
        const.append(int((u < 0).sum()))
        node_idx.append(np.full(int((u >= 0).sum()), len(names) - 1))
        units.append(u[u >= 0])
    cat = (lambda xs: np.concatenate(xs) if xs else np.empty(0, dtype=np.int64))
    return channel_dims, (cat(node_idx), cat(units), np.asarray(const, dtype=np.int64), names)


def kept_counts(index: Any, keep: torch.Tensor) -> dict[str, int]:
    node_idx, units, const, names = index
    k = keep.detach().cpu().numpy().astype(np.float64)
    counts = np.bincount(node_idx, weights=k[units], minlength=len(names)) + const
    return {n: int(round(c)) for n, c in zip(names, counts.tolist())}
