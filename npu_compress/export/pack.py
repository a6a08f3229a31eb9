"""Rewrite pruned weight initializers of an ONNX graph into packed forms built of standard ops.

Weights are found from the graph itself (Conv weights, Gemm / MatMul right-hand initializers),
viewed in torch layout ``(out, in*kh*kw)``; which entries are zero decides what is packed, so
the packed graph computes exactly what the dense-with-zeros graph computes.

- block ``(bo, bi)``: ``values (nnz, bo, bi)`` + ``index (nnz, 2)`` (block row, block column; uint8 when
  the grid has under 256 block rows and columns, else uint16 — the 2 bytes per block the cost model counts);
  ``ConstantOfShape (R, C, bo, bi) -> ScatterND(Cast(index)) -> Transpose(0, 2, 1, 3) -> Reshape
  (R*bo, C*bi) -> Slice (out, in*k) -> Reshape (weight shape)``.
- N:M: ``values (out, G, N)`` + ``index`` (position within each group of M) bit-packed at
  ``b = ceil(log2 M)`` bits (rounded up to 1, 2, 4 or 8), ``8 / b`` positions per uint8 byte, as the cost
  model's ``nm_index_bits`` counts them; unpacked in the graph by integer ``Div`` / ``Mod``:
  ``Cast(int32) -> Unsqueeze -> Div(2^(b*j)) -> Mod(2^b) -> Reshape -> Slice -> Reshape (out, G, N) ->
  Cast(int64) -> ScatterElements(ConstantOfShape (out, G, M), axis=2) -> Reshape (weight shape)``.

In a QDQ int8 graph the int8 weight behind each ``DequantizeLinear`` is what gets packed (int8
values + indices, then the DequantizeLinear as before), so the file holds the bytes an int8 chip
stores. A weight is packed only when that makes it smaller. Layout goes in ``metadata_props``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..hardware.cost import FormatKind


@dataclass(frozen=True)
class PackedWeight:
    name: str
    format: FormatKind  # BLOCK | NM
    shape: tuple[int, ...]
    density: float  # kept blocks / all blocks, or N / M
    dense_bytes: int
    value_bytes: int
    index_bytes: int


def _weight_users(graph: onnx.GraphProto) -> dict[str, bool]:
    """Initializer name -> whether its torch layout is its transpose (Gemm transB=0, MatMul).

    In a QDQ graph a weight reaches its Conv / Gemm / MatMul through a ``DequantizeLinear``: the
    int8 initializer behind it is the weight (symmetric per-channel: a pruned 0 is an int8 0)."""
    inits = {i.name for i in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits}

    def source(name: str) -> str | None:
        return name if name in inits else dequantized.get(name)

    users: dict[str, bool] = {}
    for node in graph.node:
        weight = source(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue
        if node.op_type == "Conv":
            users[weight] = False
        elif node.op_type == "Gemm":
            users[weight] = not next((a.i for a in node.attribute if a.name == "transB"), 0)
        elif node.op_type == "MatMul":
            users[weight] = True
    return users


def _as_matrix(w: np.ndarray, transposed: bool) -> np.ndarray:
    m = w.T if transposed else w
    return m.reshape(m.shape[0], -1)  # (out, in*kh*kw)


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _block_nodes(name: str, w: np.ndarray, transposed: bool, bo: int, bi: int):
    mat = _as_matrix(w, transposed)
    rows, cols = mat.shape
    r_blocks, c_blocks = math.ceil(rows / bo), math.ceil(cols / bi)
    padded = np.zeros((r_blocks * bo, c_blocks * bi), dtype=mat.dtype)
    padded[:rows, :cols] = mat
    blocks = padded.reshape(r_blocks, bo, c_blocks, bi).transpose(0, 2, 1, 3)  # (R, C, bo, bi)
    nonzero = np.abs(blocks).reshape(r_blocks, c_blocks, -1).max(axis=2) > 0
    index = np.argwhere(nonzero).astype(np.uint8 if max(r_blocks, c_blocks) <= 256 else np.uint16)  # (nnz, 2)
    values = blocks[nonzero]  # (nnz, bo, bi)
    p = f"{name}__packed"
    inits = [_const(f"{p}_values", values), _const(f"{p}_index", index),
             _const(f"{p}_grid", np.array([r_blocks, c_blocks, bo, bi], dtype=np.int64)),
             _const(f"{p}_flat", np.array([r_blocks * bo, c_blocks * bi], dtype=np.int64)),
             _const(f"{p}_starts", np.array([0, 0], dtype=np.int64)),
             _const(f"{p}_ends", np.array([rows, cols], dtype=np.int64)),
             _const(f"{p}_shape", np.array(w.T.shape if transposed else w.shape, dtype=np.int64))]
    zero = helper.make_tensor(f"{p}_zero", onnx_dtype(w.dtype), [1], [0])
    nodes = [helper.make_node("ConstantOfShape", [f"{p}_grid"], [f"{p}_z"], value=zero),
             helper.make_node("Cast", [f"{p}_index"], [f"{p}_i64"], to=TensorProto.INT64),
             helper.make_node("ScatterND", [f"{p}_z", f"{p}_i64", f"{p}_values"], [f"{p}_s"]),
             helper.make_node("Transpose", [f"{p}_s"], [f"{p}_t"], perm=[0, 2, 1, 3]),
             helper.make_node("Reshape", [f"{p}_t", f"{p}_flat"], [f"{p}_m"]),
             helper.make_node("Slice", [f"{p}_m", f"{p}_starts", f"{p}_ends"], [f"{p}_c"]),
             helper.make_node("Reshape", [f"{p}_c", f"{p}_shape"], [name if not transposed else f"{p}_w"])]
    if transposed:
        nodes.append(helper.make_node("Transpose", [f"{p}_w"], [name], perm=list(range(w.ndim))[::-1]))
    density = len(index) / max(r_blocks * c_blocks, 1)
    return nodes, inits, density, values.nbytes, index.nbytes


def _nm_nodes(name: str, w: np.ndarray, transposed: bool, n: int, m: int):
    mat = _as_matrix(w, transposed)
    rows, cols = mat.shape
    if cols % m or m > 256:
        return None
    groups = mat.reshape(rows, cols // m, m)  # (out, G, M)
    if int((groups != 0).sum(axis=2).max(initial=0)) > n:
        return None  # some group keeps more than N: not N:M
    # the N largest magnitudes per group hold every non-zero; ties among zeros are harmless
    index = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n]  # (out, G, N)
    values = np.take_along_axis(groups, index, axis=2)
    p = f"{name}__packed"
    packed_index, unpack = _bit_packed(p, index, m)
    inits = [_const(f"{p}_values", values), *packed_index,
             _const(f"{p}_grid", np.array([rows, cols // m, m], dtype=np.int64)),
             _const(f"{p}_shape", np.array(w.T.shape if transposed else w.shape, dtype=np.int64))]
    zero = helper.make_tensor(f"{p}_zero", onnx_dtype(w.dtype), [1], [0])
    nodes = [*unpack, helper.make_node("ConstantOfShape", [f"{p}_grid"], [f"{p}_z"], value=zero),
             helper.make_node("ScatterElements", [f"{p}_z", f"{p}_i64", f"{p}_values"], [f"{p}_s"], axis=2),
             helper.make_node("Reshape", [f"{p}_s", f"{p}_shape"], [name if not transposed else f"{p}_w"])]
    if transposed:
        nodes.append(helper.make_node("Transpose", [f"{p}_w"], [name], perm=list(range(w.ndim))[::-1]))
    index_bytes = numpy_helper.to_array(packed_index[0]).nbytes
    return nodes, inits, n / m, values.nbytes, index_bytes


def _bit_packed(p: str, index: np.ndarray, m: int) -> tuple[list[TensorProto], list]:
    """Positions in [0, m) packed ``8 // b`` to a byte, and the nodes that unpack them to ``{p}_i64``.

    >>> # M = 4 -> b = 2: positions [1, 3, 0, 2] -> one byte 1 + 3*4 + 0*16 + 2*64 = 141
    """
    bits = next(b for b in (1, 2, 4, 8) if (1 << b) >= m)
    per_byte = 8 // bits
    flat = index.reshape(-1).astype(np.int64)
    padded = np.zeros(math.ceil(len(flat) / per_byte) * per_byte, dtype=np.int64)
    padded[:len(flat)] = flat
    weights = (1 << (bits * np.arange(per_byte))).astype(np.int64)  # (f,)
    packed = (padded.reshape(-1, per_byte) * weights).sum(axis=1).astype(np.uint8)  # (P,)
    inits = [_const(f"{p}_index", packed), _const(f"{p}_div", weights.astype(np.int32)),
             _const(f"{p}_mod", np.array([1 << bits], dtype=np.int32)),
             _const(f"{p}_ax", np.array([1], dtype=np.int64)),
             _const(f"{p}_flatn", np.array([-1], dtype=np.int64)),
             _const(f"{p}_n0", np.array([0], dtype=np.int64)), _const(f"{p}_nk", np.array([len(flat)], dtype=np.int64)),
             _const(f"{p}_ishape", np.array(index.shape, dtype=np.int64))]
    nodes = [helper.make_node("Cast", [f"{p}_index"], [f"{p}_i32"], to=TensorProto.INT32),
             helper.make_node("Unsqueeze", [f"{p}_i32", f"{p}_ax"], [f"{p}_u"]),  # (P, 1)
             helper.make_node("Div", [f"{p}_u", f"{p}_div"], [f"{p}_d"]),  # (P, f)
             helper.make_node("Mod", [f"{p}_d", f"{p}_mod"], [f"{p}_r"]),
             helper.make_node("Reshape", [f"{p}_r", f"{p}_flatn"], [f"{p}_rf"]),
             helper.make_node("Slice", [f"{p}_rf", f"{p}_n0", f"{p}_nk"], [f"{p}_rs"]),
             helper.make_node("Reshape", [f"{p}_rs", f"{p}_ishape"], [f"{p}_ri"]),
             helper.make_node("Cast", [f"{p}_ri"], [f"{p}_i64"], to=TensorProto.INT64)]
    return inits, nodes


def onnx_dtype(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def pack_weights(model: onnx.ModelProto, fmt: FormatKind | str, block: tuple[int, int] = (16, 16),
                 nm: tuple[int, int] = (2, 4)) -> list[PackedWeight]:
    """Pack, in place, every weight whose zeros make the ``fmt`` form smaller. Returns what was packed."""
    fmt = FormatKind.parse(fmt, "packed format")
    is_block = fmt is FormatKind.BLOCK
    graph = model.graph
    users = _weight_users(graph)
    packed: list[PackedWeight] = []
    keep_inits, new_nodes, new_inits = [], [], []
    for init in graph.initializer:
        if init.name not in users or len(init.dims) < 2:
            keep_inits.append(init)
            continue
        w = numpy_helper.to_array(init)
        made = _block_nodes(init.name, w, users[init.name], *block) if is_block else \
            _nm_nodes(init.name, w, users[init.name], *nm)
        if made is None or made[3] + made[4] >= w.nbytes:
            keep_inits.append(init)
            continue
        nodes, inits, density, value_bytes, index_bytes = made
        new_nodes += nodes
        new_inits += inits
        packed.append(PackedWeight(init.name, fmt, tuple(w.shape), density, w.nbytes, value_bytes, index_bytes))
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)  # the weights are computed before anything reads them
    layout = {"format": fmt.value, "block": list(block) if is_block else None,
              "n": None if is_block else nm[0], "m": None if is_block else nm[1],
              "tensors": {p.name: {"shape": list(p.shape), "density": round(p.density, 6)} for p in packed}}
    helper.set_model_props(model, {**{e.key: e.value for e in model.metadata_props},
                                   "npu_compress.sparse_layout": json.dumps(layout)})
    return packed
