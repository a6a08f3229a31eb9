"""Export: pruned model -> simplified ONNX (channels removed, or block / N:M weights packed) -> verified."""
from .onnx_export import ExportError, attach_result, export_onnx
from .pack import PackedWeight, pack_weights
from .report import ExportReport
from .verify import VerifyResult, verify_onnx

__all__ = ["ExportError", "ExportReport", "PackedWeight", "VerifyResult", "attach_result", "export_onnx",
           "pack_weights", "verify_onnx"]
