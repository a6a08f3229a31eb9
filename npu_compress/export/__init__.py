"""Export: pruned model -> simplified ONNX (channels removed, or block / N:M weights packed; float32 or
int8 QDQ) -> verified; or, with the ``ethos-u`` extra, an ExecuTorch program compiled by Arm Vela."""
from .agreement import AgreementResult, IntGate
from .ethos_u import EthosUError, EthosUReport, export_ethos_u
from .onnx_export import ExportError, export_onnx
from .pack import PackedWeight, pack_weights
from .quantize import Calibration, CalibrationMethod, Precision
from .report import ExportReport
from .verify import VerifyResult, verify_onnx

__all__ = ["AgreementResult", "Calibration", "CalibrationMethod", "EthosUError", "EthosUReport", "ExportError",
           "ExportReport", "IntGate", "PackedWeight", "Precision", "VerifyResult", "export_ethos_u",
           "export_onnx", "pack_weights", "verify_onnx"]
