"""Union-find over channel elements, and what the walk over the graph records.

Each producer channel (a conv/linear output row) is an *element*. Ops that tie channels together
union their elements: ``a + b`` unions ``a[c]`` with ``b[c]``; ``chunk`` unions the same offset
of every chunk; a depthwise conv passes its input elements through. A *class* (a set of
unioned elements) is what is removed at once; a *group* is a set of classes that share
producers, e.g. two residual branches::

    conv1 (elements 0..7) --+-- add --> conv3
    conv2 (elements 8..15) -+
    union(0, 8), union(1, 9), ...  ->  8 classes {0,8} .. {7,15}, one group {conv1, conv2}

Parameters attach to elements: ``Attach("bn.weight", 0, idx=[0..7], elem=[0..7])`` says entry
``i`` of ``bn.weight`` goes with element ``elem[i]``. Two elements attached to the same entry
are unioned (shared weights stay consistent).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .types import FreezeRecord

log = logging.getLogger(__name__)


@dataclass
class Attach:
    param: str
    dim: int
    idx: np.ndarray  # entry along dim
    elem: np.ndarray  # element each entry goes with


@dataclass
class AttrFix:
    """A module attribute that counts kept elements, e.g. ``attn.num_heads`` = kept heads; ``attr`` may
    name one entry of a list attribute, ``splits[1]``."""

    module: str
    attr: str
    elems: np.ndarray  # one representative element per counted thing


@dataclass
class NormStats:
    """A LayerNorm whose statistics run over tracked channels: masked at run time (``masked_norm.py``)."""

    module: str
    shape: tuple[int, ...]  # its normalized_shape
    axis: int  # the channel axis within ``shape``
    elems: np.ndarray  # the element at each position along ``axis``


@dataclass
class ChannelState:
    parent: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)  # element -> producer id
    sources: list[str] = field(default_factory=list)  # producer id -> node name
    frozen: list[bool] = field(default_factory=list)
    attaches: list[Attach] = field(default_factory=list)
    attr_fixes: list[AttrFix] = field(default_factory=list)
    norm_stats: list[NormStats] = field(default_factory=list)
    keep_one: list[np.ndarray] = field(default_factory=list)  # element sets that must keep a channel
    freezes: list[tuple[FreezeRecord, np.ndarray]] = field(default_factory=list)
    unknown_params: dict[str, FreezeRecord] = field(default_factory=dict)
    # (node, input node, dim): the input's channel dim must not be ``dim`` (unbind along it)
    not_channel_dim: list[tuple[str, str, int]] = field(default_factory=list)

    # -- elements -------------------------------------------------------------------------
    def new_elements(self, n: int, node: str, frozen: bool = False) -> np.ndarray:
        src = len(self.sources)
        self.sources.append(node)
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.source.extend([src] * n)
        self.frozen.extend([frozen] * n)
        ids = np.arange(start, start + n, dtype=np.int64)
        if frozen and n:  # recorded, so that their whole group is frozen (nothing removes them at a source)
            self.freezes.append((FreezeRecord(node, "cat", "channels of an input the analysis does not track"), ids))
        return ids

    def find(self, e: int) -> int:
        parent = self.parent
        root = e
        while parent[root] != root:
            root = parent[root]
        while parent[e] != root:
            parent[e], e = root, parent[e]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.ravel(a).tolist(), np.ravel(b).tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def union_all(self, elems: np.ndarray) -> None:
        flat = np.ravel(elems)
        if flat.size > 1:
            self.union(flat[:1].repeat(flat.size - 1), flat[1:])

    # -- records --------------------------------------------------------------------------
    def freeze(self, elems: np.ndarray, node: str, op: str, reason: str) -> None:
        flat = np.unique(np.ravel(elems))
        if flat.size == 0:
            return
        for e in flat.tolist():
            self.frozen[e] = True
        self.freezes.append((FreezeRecord(node, op, reason), flat))
        log.debug("freeze %d channels at %s (%s): %s", flat.size, node, op, reason)

    def attach(self, param: str, dim: int, idx: np.ndarray, elem: np.ndarray) -> None:
        self.attaches.append(Attach(param, dim, np.asarray(idx, np.int64), np.asarray(elem, np.int64)))

    # -- results --------------------------------------------------------------------------
    def unify_attachments(self) -> None:
        """Elements attached to the same entry of the same parameter become one class."""
        by_key: dict[tuple[str, int], list[Attach]] = {}
        for a in self.attaches:
            by_key.setdefault((a.param, a.dim), []).append(a)
        for items in by_key.values():
            idx = np.concatenate([a.idx for a in items])
            elem = np.concatenate([a.elem for a in items])
            order = np.argsort(idx, kind="stable")
            idx, elem = idx[order], elem[order]
            same = idx[1:] == idx[:-1]
            self.union(elem[:-1][same], elem[1:][same])

    def classes(self) -> np.ndarray:
        """Class id per element (0..n_classes-1, ordered by smallest member)."""
        roots = np.array([self.find(e) for e in range(len(self.parent))], dtype=np.int64)
        _, cls = np.unique(roots, return_inverse=True)
        return cls.astype(np.int64)

    def groups(self, cls: np.ndarray) -> np.ndarray:
        """Group id per class: classes sharing a producer are in one group."""
        n_src = len(self.sources)
        parent = list(range(n_src))

        def find(s: int) -> int:
            while parent[s] != s:
                parent[s] = parent[parent[s]]
                s = parent[s]
            return s

        src = np.asarray(self.source, dtype=np.int64)
        first_src = np.full(cls.max() + 1 if cls.size else 0, -1, dtype=np.int64)
        for c, s in zip(cls.tolist(), src.tolist()):
            if first_src[c] < 0:
                first_src[c] = s
            else:
                a, b = find(first_src[c]), find(s)
                if a != b:
                    parent[max(a, b)] = min(a, b)
        roots = np.array([find(s) for s in first_src.tolist()], dtype=np.int64)
        _, grp = np.unique(roots, return_inverse=True)
        return grp.astype(np.int64)


def channel_axis(c: np.ndarray) -> Optional[int]:
    """The axis the class array ``c`` depends on alone (the tensor's channel dim), if any."""
    if c.ndim == 1:
        return 0
    for ax in sorted(range(c.ndim), key=lambda a: c.shape[a] == 1):
        first = c
        for other in range(c.ndim):
            if other != ax:
                first = first.take([0], axis=other)
        if np.array_equal(c, np.broadcast_to(first, c.shape)):
            return ax
    return None
