"""Does an integer model still make the float model's decisions? Top-1 agreement and accuracy, gated.

Max abs error is meaningless at int8 (every output moves by up to a quantization step), so an
integer file is judged the way a user judges it: on real samples, does it pick the same class as
the float torch model (agreement), and how much accuracy does it lose (drop, in points)?

    >>> gate = IntGate(min_agreement=0.95, max_drop=1.0)
    >>> result = check_agreement(lambda x: run_int8(x), float_model, x_test, y_test, gate)
    >>> result.agreement, result.float_accuracy, result.int_accuracy, result.passed

Without labels only agreement can be measured; the result says so (``labelled=False``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import NpuCompressError

BATCH = 256

# Defaults a careful user accepts. Post-training int8 keeps 97.8-99.7 % top-1 agreement and loses
# 0-0.3 points on the models measured here (docs/BENCHMARKS.md, "INT8 export": a 67 % CIFAR-10
# ResNet-20 agrees 97.8 %: the less confident a model, the more of its near-ties flip). A broken
# quantization (one outlier channel owning a per-tensor range) falls far below 90 %. So: agreement
# >= 95 % refuses the broken without refusing honest low-accuracy models, and the accuracy gate of
# 1 point is the user's real guard (on the 360 bundled test digits one sample is 0.28 points).
DEFAULT_MIN_AGREEMENT = 0.95
DEFAULT_MAX_DROP = 1.0  # accuracy points


@dataclass(frozen=True)
class IntGate:
    """When an integer file may be written: agreement >= ``min_agreement`` and accuracy drop <= ``max_drop``
    points (the drop is checked only with labels). ``samples`` caps how many test samples are used
    (None: the whole test split)."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_drop: float = DEFAULT_MAX_DROP
    samples: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.min_agreement, (int, float)) and 0.0 <= self.min_agreement <= 1.0):
            raise NpuCompressError(f"min_agreement must be a fraction in [0, 1], got {self.min_agreement!r}")
        if not (isinstance(self.max_drop, (int, float)) and math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise NpuCompressError(f"max_drop must be a finite number of accuracy points >= 0, got {self.max_drop!r}")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise NpuCompressError(f"verification samples must be a positive integer, got {self.samples!r}")


@dataclass(frozen=True)
class AgreementResult:
    samples: int
    agreement: float  # fraction of samples whose top-1 class equals the float model's
    labelled: bool  # False: random inputs, no accuracy (only agreement was checked)
    float_accuracy: float | None
    int_accuracy: float | None
    sqnr_db: float  # 10 log10(|float|^2 / |float - int|^2) over all outputs: reported, not gated
    finite: bool  # every output of both models is finite
    min_agreement: float
    max_drop: float

    @property
    def drop(self) -> float | None:
        """Accuracy points lost (float - integer), or None without labels."""
        if self.float_accuracy is None or self.int_accuracy is None:
            return None
        return 100.0 * (self.float_accuracy - self.int_accuracy)

    @property
    def passed(self) -> bool:
        if not self.finite or self.agreement < self.min_agreement:
            return False
        return self.drop is None or self.drop <= self.max_drop

    def describe(self) -> str:
        if not self.finite:
            return "non-finite outputs (NaN or Inf)"
        text = f"top-1 agreement {100 * self.agreement:.2f}% over {self.samples} samples"
        if self.labelled:
            return (text + f", accuracy float {100 * self.float_accuracy:.2f}% -> integer "
                    f"{100 * self.int_accuracy:.2f}% (drop {self.drop:.2f} points), SQNR {self.sqnr_db:.1f} dB")
        return text + f" on random inputs (no labels: accuracy not checked), SQNR {self.sqnr_db:.1f} dB"

    def failure(self, what: str) -> str:
        """The one-line reason ``what`` is refused."""
        if not self.finite:
            return f"{what} produces non-finite outputs (NaN or Inf)"
        if self.agreement < self.min_agreement:
            return (f"{what}: top-1 agreement with the float model {100 * self.agreement:.2f}% < "
                    f"min_agreement {100 * self.min_agreement:.2f}% ({self.describe()})")
        return f"{what}: accuracy drop {self.drop:.2f} points > max_drop {self.max_drop:g} ({self.describe()})"


def _top1(out: np.ndarray) -> np.ndarray:
    """(N, C, ...) -> (N, ...) class index; outputs without a class axis compare as one class."""
    if out.ndim < 2 or out.shape[1] == 1:
        return np.zeros((out.shape[0],) + out.shape[2:], dtype=np.int64)
    return out.argmax(axis=1)


def _first(out) -> np.ndarray:
    t = out if isinstance(out, torch.Tensor) else out[0]
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def check_agreement(run_int: Callable[[torch.Tensor], np.ndarray], reference: nn.Module, x: torch.Tensor,
                    y: torch.Tensor | None, gate: IntGate) -> AgreementResult:
    """Run ``reference`` (torch, float, eval) and ``run_int`` (the integer model: a batch -> its first
    output) on ``x``; compare top-1 per sample (per position for dense outputs)."""
    was = reference.training
    reference.eval()
    agree = total = correct_f = correct_i = 0
    signal = noise = 0.0
    finite = True
    try:
        for start in range(0, len(x), BATCH):
            xb = x[start:start + BATCH]
            with torch.no_grad():
                ref = _first(reference(xb)).astype(np.float64)
            got = np.asarray(run_int(xb), dtype=np.float64)
            if got.shape != ref.shape:
                raise NpuCompressError(f"the integer model's output shape {got.shape} differs from the float "
                                       f"model's {ref.shape}")
            finite = finite and bool(np.isfinite(ref).all() and np.isfinite(got).all())
            if not finite:
                break
            signal += float((ref ** 2).sum())
            noise += float(((ref - got) ** 2).sum())
            tf, ti = _top1(ref), _top1(got)
            agree += int((tf == ti).sum())
            total += tf.size
            if labelled := (y is not None and tf.ndim == 1):
                yb = y[start:start + BATCH].numpy()
                correct_f += int((tf == yb).sum())
                correct_i += int((ti == yb).sum())
    finally:
        reference.train(was)
    n = max(total, 1)
    sqnr = 10 * math.log10(signal / noise) if noise > 0 and signal > 0 else math.inf
    labelled = y is not None and total > 0 and total == len(x)  # labels are per sample: classifiers only
    return AgreementResult(samples=len(x), agreement=agree / n if finite else 0.0, labelled=labelled,
                           float_accuracy=correct_f / n if labelled and finite else None,
                           int_accuracy=correct_i / n if labelled and finite else None,
                           sqnr_db=sqnr if finite else float("nan"), finite=finite,
                           min_agreement=gate.min_agreement, max_drop=gate.max_drop)
