"""Rewrite pruned weight initializers of an ONNX graph into packed forms built of standard ops.

Weights are found from the graph itself (Conv weights, Gemm / MatMul right-hand initializers),
viewed in torch layout ``(out, in*kh*kw)``; which entries are zero decides what is packed, so
the packed graph computes exactly what the dense-with-zeros graph computes.

- block ``(bo, bi)``: ``values (nnz, bo, bi)`` + int32 ``index (nnz, 2)`` (block row, block column);
  ``ConstantOfShape (R, C, bo, bi) -> ScatterND(Cast(index)) -> Transpose(0, 2, 1, 3) -> Reshape
  (R*bo, C*bi) -> Slice (out, in*k) -> Reshape (weight shape)``.
- N:M: ``values (out, G, N)`` + uint8 ``index (out, G, N)`` (position within each group of M);
  ``ConstantOfShape (out, G, M) -> ScatterElements(Cast(index), axis=2) -> Reshape (weight shape)``.

A weight is packed only when that makes it smaller. Layout goes in ``metadata_props``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class PackedWeight:
    name: str
    format: str  # "block" | "nm"
    shape: tuple[int, ...]
    density: float  # kept blocks / all blocks, or N / M
    dense_bytes: int
    value_bytes: int
    index_bytes: int


def _weight_users(graph: onnx.GraphProto) -> dict[str, bool]:
    """Initializer name -> whether its torch layout is its transpose (Gemm transB=0, MatMul)."""
    inits = {i.name for i in graph.initializer}
    users: dict[str, bool] = {}
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
            users[node.input[1]] = False
        elif node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in inits:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            users[node.input[1]] = not trans_b
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in inits:
            users[node.input[1]] = True
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
    index = np.argwhere(nonzero).astype(np.int32)  # (nnz, 2); cast to int64 in the graph
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
    # positions within a group of M fit a byte; cast to int64 in the graph
    index = np.argsort(-np.abs(groups), axis=2, kind="stable")[:, :, :n].astype(np.uint8)  # (out, G, N)
    values = np.take_along_axis(groups, index.astype(np.int64), axis=2)
    p = f"{name}__packed"
    inits = [_const(f"{p}_values", values), _const(f"{p}_index", index),
             _const(f"{p}_grid", np.array([rows, cols // m, m], dtype=np.int64)),
             _const(f"{p}_shape", np.array(w.T.shape if transposed else w.shape, dtype=np.int64))]
    zero = helper.make_tensor(f"{p}_zero", onnx_dtype(w.dtype), [1], [0])
    nodes = [helper.make_node("ConstantOfShape", [f"{p}_grid"], [f"{p}_z"], value=zero),
             helper.make_node("Cast", [f"{p}_index"], [f"{p}_i64"], to=TensorProto.INT64),
             helper.make_node("ScatterElements", [f"{p}_z", f"{p}_i64", f"{p}_values"], [f"{p}_s"], axis=2),
             helper.make_node("Reshape", [f"{p}_s", f"{p}_shape"], [name if not transposed else f"{p}_w"])]
    if transposed:
        nodes.append(helper.make_node("Transpose", [f"{p}_w"], [name], perm=list(range(w.ndim))[::-1]))
    return nodes, inits, n / m, values.nbytes, index.nbytes


def onnx_dtype(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def pack_weights(model: onnx.ModelProto, fmt: str, block: tuple[int, int] = (16, 16),
                 nm: tuple[int, int] = (2, 4)) -> list[PackedWeight]:
    """Pack, in place, every weight whose zeros make the ``fmt`` form smaller. Returns what was packed."""
    graph = model.graph
    users = _weight_users(graph)
    packed: list[PackedWeight] = []
    keep_inits, new_nodes, new_inits = [], [], []
    for init in graph.initializer:
        if init.name not in users or len(init.dims) < 2:
            keep_inits.append(init)
            continue
        w = numpy_helper.to_array(init)
        made = _block_nodes(init.name, w, users[init.name], *block) if fmt == "block" else \
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
    layout = {"format": fmt, "block": list(block) if fmt == "block" else None,
              "n": nm[0] if fmt == "nm" else None, "m": nm[1] if fmt == "nm" else None,
              "tensors": {p.name: {"shape": list(p.shape), "density": round(p.density, 6)} for p in packed}}
    helper.set_model_props(model, {**{e.key: e.value for e in model.metadata_props},
                                   "npu_compress.sparse_layout": json.dumps(layout)})
    return packed
