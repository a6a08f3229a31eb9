"""``export_onnx``: a pruned model (or a ``prune`` checkpoint) -> simplified, verified ONNX + report.

- channel: the physically pruned copy is exported (``graph.remove_pruned``);
- block / N:M: the dense-with-zeros model is exported and simplified, then its pruned weights are
  rewritten into packed forms (:mod:`.pack`);
- int8 (the default on an int8 profile): the verified float graph is quantized to QDQ
  (:mod:`.quantize`), packing acts on the int8 weights (checked: packed == unpacked), and the
  file is judged by top-1 agreement and accuracy against the float torch model (:mod:`.agreement`);
- always: ``onnx.checker``, then onnxruntime vs the torch (masked) model on random inputs and any
  given real samples; the file appears only when all of that passed (temp file + rename).

    report = export_onnx(model, "model.onnx", result=pruner.finalize())  # a model a pruner finalized
    report = export_onnx("digits.ckpt", "digits.onnx")                  # or a checkpoint
"""
from __future__ import annotations

import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .._version import __version__
from ..data import Dataset
from ..errors import NpuCompressError, VerificationError
from ..graph import remove_pruned
from ..graph_cost import predict, weight_formats
from ..hardware.cost import estimate
from ..hardware.profile import HardwareProfile
from ..io import atomic_path, check_output
from .agreement import AgreementResult, IntGate, check_agreement
from .job import FLOAT_CHECK_SAMPLES, RANDOM_CHECK_SAMPLES, Job, as_dataset, job_from, random_inputs
from .pack import pack_weights
from .quantize import Calibration, Precision, quantize_qdq
from .report import ExportReport, dense_weight_bytes, onnx_weight_bytes
from .verify import DEFAULT_TOLERANCE, OrtRunner, compare

log = logging.getLogger(__name__)


class ExportError(NpuCompressError, RuntimeError):
    """torch.onnx.export, onnxsim or the ONNX checker failed."""


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


@dataclass(frozen=True)
class _Options:
    opset: int
    verify: bool
    tolerance: float
    samples: torch.Tensor | None
    precision: Precision
    data: Dataset | None
    calibration: Calibration
    gate: IntGate


def export_onnx(model_or_checkpoint: nn.Module | str | Path, path: str | Path, example_inputs: Any = None,
                profile: str | HardwareProfile | None = None, structure: str | None = None, opset: int = 17,
                verify: bool = True, tolerance: float = DEFAULT_TOLERANCE, samples: torch.Tensor | None = None,
                reference: nn.Module | None = None, *, precision: str | Precision | None = None,
                data: Dataset | str | Path | None = None, calibration: Calibration = Calibration(),
                gate: IntGate = IntGate(), result: Any = None) -> ExportReport:
    """Export, simplify, (quantize), (pack), check and verify; write ``path`` atomically; return the report.

    ``result``: the :class:`~npu_compress.pruners.PruneResult` a pruner's ``finalize()`` returned for
    ``model`` (its graph, keep-set, profile object, budget; example inputs default to its problem's).
    Without it a model is exported dense.
    ``structure``: optional check; the structure is the one the model was pruned with.
    ``precision``: ``"fp32"`` or ``"int8"`` (QDQ); default: the profile's ``compute.dtype`` (an int8 chip
    gets int8) where the profile is known (a checkpoint, a pruned model, or ``profile=``), else fp32.
    ``data``: a :class:`Dataset` (or ``"digits"`` / an ``.npz`` path): int8 calibration samples come from
    its training split, the int8 agreement/accuracy check from its test split; the float check also uses
    its first test samples. Without it, int8 calibrates and checks on random inputs (and says so).
    ``samples``: real inputs for the float check besides random ones. ``reference``: the torch model to
    verify against (default: the masked model as trained).
    """
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0 and tolerance == tolerance):
        raise NpuCompressError(f"tolerance must be a number >= 0, got {tolerance!r}")
    check_output(path, [model_or_checkpoint] if isinstance(model_or_checkpoint, (str, Path)) else [])
    job = job_from(model_or_checkpoint, example_inputs, profile, structure, result=result)
    dataset = as_dataset(data)
    if samples is None and dataset is not None:
        samples = dataset.x_test[:FLOAT_CHECK_SAMPLES]
    prec = Precision.parse(precision) if precision is not None else job.default_precision()
    options = _Options(opset, verify, tolerance, samples, prec, dataset, calibration, gate)
    was_training = job.masked.training
    job.masked.eval()
    try:
        return _export(job, Path(path), options, reference or job.masked)
    finally:
        job.masked.train(was_training)


def _stamp(proto: onnx.ModelProto, job: Job, precision: Precision) -> None:
    onnx.helper.set_model_props(proto, {**{e.key: e.value for e in proto.metadata_props},
                                        "npu_compress.version": __version__, "npu_compress.profile": job.profile.name,
                                        "npu_compress.structure": job.label, "npu_compress.budget": job.budget or "",
                                        "npu_compress.precision": precision.value})
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported graph fails the ONNX checker: {e}") from None


def _pack(proto: onnx.ModelProto, job: Job) -> list:
    if job.packed_format is None:
        return []
    return pack_weights(proto, job.packed_format, tuple(job.profile.tiling.block), job.nm)


