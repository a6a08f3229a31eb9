"""Small value types of the pruning graph.

A :class:`Unit` is the smallest thing a pruner can remove. It owns a tuple of slices, each
naming a parameter (or buffer) by its ``state_dict`` key and the entries that go with the unit.

Channel example: unit 0 of a ``conv -> bn -> conv`` chain with ``group_size=2`` owns::

    ParamSlice("conv1.weight", 0, slice(0, 2))   # output rows of the producer
    ParamSlice("conv1.bias", 0, slice(0, 2))
    ParamSlice("bn.weight", 0, slice(0, 2))      # ... bn.bias, bn.running_mean, bn.running_var
    ParamSlice("conv2.weight", 1, slice(0, 2))   # input columns of the consumer

Block / N:M example: a block unit of ``fc.weight`` (shape (16, 32), block (8, 8)) owns::

    ParamBlock("fc.weight", rows=slice(8, 16), cols=slice(0, 8))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from ..choices import Choice
from ..errors import NpuCompressError


class PruningGraphError(NpuCompressError, ValueError):
    """Bad input to the pruning graph: unknown structure, bad N:M, keep vector of the wrong size."""


class Structure(Choice):
    """What a unit is: a group of coupled channels, a weight block, or one weight of an N:M group."""

    CHANNEL = "channel"
    BLOCK = "block"
    NM = "nm"

    @classmethod
    def parse(cls, value: "str | Structure", what: str = "structure", error: type = PruningGraphError) -> "Structure":
        return super().parse(value, what, error)


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """Entries ``param[..., index, ...]`` (``index`` along ``dim``) that go with a channel unit.

    ``index`` is a ``slice`` when the entries are contiguous, else a 1-D ``LongTensor``.
    >>> ParamSlice("fc.weight", 1, slice(0, 4)).indices().tolist()
    [0, 1, 2, 3]
    """

    param: str
    dim: int
    index: Union[slice, torch.Tensor]

    def indices(self) -> torch.Tensor:
        if isinstance(self.index, slice):
            return torch.arange(self.index.start, self.index.stop, dtype=torch.long)
        return self.index

    def __repr__(self) -> str:
        idx = self.index
        text = f"{idx.start}:{idx.stop}" if isinstance(idx, slice) else str(idx.tolist())
        return f"ParamSlice({self.param}, dim={self.dim}, [{text}])"


@dataclass(frozen=True)
class ParamBlock:
    """A rectangle of a weight viewed as a matrix ``(shape[0], prod(shape[1:]))``.

    Used by block and N:M units; ``ParamBlock("w", slice(0, 8), slice(8, 16))`` is
    ``w.reshape(w.shape[0], -1)[0:8, 8:16]``.
    """

    param: str
    rows: slice
    cols: slice


@dataclass(frozen=True, eq=False)
class Unit:
    """One removable unit: its index, its group, its slices and its size.

    ``size`` is the number of channels (channel structure: counted on the widest member of the
    group), or of weights (block, N:M). A pruner must keep at least one unit of every channel group.
    """

    index: int
    group: int
    slices: tuple
    size: int


@dataclass(frozen=True)
class FreezeRecord:
    """Why some channels were made unprunable: the op, the node and a reason."""

    node: str
    op: str
    reason: str


def slice_or_tensor(idx: np.ndarray) -> Union[slice, torch.Tensor]:
    """Sorted unique indices as a ``slice`` when contiguous, else a LongTensor."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return torch.as_tensor(idx, dtype=torch.long)
