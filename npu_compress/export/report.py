"""The export report: costs before/after on the profile, file and weight bytes, verification."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from torch import nn

from ..hardware.cost import CostReport
from .quantize import Precision


def onnx_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers (weights, packed values and indices, shape constants)."""
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def _module_of(node: onnx.NodeProto, modules: dict[str, nn.Module]) -> str | None:
    """The module path a TorchScript-exported node came from: its name is the scope path, e.g.
    ``/features/features.1/conv/conv.0/Conv`` (each part a child's name, prefixed by its parent's
    attribute name inside containers)."""
    path = ""
    for part in node.name.strip("/").split("/")[:-1]:
        segments = part.split(".")
        tails = (".".join(segments[k:]) for k in range(len(segments)))
        path = next((c for c in (f"{path}.{t}" if path else t for t in tails) if c in modules), "")
        if not path:
            return None
    return path or None


def _dense_sizes(init: onnx.TensorProto, pruned: nn.Module, dense: nn.Module) -> list[int]:
    """Element counts the initializer would have in the unpruned model: matched by shape against the
    pruned module's parameters and buffers (a bias folded from a norm matches the weight's first dim)."""
    shape = tuple(init.dims)
    d_tensors = dict(dense.named_parameters(recurse=False)) | dict(dense.named_buffers(recurse=False))
    for name, t in list(pruned.named_parameters(recurse=False)) + list(pruned.named_buffers(recurse=False)):
        if name in d_tensors and shape in (tuple(t.shape), tuple(t.shape)[::-1]):  # MatMul holds weight.T
            return [d_tensors[name].numel()]
    w, dw = getattr(pruned, "weight", None), getattr(dense, "weight", None)
    if isinstance(w, torch.Tensor) and isinstance(dw, torch.Tensor) and w.dim() >= 2 and shape == (w.shape[0],):
        return [dw.shape[0]]
    return []


def dense_weight_bytes(proto: onnx.ModelProto, pruned: nn.Module, dense: nn.Module) -> int:
    """Initializer bytes the file would hold had nothing been removed, without exporting the dense model:
    each initializer of the channel-pruned export is sized as its consumer module's unpruned tensor
    (one read of the node scopes; initializers no module claims count as they are)."""
    p_modules, d_modules = dict(pruned.named_modules()), dict(dense.named_modules())
    inits = {i.name: i for i in proto.graph.initializer}
    d_named = dict(dense.named_parameters()) | dict(dense.named_buffers())
    dense_numel = {name: d_named[name].numel() for name in inits if name in d_named}  # kept their names
    for node in proto.graph.node:
        named = [x.rsplit(".", 1)[0] for x in node.input if x in d_named and "." in x]
        path = _module_of(node, p_modules) or (named[0] if named else None)  # a fused node: its named input's
        if path is None or path not in d_modules or path not in p_modules:
            continue
        for name in node.input:
            if name in inits and name not in d_named:
                sizes = _dense_sizes(inits[name], p_modules[path], d_modules[path])
                if sizes:
                    dense_numel[name] = max(dense_numel.get(name, 0), *sizes)
    total = 0
    for name, init in inits.items():
        arr = numpy_helper.to_array(init)
        total += dense_numel.get(name, arr.size) * arr.itemsize if arr.size else arr.nbytes
    return total


def _cost(r: CostReport | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"latency_s": r.latency_s, "memory_bytes": r.memory_bytes, "macs": r.macs, "params": r.params,
            "peak_activation_bytes": r.peak_activation_bytes}


