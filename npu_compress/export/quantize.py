"""Static post-training INT8 quantization of a verified float ONNX graph into QDQ form.

    proto_int8 = quantize_qdq(proto_fp32, calibration_inputs, Calibration("minmax", 256), DType.INT8)

onnxruntime's ``quantize_static`` does the work: QDQ format (``QuantizeLinear`` /
``DequantizeLinear`` pairs around float ops, which Qualcomm QNN/HTP, AMD Ryzen AI and Intel's NPU
compilers take as their integer contract), weights per output channel, symmetric int8 (zero point
0, so a pruned zero stays an exact 0 and block / N:M packing still applies), activations
asymmetric at the chip's activation width (int8, or int16 for an ``int16`` profile), biases int32.
Calibration inputs come from the training split, never the test split the result is judged on.
"""
from __future__ import annotations

import contextlib
import enum
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from ..choices import Choice
from ..errors import NpuCompressError
from ..hardware.profile import DType

log = logging.getLogger(__name__)
CALIBRATION_BATCH = 32


def _parse_choice(cls: type[enum.Enum], value: object, where: str):
    """``cls(value)``, or an error naming ``where`` and the valid choices."""
    try:
        return cls(value)
    except ValueError:
        raise NpuCompressError(f"{where} '{value}' is not known; choose one of "
                               f"{', '.join(str(m.value) for m in cls)}") from None


class Precision(Choice):
    """What the exported file computes in."""

    FP32 = "fp32"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: "str | Precision", where: str = "precision") -> "Precision":
        return _parse_choice(cls, value, where)

    @classmethod
    def default_for(cls, dtype: DType) -> "Precision":
        """An integer chip gets an integer file; a float chip keeps float32."""
        return cls.INT8 if dtype in (DType.INT8, DType.INT16) else cls.FP32


class CalibrationMethod(Choice):
    """How activation ranges are chosen from the calibration samples (onnxruntime's calibrators)."""

    MINMAX = "minmax"  # the observed range: exact on the samples, sensitive to outliers
    PERCENTILE = "percentile"  # clip the top 0.001 % of |x| (onnxruntime default 99.999)
    ENTROPY = "entropy"  # the range minimising KL divergence of the histogram (TensorRT's method)

    @classmethod
    def parse(cls, value: "str | CalibrationMethod", where: str = "calibrate") -> "CalibrationMethod":
        return _parse_choice(cls, value, where)


@dataclass(frozen=True)
class Calibration:
    """Post-training calibration: ``samples`` inputs from the training split, ranges by ``method``."""

    method: CalibrationMethod = CalibrationMethod.MINMAX
    samples: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CalibrationMethod.parse(self.method))
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise NpuCompressError(f"calibration samples must be a positive integer, got {self.samples!r}")


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol over a tensor of inputs, in batches."""

    def __init__(self, input_name: str, x: torch.Tensor):
        self._batches = [{input_name: b.numpy().astype(np.float32)} for b in x.split(CALIBRATION_BATCH)]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return self._batches[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def _entropy_ranges(proto: onnx.ModelProto, reader: _Reader, tmp: Path) -> Path:
    """Activation ranges by onnxruntime's entropy calibrator with TensorRT's histogram: 2048 bins
    searched for the 128-level window of least KL divergence. (``quantize_static`` builds the
    calibrator with 128 bins for 128 levels, which leaves nothing to search: it equals minmax.)
    Returns the ranges as a calibration cache that ``quantize_static`` reads."""
    from onnxruntime.quantization.calibrate import CalibrationMethod as OrtMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    model, cache = tmp / "float.onnx", tmp / "entropy_ranges.json"
    onnx.save(proto, str(model))
    calibrator = create_calibrator(model, None, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=OrtMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)
    reader.rewind()
    return cache


def _no_preprocess_advice(record: logging.LogRecord) -> bool:
    """onnxruntime advises its pre-processing (shape inference + graph optimisation) on every call;
    the graph it gets has been through onnxsim already, so the advice is noise."""
    return "pre-processing" not in record.getMessage()


def quantize_qdq(proto: onnx.ModelProto, inputs: torch.Tensor, calibration: Calibration,
                 dtype: DType = DType.INT8) -> onnx.ModelProto:
    """The QDQ int8 form of ``proto``, calibrated on ``inputs`` (N, ...) — at most ``calibration.samples``."""
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ort_method = {CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.PERCENTILE: OrtMethod.Percentile,
                  CalibrationMethod.ENTROPY: OrtMethod.Entropy}[calibration.method]
    activations = QuantType.QInt16 if dtype == DType.INT16 else QuantType.QInt8
    x = inputs[:calibration.samples]
    reader = _Reader(proto.graph.input[0].name, x)
    root = logging.getLogger()
    root.addFilter(_no_preprocess_advice)
    with tempfile.TemporaryDirectory(prefix="npu_compress_qdq_") as tmp:
        out = Path(tmp) / "int8.onnx"
        try:  # onnxruntime's histogram calibrators print progress to stdout
            with contextlib.redirect_stdout(io.StringIO()):
                cache = _entropy_ranges(proto, reader, Path(tmp)) if calibration.method == CalibrationMethod.ENTROPY \
                    else None
                quantize_static(proto, str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=activations, weight_type=QuantType.QInt8,
                                calibrate_method=ort_method,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                               "UseQDQContribOps": dtype == DType.INT16},
                                calibration_cache_path=cache)
        except Exception as e:  # onnxruntime raises plain exceptions for graphs it cannot quantize
            raise NpuCompressError(f"onnxruntime could not quantize the graph to int8: {e}") from e
        finally:
            root.removeFilter(_no_preprocess_advice)
        quantized = onnx.load(str(out))
    log.info("int8 QDQ: calibrated on %d samples with %s", len(x), calibration.method.value)
    return quantized