def _float_check(tmp: Path, path: Path, reference: nn.Module, job: Job, o: _Options):
    batches = [random_inputs(job.example, 4, 0)] + ([o.samples] if o.samples is not None else [])
    result = compare(tmp, reference, batches, o.tolerance)
    if not result.passed:
        raise VerificationError(result.failure(path) + "; nothing written")
    return result


def _export(job: Job, path: Path, o: _Options, reference: nn.Module) -> ExportReport:
    channel = job.channel
    exported_model = remove_pruned(job.masked, job.graph, job.keep) if channel else copy.deepcopy(job.masked)
    proto = _to_onnx(exported_model, job.example, o.opset)
    # what the file's weights would be unpruned, to show what pruning saved (no second export)
    dense_bytes = dense_weight_bytes(proto, exported_model, job.masked) if channel else onnx_weight_bytes(proto)
    verification = agreement = None
    calibrated_on = None
    with atomic_path(path) as tmp:
        if o.precision == Precision.INT8:
            if o.verify:  # the float graph first: quantization must start from a verified float model
                _stamp(proto, job, Precision.FP32)
                onnx.save(proto, str(tmp))
                verification = _float_check(tmp, path, reference, job, o)
            calib, calibrated_on = _calibration_inputs(job, o)
            proto = quantize_qdq(proto, calib, o.calibration, job.profile.compute.dtype)
            packed = _pack_exactly(proto, job, tmp) if o.verify else _pack(proto, job)
            _stamp(proto, job, Precision.INT8)
            onnx.save(proto, str(tmp))
            if o.verify:
                agreement = _int8_check(tmp, path, reference, job, o)
        else:
            packed = _pack(proto, job)
            _stamp(proto, job, Precision.FP32)
            onnx.save(proto, str(tmp))
            if o.verify:
                verification = _float_check(tmp, path, reference, job, o)
    return _report(job, path, exported_model, proto, dense_bytes, packed, verification, o, agreement, calibrated_on)


def _calibration_inputs(job: Job, o: _Options) -> tuple[torch.Tensor, str]:
    if o.data is not None:
        x = o.data.x_train[:o.calibration.samples]
        return x, f"training split of '{o.data.name}' ({len(x)} samples, {o.calibration.method.value})"
    log.warning("int8 export without data: calibrating on %d random inputs; pass data (--data) for real ranges",
                o.calibration.samples)
    return random_inputs(job.example, o.calibration.samples, 1), \
        f"random inputs ({o.calibration.samples} samples, {o.calibration.method.value}): no data given"


def _pack_exactly(proto: onnx.ModelProto, job: Job, tmp: Path) -> list:
    """Pack the int8 weights and check the packed graph computes what the unpacked one does."""
    if job.packed_format is None:
        return []
    unpacked = tmp.with_name(tmp.name + ".unpacked")
    try:
        onnx.save(proto, str(unpacked))
        packed = _pack(proto, job)
        onnx.save(proto, str(tmp))
        x = random_inputs(job.example, 8, 2)
        a, b = OrtRunner(unpacked)(x), OrtRunner(tmp)(x)
    finally:
        unpacked.unlink(missing_ok=True)
    if not all(np.array_equal(u, v) for u, v in zip(a, b)):
        raise ExportError("packing the int8 weights changed the graph's outputs; please report this")
    return packed


def _int8_check(tmp: Path, path: Path, reference: nn.Module, job: Job, o: _Options) -> AgreementResult:
    if o.data is not None:
        n = o.gate.samples or len(o.data.x_test)
        x, y = o.data.x_test[:n], o.data.y_test[:n]
    else:
        log.warning("int8 export without data: only top-1 agreement on %d random inputs is checked (no accuracy)",
                    o.gate.samples or RANDOM_CHECK_SAMPLES)
        x, y = random_inputs(job.example, o.gate.samples or RANDOM_CHECK_SAMPLES, 3), None
    runner = OrtRunner(tmp)
    result = check_agreement(lambda xb: runner(xb)[0], reference, x, y, o.gate)
    if not result.passed:
        raise VerificationError(result.failure(f"'{path}' (int8)") + "; nothing written")
    return result


def _report(job: Job, path: Path, exported_model: nn.Module, proto: onnx.ModelProto, dense_bytes: int,
            packed: list, verification: Any, o: _Options, agreement: AgreementResult | None,
            calibrated_on: str | None) -> ExportReport:
    dense = estimate(job.masked, job.example, job.profile)
    if job.channel:
        pruned = estimate(exported_model, job.example, job.profile)
    elif job.packed_format is not None:
        pruned = estimate(job.masked, job.example, job.profile, formats=weight_formats(job.graph, job.keep))
    else:
        pruned = dense
    predicted = predict(job.graph, job.keep, job.profile) if job.graph is not None else None
    return ExportReport(path=str(path), structure=job.label, profile=job.profile.name, opset=o.opset,
                        file_bytes=path.stat().st_size, onnx_weight_bytes=onnx_weight_bytes(proto),
                        onnx_dense_weight_bytes=dense_bytes, dense=dense, pruned=pruned, predicted=predicted,
                        verification=verification, packed=packed,
                        unprunable=job.graph.report().splitlines() if job.graph is not None else [],
                        precision=o.precision, int8=agreement, calibrated_on=calibrated_on)
