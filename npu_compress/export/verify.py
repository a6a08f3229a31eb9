"""Verify an exported ONNX against the torch model: onnxruntime vs torch on the same inputs.

    >>> result = verify_onnx("model.onnx", model, [torch.randn(4, 3, 32, 32)], tolerance=1e-4)
    >>> result.max_abs_error, result.max_rel_error
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import VerificationError

DEFAULT_TOLERANCE = 1e-4  # max abs error for float32


@dataclass(frozen=True)
class VerifyResult:
    """Errors of the ONNX against torch. The gate: ``max_abs_error <= tolerance * scale``, where
    ``scale = max(1, largest |output| of the torch model)``: absolute for outputs up to 1, relative
    beyond (float32 reassociation, e.g. BatchNorm folding, leaves errors proportional to magnitude)."""

    max_abs_error: float
    max_rel_error: float  # max |a - b| / (|b| + 1e-6): reported, not gated
    samples: int
    tolerance: float
    scale: float = 1.0
    finite: bool = True  # every output of both models is finite (NaN / Inf never pass)

    @property
    def passed(self) -> bool:
        return self.finite and self.max_abs_error <= self.tolerance * self.scale

    def failure(self, path: str | Path) -> str:
        """Why ``path`` fails the check, in one line."""
        if not self.finite:
            return f"'{path}' or the torch model produces non-finite outputs (NaN or Inf) on {self.samples} samples"
        return (f"'{path}' differs from the torch model: max abs error {self.max_abs_error:.3g} > tolerance "
                f"{self.tolerance:g} x output scale {self.scale:.3g} (max rel error {self.max_rel_error:.3g}, "
                f"{self.samples} samples)")


def _as_batches(inputs: torch.Tensor | Iterable[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    return [t for t in inputs]


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    flat: list[torch.Tensor] = []
    for o in out:
        flat += _flat_outputs(o)
    return flat


class OrtRunner:
    """One onnxruntime CPU session over a file: ``runner(x)`` -> the outputs as numpy arrays."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: x.detach().cpu().numpy()})


def run_onnx(path: str | Path, x: torch.Tensor) -> list[np.ndarray]:
    return OrtRunner(path)(x)


def compare(path: str | Path, model: nn.Module, batches: Sequence[torch.Tensor],
            tolerance: float = DEFAULT_TOLERANCE) -> VerifyResult:
    """Errors of the ONNX file against ``model`` (eval mode) over ``batches``, without raising."""
    was = model.training
    model.eval()
    abs_err = rel_err = 0.0
    scale = 1.0
    samples = 0
    finite = True
    runner = OrtRunner(path)
    try:
        for x in batches:
            with torch.no_grad():
                ref = [t.numpy() for t in _flat_outputs(model(x))]
            got = runner(x)
            if len(got) != len(ref):
                raise VerificationError(f"'{path}' has {len(got)} outputs, the torch model {len(ref)}")
            for a, b in zip(got, ref):
                if a.shape != b.shape:
                    raise VerificationError(f"'{path}' output shape {a.shape} differs from torch {b.shape}")
                finite = finite and bool(np.isfinite(a).all() and np.isfinite(b).all())
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                scale = max(scale, float(np.abs(b).max(initial=0.0)))
                abs_err = max(abs_err, float(diff.max(initial=0.0)))
                rel_err = max(rel_err, float((diff / (np.abs(b) + 1e-6)).max(initial=0.0)))
            samples += len(x)
    finally:
        model.train(was)
    return VerifyResult(abs_err, rel_err, samples, tolerance, scale, finite)


def verify_onnx(path: str | Path, reference_model: nn.Module, inputs: torch.Tensor | Iterable[torch.Tensor],
                tolerance: float = DEFAULT_TOLERANCE) -> VerifyResult:
    """Run ``path`` in onnxruntime and ``reference_model`` in torch on ``inputs`` (a tensor or batches);
    raise :class:`VerificationError` if the max abs error exceeds ``tolerance * max(1, max |output|)``."""
    result = compare(path, reference_model, _as_batches(inputs), tolerance)
    if not result.passed:
        raise VerificationError(result.failure(path))
    return result