@dataclass
class ExportReport:
    path: str
    structure: str  # dense | channel | block | nm
    profile: str
    opset: int
    file_bytes: int
    onnx_weight_bytes: int  # initializers in the file (packed values + indices for block / N:M)
    onnx_dense_weight_bytes: int  # initializers before packing
    dense: CostReport
    pruned: CostReport  # re-estimated from the exported (pruned or packed) model
    predicted: CostReport | None  # what the pruner's graph predicted for the keep-set
    verification: Any = None  # VerifyResult, or None with --no-verify
    packed: list = field(default_factory=list)  # PackedWeight per packed tensor
    unprunable: list = field(default_factory=list)  # the pruning graph's report lines
    precision: Precision = Precision.FP32  # what the file computes in: fp32 | int8 (QDQ)
    int8: Any = None  # AgreementResult of the int8 file vs the float torch model, or None
    calibrated_on: str | None = None  # where the int8 activation ranges came from

    @property
    def weight_bytes_ratio(self) -> float:
        """Weight bytes in the file / the cost model's memory bytes for the pruned model (1.0: the file
        stores what the budget counted; ~4 for a float32 file of an int8 chip)."""
        return self.onnx_weight_bytes / max(self.pruned.memory_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        v = self.verification
        return {"path": self.path, "structure": self.structure, "profile": self.profile, "opset": self.opset,
                "file_bytes": self.file_bytes, "onnx_weight_bytes": self.onnx_weight_bytes,
                "onnx_dense_weight_bytes": self.onnx_dense_weight_bytes,
                "dense": _cost(self.dense), "pruned": _cost(self.pruned), "predicted": _cost(self.predicted),
                "verification": None if v is None else {**dataclasses.asdict(v), "passed": v.passed},
                "packed": [dataclasses.asdict(p) for p in self.packed], "unprunable": self.unprunable,
                "precision": self.precision.value, "cost_memory_bytes": self.pruned.memory_bytes,
                "weight_bytes_ratio": self.weight_bytes_ratio, "calibrated_on": self.calibrated_on,
                "int8": None if self.int8 is None else {**dataclasses.asdict(self.int8), "drop_points": self.int8.drop,
                                                        "passed": self.int8.passed}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self) -> str:
        d, p = self.dense, self.pruned
        rows = [f"exported {self.structure} {self.precision} model -> {self.path} ({self.file_bytes:,} bytes, "
                f"opset {self.opset})",
                f"{'on ' + self.profile:<24}{'dense':>14}{'pruned':>14}{'ratio':>8}"]
        for label, a, b in (("latency (ms)", d.latency_s * 1e3, p.latency_s * 1e3),
                            ("memory (bytes)", d.memory_bytes, p.memory_bytes), ("MACs", d.macs, p.macs),
                            ("params", d.params, p.params)):
            fmt = ".4f" if isinstance(a, float) else ","
            rows.append(f"{label:<24}{a:>14{fmt}}{b:>14{fmt}}{(b / a if a else 1.0):>8.3f}")
        label = "ONNX weight bytes" if self.precision is Precision.FP32 else f"ONNX bytes fp32->{self.precision}"
        rows.append(f"{label:<24}{self.onnx_dense_weight_bytes:>14,}{self.onnx_weight_bytes:>14,}"
                    f"{self.onnx_weight_bytes / max(self.onnx_dense_weight_bytes, 1):>8.3f}")
        rows.append(f"weight bytes in file {self.onnx_weight_bytes:,} vs cost model memory {p.memory_bytes:,} "
                    f"({self.precision} file / {self.profile}): ratio {self.weight_bytes_ratio:.3f}")
        if self.packed:
            rows.append(f"packed tensors: {len(self.packed)} ({self.structure}, {self.precision} values)")
        v = self.verification
        label = "float check" if self.precision is not Precision.FP32 else "verification"
        rows.append(f"{label}: skipped" if v is None else
                    f"{label}: max abs error {v.max_abs_error:.2e}, max rel {v.max_rel_error:.2e} over "
                    f"{v.samples} samples (tolerance {v.tolerance:g} x output scale {v.scale:.3g}): "
                    f"{'passed' if v.passed else 'FAILED'}")
        if self.calibrated_on:
            rows.append(f"int8 calibration: {self.calibrated_on}")
        if self.precision is Precision.INT8:
            i = self.int8
            rows.append("int8 check: skipped" if i is None else
                        f"int8 check: {i.describe()}; gate agreement >= {100 * i.min_agreement:.1f}%"
                        + (f", drop <= {i.max_drop:g} points" if i.labelled else "") +
                        f": {'passed' if i.passed else 'FAILED'}")
        return "\n".join(rows)
