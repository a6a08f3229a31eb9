"""Block and N:M units: zeroed weights, unchanged shapes.

Every conv / linear weight is viewed as a matrix ``(shape[0], prod(shape[1:]))``.

- block: cut into profile blocks ``bo x bi`` (edge blocks may be partial), one unit per block,
  row-major; one group per weight. ``fc.weight`` (10, 20) with blocks (8, 8) -> 2 x 3 = 6 units.
- N:M: every M consecutive weights of a row form a group of M units (one per weight); a pruner
  keeps N per group. ``fc.weight`` (10, 20) with 2:4 -> 200 units in 50 groups of 4.

Units are numbered parameter by parameter, so unit ``u`` of a weight is ``offset + local``.
Depthwise weights are skipped for block pruning (tiny), weights whose rows are not a multiple of
M for N:M; both are listed in the report.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..hardware import ops
from .channel_ops import op_name
from .export_trace import Trace
from .types import ParamBlock, Structure, Unit

WEIGHT_OPS = (ops.CONV | ops.CONV_TRANSPOSE | {"linear"}) - {"mkldnn_convolution"}


@dataclass
class WeightLayout:
    param: str
    shape: tuple[int, ...]
    offset: int  # first unit
    group_offset: int  # first group
    rows: int
    cols: int
    tile: tuple[int, int]  # (bo, bi) for blocks, (1, 1) for N:M
    grid: tuple[int, int]  # units per column / row

    @property
    def n_units(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class WeightUnits:
    structure: Structure
    layouts: list[WeightLayout]
    m: int  # N:M group width (1 for blocks: a group is a whole weight)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n_units(self) -> int:
        return sum(lay.n_units for lay in self.layouts)

    def unit(self, u: int) -> Unit:
        lay = self.layouts[int(np.searchsorted(self._offsets(), u, side="right")) - 1]
        i, j = divmod(u - lay.offset, lay.grid[1])
        bo, bi = lay.tile
        rows = slice(i * bo, min((i + 1) * bo, lay.rows))
        cols = slice(j * bi, min((j + 1) * bi, lay.cols))
        if self.structure is Structure.BLOCK:
            group = self.layouts.index(lay)
        else:
            group = lay.group_offset + (u - lay.offset) // self.m
        size = (rows.stop - rows.start) * (cols.stop - cols.start)
        return Unit(u, group, (ParamBlock(lay.param, rows, cols),), size)

    def _offsets(self) -> np.ndarray:
        return np.array([lay.offset for lay in self.layouts], dtype=np.int64)

    def group_offsets(self) -> np.ndarray:
        if self.structure is Structure.BLOCK:
            return np.array([lay.offset for lay in self.layouts] + [self.n_units], dtype=np.int64)
        return np.arange(0, self.n_units + 1, self.m, dtype=np.int64)

    def unit_param(self) -> torch.Tensor:
        return torch.cat([torch.full((lay.n_units,), i, dtype=torch.long) for i, lay in enumerate(self.layouts)]
                         ) if self.layouts else torch.empty(0, dtype=torch.long)

    def entry_unit(self, lay: WeightLayout) -> torch.Tensor:
        """Unit index of every entry of the weight, shaped like the weight."""
        r = torch.arange(lay.rows) // lay.tile[0]
        c = torch.arange(lay.cols) // lay.tile[1]
        return (lay.offset + r[:, None] * lay.grid[1] + c[None, :]).reshape(lay.shape)

    def unit_sizes(self, lay: WeightLayout) -> torch.Tensor:
        return torch.bincount(self.entry_unit(lay).flatten() - lay.offset, minlength=lay.n_units)


def build_weight_units(trace: Trace, structure: Structure, block: tuple[int, int],
                       nm: Optional[tuple[int, int]]) -> WeightUnits:
    layouts: list[WeightLayout] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    m = nm[1] if structure is Structure.NM else 1
    offset = 0
    for node in trace.graph.nodes:
        if node.op != "call_function" or op_name(node) not in WEIGHT_OPS:
            continue
        w = trace.param_name(node.args[1])
        if w is None or w in seen:
            continue
        seen.add(w)
        shape = trace.shape(node.args[1])
        rows, cols = shape[0], int(math.prod(shape[1:]))
        groups = _groups(node)
        if structure is Structure.BLOCK:
            if groups > 1 and shape[1] == 1:
                skipped.append((w, "depthwise weight (too small to block)"))
                continue
            tile = tuple(int(t) for t in block)
        else:
            if cols % m:
                skipped.append((w, f"input size {cols} is not a multiple of M={m}"))
                continue
            tile = (1, 1)
        grid = (math.ceil(rows / tile[0]), math.ceil(cols / tile[1]))
        layouts.append(WeightLayout(w, shape, offset, offset // m, rows, cols, tile, grid))
        offset += grid[0] * grid[1]
    return WeightUnits(structure, layouts, m, skipped)


def _groups(node) -> int:
    name = op_name(node)
    if name in ("convolution", "_convolution"):
        return int(node.args[8])
    if name == "linear":
        return 1
    idx = 6
    return int(node.args[idx]) if len(node.args) > idx else int(node.kwargs.get("groups", 1))
