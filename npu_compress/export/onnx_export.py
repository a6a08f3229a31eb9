"""``export_onnx``: a pruned model (or a ``prune`` checkpoint) -> simplified, verified ONNX + report.

- channel: the physically pruned copy is exported (``graph.remove_pruned``);
- block / N:M: the dense-with-zeros model is exported and simplified, then its pruned weights are
  rewritten into packed forms (:mod:`.pack`);
- always: ``onnx.checker``, then onnxruntime vs the torch (masked) model on random inputs and any
  given real samples; the file appears only when all of that passed (temp file + rename).

    report = export_onnx(model, "model.onnx", example_inputs=(x,))     # model finalized by a pruner
    report = export_onnx("digits.ckpt", "digits.onnx")                  # or a checkpoint
"""
from __future__ import annotations

import copy
import io
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .._version import __version__
from ..checkpoint import CheckpointError, PruneCheckpoint
from ..errors import NpuCompressError
from ..graph import build, remove_pruned
from ..graph_cost import predict, weight_formats
from ..hardware.cost import estimate
from ..hardware.profile import HardwareProfile, load_profile, profile_from_dict
from ..io import atomic_path
from ..modelspec import load_model
from .pack import pack_weights
from .report import ExportReport, onnx_weight_bytes
from .verify import DEFAULT_TOLERANCE, compare

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)


class ExportError(NpuCompressError, RuntimeError):
    """torch.onnx.export, onnxsim or the ONNX checker failed."""


@dataclass
class _Job:
    """Everything an export needs, whatever it was given."""

    masked: nn.Module  # the model as trained: pruned units are zeros, original shapes
    example: torch.Tensor  # (1, ...) example input
    profile: HardwareProfile
    structure: str  # "dense" | "channel" | "block" | "nm"
    graph: Any = None
    keep: torch.Tensor | None = None
    budget: str | None = None
    nm: tuple[int, int] = (2, 4)


def attach_result(model: nn.Module, result: Any) -> None:
    """Let ``model`` carry its pruning result to ``export_onnx`` (done by ``Pruner.finalize``)."""
    object.__setattr__(model, "_npu_compress_result", _Shared(result))


class _Shared:
    """A reference that deep copies share (a model's copy points to the same pruning result)."""

    def __init__(self, value: Any):
        self.value = value

    def __deepcopy__(self, memo: dict) -> "_Shared":
        return self


def _from_checkpoint(path: Path) -> _Job:
    ckpt = PruneCheckpoint.load(path)
    loaded = load_model(ckpt.model_spec, tuple(ckpt.input_shape))
    try:
        loaded.module.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit model '{ckpt.model_spec}' "
                              f"(was it written for another model?): {str(e).splitlines()[0]}") from None
    profile = profile_from_dict(tomllib.loads(ckpt.profile_toml), where=f"{path} (profile)")
    example = torch.zeros(1, *ckpt.input_shape[1:])
    graph = build(loaded.module, (example,), profile, ckpt.structure, nm=tuple(ckpt.nm), group_size=ckpt.group_size)
    if graph.num_units != len(ckpt.keep):
        raise CheckpointError(f"checkpoint '{path}' has {len(ckpt.keep)} units but model '{ckpt.model_spec}' has "
                              f"{graph.num_units} with structure {ckpt.structure}: written for another model")
    return _Job(loaded.module, example, profile, ckpt.structure, graph, ckpt.keep.bool(), ckpt.budget, tuple(ckpt.nm))


def _from_model(model: nn.Module, example_inputs: Any, profile: Any) -> _Job:
    if example_inputs is None:
        raise NpuCompressError("export_onnx(model, ...) needs example_inputs, e.g. (torch.randn(1, 3, 32, 32),)")
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    shared = getattr(model, "_npu_compress_result", None)
    if shared is None:
        return _Job(model, example[:1], load_profile(profile) if profile is not None else load_profile(), "dense")
    result = shared.value
    return _Job(model, example[:1], load_profile(profile) if profile is not None else _result_profile(result),
                result.graph.structure.value, result.graph, result.keep, str(result.budget), result.graph.nm or (2, 4))


def _result_profile(result: Any) -> HardwareProfile:
    return load_profile(result.dense.profile)


