"""Which channel *element* every position of a tensor belongs to.

An element is one output channel of one producer (a conv/linear row). A tensor's
:class:`Info` lists, for its tracked dims, the element id at every position; positions along
untracked dims share the element of their tracked coordinates. Example: ``conv`` with 4 output
channels (elements 10..13) then ``flatten(1)`` of a (1, 4, 2, 2) tensor::

    Info(dims=(1,), ids=[10, 11, 12, 13])              # (1, 4, 2, 2)
    Info(dims=(1,), ids=[10,10,10,10, 11,11,11,11, ...])  # (1, 16): a channel owns 4 features

View-like ops are mapped generically: expand the ids to the full tensor, apply the op with
numpy, and drop the axes along which the ids no longer vary (:func:`compress`).

A :class:`ParamRef` is a tensor that is a view of a parameter: ``pmap[d]`` is the parameter dim
behind tensor dim ``d`` (None for an inserted dim). It lets ``x + self.pos_embed`` slice the
parameter along the channel dim.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Info:
    dims: tuple[int, ...]  # tracked dims, ascending
    ids: np.ndarray  # element ids, shape (shape[d] for d in dims)

    def elements(self) -> np.ndarray:
        return np.unique(self.ids)


@dataclass(frozen=True)
class ParamRef:
    name: str  # state_dict key
    pmap: tuple[Optional[int], ...]  # tensor dim -> parameter dim
    pshape: tuple[int, ...]  # the parameter's shape


def full(info: Info, shape: Sequence[int]) -> np.ndarray:
    """The ids broadcast over every dim of ``shape``."""
    view = [1] * len(shape)
    for d, n in zip(info.dims, info.ids.shape):
        view[d] = n
    return np.broadcast_to(info.ids.reshape(view), tuple(shape))


def compress(ids: np.ndarray) -> Optional[Info]:
    """Keep only the axes along which ``ids`` varies; None when nothing varies."""
    dims = []
    for ax in range(ids.ndim):
        first = ids.take([0], axis=ax) if ids.shape[ax] else ids
        if ids.shape[ax] > 1 and not np.array_equal(ids, np.broadcast_to(first, ids.shape)):
            dims.append(ax)
        else:
            ids = first
    if not dims:
        return None
    squeeze = tuple(ax for ax in range(ids.ndim) if ax not in dims)
    return Info(tuple(dims), np.ascontiguousarray(ids.squeeze(axis=squeeze)))


def reshape_info(info: Info, in_shape: Sequence[int], out_shape: Sequence[int]) -> Optional[Info]:
    return compress(np.ascontiguousarray(full(info, in_shape)).reshape(tuple(out_shape)))


def permute_info(info: Info, order: Sequence[int]) -> Info:
    order = list(order)
    new_dims = sorted(order.index(d) for d in info.dims)
    # axes of ids follow info.dims; reorder them to the new ascending dims
    src = [info.dims.index(order[nd]) for nd in new_dims]
    return Info(tuple(new_dims), np.ascontiguousarray(info.ids.transpose(src)))


def take_info(info: Info, dim: int, index: int) -> Optional[Info]:
    """Select one position along ``dim`` (which disappears)."""
    ids, dims = info.ids, list(info.dims)
    if dim in dims:
        ids = ids.take(index, axis=dims.index(dim))
        dims.remove(dim)
    dims = [d - 1 if d > dim else d for d in dims]
    return Info(tuple(dims), ids) if dims else None


def split_info(info: Info, dim: int, sizes: Sequence[int]) -> list[Optional[Info]]:
    """Cut ``info`` into pieces of ``sizes`` along ``dim``."""
    if dim not in info.dims:
        return [info] * len(sizes)
    ax = info.dims.index(dim)
    cuts = np.cumsum(sizes)[:-1]
    return [Info(info.dims, np.ascontiguousarray(p)) for p in np.split(info.ids, cuts, axis=ax)]


def shift_dims(info: Info, removed: Sequence[int]) -> Optional[Info]:
    """Renumber tracked dims after untracked dims ``removed`` disappear (a reduction)."""
    dims = tuple(d - sum(r < d for r in removed) for d in info.dims)
    return Info(dims, info.ids)


def param_view(ref: ParamRef, in_shape: Sequence[int], out_shape: Sequence[int]) -> Optional[ParamRef]:
    """A view that only inserts / removes size-1 dims (or expands them) keeps the mapping."""
    real_in = [(d, s) for d, s in enumerate(in_shape) if s != 1]
    real_out = [(d, s) for d, s in enumerate(out_shape) if s != 1]
    if [s for _, s in real_in] == [s for _, s in real_out]:
        pmap: list[Optional[int]] = [None] * len(out_shape)
        for (di, _), (do, _) in zip(real_in, real_out):
            pmap[do] = ref.pmap[di]
        return ParamRef(ref.name, tuple(pmap), ref.pshape)
    return None


def param_expand(ref: ParamRef, in_shape: Sequence[int], out_shape: Sequence[int]) -> ParamRef:
    lead = len(out_shape) - len(in_shape)
    return ParamRef(ref.name, (None,) * lead + tuple(ref.pmap), ref.pshape)


def param_permute(ref: ParamRef, order: Sequence[int]) -> ParamRef:
    return ParamRef(ref.name, tuple(ref.pmap[o] for o in order), ref.pshape)
