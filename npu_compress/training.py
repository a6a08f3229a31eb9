"""The training driver every method shares: warm-up, mask learning, fine-tune.

    result = train(model, data, TrainConfig(Epochs.parse("2,6,2")), make_pruner=lambda m: SmartPruner(...))

Phases: ``warmup`` epochs dense; then the pruner is built (so importance comes from trained
weights) and ``mask`` epochs run with ``pruner.step()`` after every optimiser step; then
``pruner.finalize()`` fixes the hard mask and ``finetune`` epochs run with it. The learning rate
follows a cosine per phase. A checkpoint is written (atomically) after every epoch when
``config.checkpoint`` is set, and ``resume=True`` continues from it.
"""
from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .distributed import any_rank, broadcast_module, is_distributed, is_rank0, sync_buffers, wrap_ddp
from .errors import NpuCompressError, TrainingError
from .io import write_atomic

log = logging.getLogger(__name__)


class OptimizerKind(str, enum.Enum):
    SGD = "sgd"
    ADAMW = "adamw"


@dataclass(frozen=True)
class Epochs:
    """Epochs per phase: dense warm-up, mask learning, fine-tune with the hard mask."""

    warmup: int = 0
    mask: int = 0
    finetune: int = 0

    @classmethod
    def parse(cls, text: str) -> "Epochs":
        parts = text.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise NpuCompressError(f"epochs '{text}' must be three non-negative integers W,M,F "
                                   "(warm-up, mask learning, fine-tune), e.g. 2,6,2")
        return cls(*(int(p) for p in parts))

    @property
    def total(self) -> int:
        return self.warmup + self.mask + self.finetune


@dataclass(frozen=True)
class TrainConfig:
    epochs: Epochs
    optimizer: OptimizerKind = OptimizerKind.SGD
    lr: float = 0.05
    mask_lr: float = 0.05  # Adam on the pruner's own parameters (mask logits), no weight decay
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    checkpoint: Path | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "mask_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise TrainingError(f"{name} (learning rate) must be a finite number > 0, got {value!r}")
        for name in ("weight_decay", "momentum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise TrainingError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    dense_accuracy: float | None = None  # after warm-up (None without warm-up)
    accuracy: float = 0.0  # final test accuracy
    pruner: Any = None
    prune_result: Any = None


def evaluate(model: nn.Module, loader) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode, restored after)."""
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train(was)
    return correct / max(total, 1)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == OptimizerKind.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    steps = max(steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


class _Phase:
    """One phase's optimiser(s) and schedule over ``epochs`` epochs of ``batches`` steps."""

    def __init__(self, name: str, model: nn.Module, cfg: TrainConfig, epochs: int, batches: int, pruner: Any):
        self.name, self.pruner = name, pruner
        self.opt = _optimizer(model, cfg)
        self.sched = _cosine(self.opt, epochs * batches)
        extra = list(pruner.parameters()) if pruner is not None and name == "mask" else []
        self.mask_opt = torch.optim.Adam(extra, lr=cfg.mask_lr) if extra else None

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.mask_opt:
            self.mask_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.mask_opt:
            self.mask_opt.step()
        if self.pruner is not None:
            self.pruner.step()
        self.sched.step()


def _epoch(model: nn.Module, loader, phase: _Phase, progress: bool, label: str) -> dict[str, float]:
    """One pass over ``loader``; ``model`` may be a DistributedDataParallel wrapper."""
    from tqdm import tqdm

    model.train()
    seen = correct = 0
    loss_sum = 0.0
    bar = tqdm(loader, desc=label, leave=False, disable=not progress)
    for i, (x, y) in enumerate(bar):
        out = model(x)
        loss = F.cross_entropy(out, y)
        value = loss.item()
        if any_rank(not math.isfinite(value)):  # every rank stops at the same step (no hang in DDP)
            raise _diverged(loss, x, phase, f"{label}, step {i + 1}/{len(loader)}")
        phase.step(loss)
        seen += len(y)
        loss_sum += value * len(y)
        correct += int((out.argmax(1) == y).sum())
        post = {"loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / seen:.3f}"}
        if phase.name == "mask" and progress and i % 10 == 0:  # state() runs the cost model: not every batch
            state = phase.pruner.state()
            post.update({k: f"{state[k]:.3g}" for k in ("tau", "fractional", "predicted") if k in state})
            bar.set_postfix(post)
        elif i % 10 == 0:
            bar.set_postfix(post)
    return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}


def _diverged(loss: torch.Tensor, x: torch.Tensor, phase: _Phase, where: str) -> TrainingError:
    """The one-line stop for a NaN / infinite loss, with its likely cause."""
    if not bool(torch.isfinite(x).all()):
        cause = "this batch's inputs hold NaN/Inf values: clean the data"
    else:
        cause = (f"the learning rate ({phase.opt.defaults['lr']:g}) is likely too high: lower --lr "
                 "(or the data holds extreme values)")
    value = loss.item()
    what = f"the loss is {value}" if not math.isfinite(value) else "another rank's loss is not finite"
    return TrainingError(f"training stopped: {what} in epoch {where}; {cause}")


