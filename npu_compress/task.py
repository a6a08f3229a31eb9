"""What a model is trained and judged on: its loss and its metric. Classification (cross-entropy,
top-1 accuracy) is the default; a segmentation model brings its own, e.g. per-pixel cross-entropy
and mean IoU, from a ``file.py:factory`` spec (``prune --task``).

    >>> task = Task(loss=F.cross_entropy, metric=mean_iou, metric_name="mIoU")
    >>> task.score(outputs, targets)     # over a whole split: (N, C, ...) outputs, (N, ...) targets
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import NpuCompressError


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy (per sample, or per pixel for dense targets)."""
    return int((outputs.argmax(1) == targets).sum()) / max(targets.numel(), 1)


def mean_iou(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean intersection over union over the classes present in prediction or target."""
    pred, n = outputs.argmax(1).flatten(), outputs.shape[1]
    target = targets.flatten()
    inter = torch.bincount(target[pred == target], minlength=n).double()
    union = torch.bincount(pred, minlength=n).double() + torch.bincount(target, minlength=n).double() - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 0.0


@dataclass(frozen=True)
class Task:
    """``loss(outputs, targets)`` → scalar tensor; ``metric(outputs, targets)`` → float over a split."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    metric: Callable[[torch.Tensor, torch.Tensor], float] = accuracy
    metric_name: str = "accuracy"

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(self.metric(outputs, targets))


CLASSIFICATION = Task()


def load_task(spec: str | Task | None) -> Task:
    """A :class:`Task`: given, the default (None), or from ``file.py:factory`` / ``pkg.mod:factory`` (its
    factory returns a Task; importing the file runs its code, logged)."""
    if spec is None:
        return CLASSIFICATION
    if isinstance(spec, Task):
        return spec
    from .modelspec import import_factory

    factory = import_factory(spec, "task")
    made: Any = factory() if callable(factory) and not isinstance(factory, Task) else factory
    if not isinstance(made, Task):
        raise NpuCompressError(f"task {spec!r}: the factory must return an npu_compress.Task, got {type(made).__name__}")
    return made


__all__ = ["CLASSIFICATION", "Task", "accuracy", "load_task", "mean_iou"]