def _to_onnx(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    """torch.onnx.export (TorchScript exporter) with a dynamic batch axis, then onnxsim."""
    import onnxsim

    buf = io.BytesIO()
    n_out = len(_outputs(model, example))
    names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    axes = {"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=names, dynamic_axes=axes)
        proto = onnx.load_from_string(buf.getvalue())
        simplified, ok = onnxsim.simplify(proto)
    except Exception as e:
        raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
    if not ok:
        raise ExportError("onnxsim could not validate the simplified graph")
    return simplified


def _outputs(model: nn.Module, example: torch.Tensor) -> list:
    with torch.no_grad():
        out = model.eval()(example)
    return [out] if isinstance(out, torch.Tensor) else list(out)


def export_onnx(model_or_checkpoint: nn.Module | str | Path, path: str | Path, example_inputs: Any = None,
                profile: str | HardwareProfile | None = None, structure: str | None = None, opset: int = 17,
                verify: bool = True,
                tolerance: float = DEFAULT_TOLERANCE, samples: torch.Tensor | None = None,
                reference: nn.Module | None = None) -> ExportReport:
    """Export, simplify, (pack), check and verify; write ``path`` atomically; return the report.

    ``structure``: optional check; the structure is the one the model was pruned with.
    ``samples``: real inputs to verify on besides random ones. ``reference``: the torch model to
    verify against (default: the masked model as trained).
    """
    src = model_or_checkpoint
    job = _from_checkpoint(Path(src)) if isinstance(src, (str, Path)) else _from_model(src, example_inputs, profile)
    if structure is not None and structure != job.structure:
        raise NpuCompressError(f"structure='{structure}' was asked for, but the model was pruned with structure "
                               f"'{job.structure}' (dense: not pruned); export it as '{job.structure}'")
    was_training = job.masked.training
    job.masked.eval()
    try:
        return _export(job, Path(path), opset, verify, tolerance, samples, reference or job.masked)
    finally:
        job.masked.train(was_training)


def _export(job: _Job, path: Path, opset: int, verify: bool, tolerance: float, samples: torch.Tensor | None,
            reference: nn.Module) -> ExportReport:
    channel = job.structure == "channel"
    exported_model = remove_pruned(job.masked, job.graph, job.keep) if channel else copy.deepcopy(job.masked)
    proto = _to_onnx(exported_model, job.example, opset)
    # the dense model's ONNX weights, to show what pruning saved in the file
    dense_bytes = onnx_weight_bytes(_to_onnx(job.masked, job.example, opset) if channel else proto)
    packed = pack_weights(proto, job.structure, tuple(job.profile.tiling.block), job.nm) \
        if job.structure in ("block", "nm") else []
    onnx.helper.set_model_props(proto, {**{e.key: e.value for e in proto.metadata_props},
                                        "npu_compress.version": __version__, "npu_compress.profile": job.profile.name,
                                        "npu_compress.structure": job.structure,
                                        "npu_compress.budget": job.budget or ""})
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails the ONNX checker: {e}") from None
    verification = None
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        if verify:
            batches = [torch.randn(4, *job.example.shape[1:], generator=torch.Generator().manual_seed(0))]
            if samples is not None:
                batches.append(samples)
            verification = compare(tmp, reference, batches, tolerance)
            if not verification.passed:
                from ..errors import VerificationError
                raise VerificationError(f"'{path}' would differ from the torch model: max abs error "
                                        f"{verification.max_abs_error:.3g} > tolerance {tolerance:g} x output scale "
                                        f"{verification.scale:.3g}; nothing written")
    return _report(job, path, exported_model, proto, dense_bytes, packed, verification, opset)


def _report(job: _Job, path: Path, exported_model: nn.Module, proto: onnx.ModelProto, dense_bytes: int,
            packed: list, verification: Any, opset: int) -> ExportReport:
    dense = estimate(job.masked, job.example, job.profile)
    if job.structure == "channel":
        pruned = estimate(exported_model, job.example, job.profile)
    elif job.structure in ("block", "nm"):
        pruned = estimate(job.masked, job.example, job.profile, formats=weight_formats(job.graph, job.keep))
    else:
        pruned = dense
    predicted = predict(job.graph, job.keep, job.profile) if job.graph is not None else None
    return ExportReport(path=str(path), structure=job.structure, profile=job.profile.name, opset=opset,
                        file_bytes=path.stat().st_size, onnx_weight_bytes=onnx_weight_bytes(proto),
                        onnx_dense_weight_bytes=dense_bytes, dense=dense, pruned=pruned, predicted=predicted,
                        verification=verification, packed=packed,
                        unprunable=job.graph.report().splitlines() if job.graph is not None else [])