def train(model: nn.Module, data: Dataset, cfg: TrainConfig,
          make_pruner: Callable[[nn.Module], Any] | None = None) -> TrainResult:
    """Run the three phases on ``data``; returns history, accuracies and the pruner's result."""
    torch.manual_seed(cfg.seed)
    train_loader, test_loader = _loaders(data, cfg)
    distributed, rank0 = is_distributed(), is_rank0()
    broadcast_module(model)  # DDP: one starting point whatever each rank's init (the pruner may be built first)
    net = model  # under DDP: a wrapper rebuilt each phase (the pruner re-wraps parameters); pruner uses ``model``
    batches = len(train_loader)
    result = TrainResult()
    start = 0
    state = _load_checkpoint(cfg) if cfg.resume else None
    if state is not None:
        start = state["epoch"] + 1
        result.history = state["history"]
        result.dense_accuracy = state.get("dense_accuracy")
    plan = ["warmup"] * cfg.epochs.warmup + ["mask"] * cfg.epochs.mask + ["finetune"] * cfg.epochs.finetune
    pruner = None
    if state is not None and start > cfg.epochs.warmup and make_pruner is not None:
        pruner = _rebuild_pruner(model, make_pruner, state)
    elif state is not None:
        model.load_state_dict(state["model"])
    phase = None
    for epoch in range(start, len(plan)):
        name = plan[epoch]
        if name != "warmup" and pruner is None and make_pruner is not None:
            pruner = make_pruner(model)
        if name == "finetune" and pruner is not None and pruner.result is None:
            result.prune_result = pruner.finalize()
        if phase is None or phase.name != name:
            phase = _Phase(name, model, cfg, plan.count(name), batches, pruner)
            net = wrap_ddp(model) if distributed else model  # buffers: synced after each epoch, not each forward
            _skip_schedule(phase, epoch - plan.index(name), batches)
        if distributed:
            train_loader.sampler.set_epoch(epoch)
        stats = _epoch(net, train_loader, phase, cfg.progress and rank0, f"{name} {epoch + 1}/{len(plan)}")
        sync_buffers(model)  # before evaluating, saving, building or finalizing the pruner
        stats.update(epoch=epoch, phase=name, test_acc=evaluate(model, test_loader))
        if pruner is not None:
            stats.update({k: v for k, v in pruner.state().items() if isinstance(v, (int, float))})
        result.history.append(stats)
        log.info("epoch %d (%s): %s", epoch + 1, name, {k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in stats.items()})
        if name == "warmup" and epoch == cfg.epochs.warmup - 1:
            result.dense_accuracy = stats["test_acc"]
        if cfg.checkpoint is not None and rank0:
            _save_checkpoint(cfg, epoch, model, pruner, result)
    if pruner is not None and pruner.result is None:
        result.prune_result = pruner.finalize()  # no fine-tune epochs: still end with the hard mask
    result.pruner = pruner
    result.prune_result = pruner.result if pruner is not None else None
    result.accuracy = evaluate(model, test_loader)
    return result


def _loaders(data: Dataset, cfg: TrainConfig):
    if is_distributed():
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        train_set = TensorDataset(data.x_train, data.y_train)
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
        test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=256)
        return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler), test
    return data.loaders(cfg.batch_size, seed=cfg.seed)


def _skip_schedule(phase: _Phase, epochs_done: int, batches: int) -> None:
    for _ in range(epochs_done * batches):  # resume inside a phase: move the LR schedule along
        phase.sched.step()


# ---------------------------------------------------------------- checkpoints

def _save_checkpoint(cfg: TrainConfig, epoch: int, model: nn.Module, pruner: Any, result: TrainResult) -> None:
    payload = {"epoch": epoch, "model": clean_state_dict(model), "history": result.history,
               "dense_accuracy": result.dense_accuracy,
               "pruner": pruner.state_dict() if pruner is not None and hasattr(pruner, "state_dict") else None}
    write_atomic(cfg.checkpoint, lambda tmp: torch.save(payload, tmp))


def _load_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    if cfg.checkpoint is None or not Path(cfg.checkpoint).is_file():
        return None
    try:
        return torch.load(cfg.checkpoint, map_location="cpu", weights_only=False)
    except Exception as e:
        raise NpuCompressError(f"cannot resume from '{cfg.checkpoint}': not a readable checkpoint ({e})") from None


def clean_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with soft-mask parametrizations undone: original weights under their plain names."""
    out = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            if not key.endswith(".original"):
                continue
            key = key.replace(".parametrizations.", ".")[: -len(".original")]
        out[key] = value
    return out


def _rebuild_pruner(model: nn.Module, make_pruner: Callable[[nn.Module], Any], state: dict[str, Any]) -> Any:
    """Resume after warm-up: weights first, then the pruner, then the pruner's own state."""
    model.load_state_dict(state["model"])
    pruner = make_pruner(model)
    pruner.load_state_dict(state.get("pruner") or {})
    return pruner
