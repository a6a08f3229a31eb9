"""The training driver every method shares: warm-up, mask learning, fine-tune.

    result = train(model, data, TrainConfig(Epochs.parse("2,6,2")), make_pruner=lambda m: SmartPruner(...))

Phases: ``warmup`` epochs dense; then the pruner is built (so importance comes from trained
weights) and ``mask`` epochs run with ``pruner.step()`` after every optimiser step; then
``pruner.finalize()`` fixes the hard mask and ``finetune`` epochs run with it. The learning rate
follows one cosine over the whole run (``lr_schedule="run"``: the final architecture's fine-tune
continues the decay instead of restarting it), or one per phase (``"phase"``). A progress file (:mod:`npu_compress.progress`) is written
(atomically) after every epoch when ``config.checkpoint`` is set, and ``resume=True`` continues
from it exactly: same seed, same settings => the same weights and keep-set as an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .task import CLASSIFICATION, Task
from .choices import Choice
from .checkpoint import CheckpointError
from .data import CropFlip, Dataset
from .distributed import any_rank, broadcast_module, is_distributed, is_rank0, sync_buffers, wrap_ddp
from .errors import NpuCompressError, TrainingError
from .progress import describe_data, describe_model, epoch_seed, load_progress, rng_state, save_progress, \
    seed_everything, set_rng_state

log = logging.getLogger(__name__)


class Phase(Choice):
    """The three phases of a run, in order."""

    WARMUP = "warmup"  # dense training
    MASK = "mask"  # the pruner learns (or decides) the masks; its parameters train in their own optimiser
    FINETUNE = "finetune"  # the hard mask fixed


class LrSchedule(Choice):
    RUN = "run"  # one cosine from the first step of the run to its last
    PHASE = "phase"  # a cosine per phase, restarted at each


class OptimizerKind(Choice):
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
    mask_lr: float = 0.002  # the optimiser of the pruner's own parameters (mask logits), no weight decay
    lr_schedule: LrSchedule = LrSchedule.RUN
    weight_decay: float = 5e-4
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0
    progress: bool = True
    checkpoint: Path | None = None
    resume: bool = False
    # training batches on which BatchNorm statistics are re-estimated right after finalize() (0: never)
    recalibrate_batches: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", OptimizerKind.parse(self.optimizer, "optimizer", TrainingError))
        object.__setattr__(self, "lr_schedule", LrSchedule.parse(self.lr_schedule, "lr_schedule", TrainingError))
        if isinstance(self.recalibrate_batches, bool) or not isinstance(self.recalibrate_batches, int) or \
                self.recalibrate_batches < 0:
            raise TrainingError(f"recalibrate_batches must be an integer >= 0, got {self.recalibrate_batches!r}")
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


@torch.no_grad()
def recalibrate_norms(model: nn.Module, loader, batches: int, norms_only: bool = False) -> int:
    """Re-estimate every BatchNorm's running statistics on up to ``batches`` batches of ``loader``
    (train-mode forwards, no gradient, a cumulative average); returns the batches used. With
    ``norms_only`` only the norms run in train mode (dropout and stochastic depth stay off).

    ``finalize()`` turns the soft mask into the hard one: the kept units' masks jump to 1, so every
    norm downstream sees other activations than those its statistics were tracked on (accuracy
    right after finalize fell to ~10-40 % on CIFAR and on digits). Pruned channels see zeros and
    stay zero."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    was = model.training
    if norms_only:
        for m in norms:
            m.train()
    else:
        model.train()
    used = 0
    try:
        for x, _ in loader:
            if used >= batches:
                break
            model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was)
    return used


def evaluate(model: nn.Module, loader, task: Task = CLASSIFICATION) -> float:
    """``task``'s metric (default top-1 accuracy) of ``model`` over ``loader`` (eval mode, restored after)."""
    was = model.training
    model.eval()
    outs, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            outs.append(model(x))
            targets.append(y)
    model.train(was)
    if not outs:
        return 0.0
    return task.score(torch.cat(outs), torch.cat(targets))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer is OptimizerKind.SGD:
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _cosine(opt: torch.optim.Optimizer, steps: int, offset: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine from 1 to 0 over ``steps``; the schedule's step s is the cosine's step ``offset + s``."""
    steps = max(steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(offset + s, steps) / steps)))


class _Phase:
    """One phase's optimiser(s) and schedule over ``epochs`` epochs of ``batches`` steps."""

    def __init__(self, name: Phase, model: nn.Module, cfg: TrainConfig, plan: list[Phase], batches: int, pruner: Any):
        self.name, self.pruner = name, pruner
        self.opt = _optimizer(model, cfg)
        if cfg.lr_schedule is LrSchedule.RUN:  # this phase's slice of one cosine over the whole plan
            self.sched = _cosine(self.opt, len(plan) * batches, plan.index(name) * batches)
        else:
            self.sched = _cosine(self.opt, plan.count(name) * batches)
        extra = list(pruner.parameters()) if pruner is not None and name is Phase.MASK else []
        self.mask_lr = cfg.mask_lr
        make = getattr(pruner, "mask_optimizer", lambda params, lr: torch.optim.Adam(params, lr=lr))
        self.mask_opt = make(extra, cfg.mask_lr) if extra else None

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.mask_opt:
            self.mask_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.mask_opt:
            scale = self.pruner.mask_lr_scale() if hasattr(self.pruner, "mask_lr_scale") else 1.0
            for group in self.mask_opt.param_groups:
                group["lr"] = self.mask_lr * scale
            self.mask_opt.step()
        if self.pruner is not None:
            self.pruner.step()
        self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name.value, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "mask_opt": self.mask_opt.state_dict() if self.mask_opt else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a phase a progress file saved mid-way: momentum, Adam moments, LR schedule position."""
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.mask_opt and state.get("mask_opt") is not None:
            self.mask_opt.load_state_dict(state["mask_opt"])


def _epoch(model: nn.Module, loader, phase: _Phase, progress: bool, label: str,
           task: Task = CLASSIFICATION) -> dict[str, float]:
    """One pass over ``loader``; ``model`` may be a DistributedDataParallel wrapper."""
    from tqdm import tqdm

    model.train()
    seen = correct = elems = 0
    loss_sum = 0.0
    bar = tqdm(loader, desc=label, leave=False, disable=not progress)
    for i, (x, y) in enumerate(bar):
        out = model(x)
        loss = task.loss(out, y)
        value = loss.item()
        if any_rank(not math.isfinite(value)):  # every rank stops at the same step (no hang in DDP)
            raise _diverged(loss, x, phase, f"{label}, step {i + 1}/{len(loader)}")
        phase.step(loss)
        seen += len(y)
        loss_sum += value * len(y)
        if out.ndim >= 2 and out.shape[:1] + out.shape[2:] == y.shape:  # class scores vs labels (or pixel labels)
            correct += int((out.argmax(1) == y).sum())
            elems += y.numel()
        post = {"loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / max(elems, 1):.3f}"}
        if phase.name is Phase.MASK and progress and i % 10 == 0:  # state() runs the cost model: not every batch
            state = phase.pruner.state()
            post.update({k: f"{state[k]:.3g}" for k in ("tau", "fractional", "predicted") if k in state})
            bar.set_postfix(post)
        elif i % 10 == 0:
            bar.set_postfix(post)
    return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(elems, 1)}


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


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, make_pruner: Callable[[nn.Module], Any] | None = None,
          *, settings: Mapping[str, str] | None = None, task: Task = CLASSIFICATION) -> TrainResult:
    """Run the three phases on ``data``; returns history, accuracies (``task``'s metric: top-1 accuracy
    by default) and the pruner's result. ``task``: the loss trained on and the metric reported.

    ``settings`` name what the run is beyond ``cfg`` and ``data`` (model spec, method, budget, ...):
    the progress file records them with ``cfg``'s and ``data``'s, and resuming with others is refused.
    """
    seed_everything(cfg.seed)
    train_loader, test_loader = _loaders(data, cfg)
    distributed, rank0 = is_distributed(), is_rank0()
    broadcast_module(model)  # DDP: one starting point whatever each rank's init (the pruner may be built first)
    net = model  # under DDP: a wrapper rebuilt each phase (the pruner re-wraps parameters); pruner uses ``model``
    batches = len(train_loader)
    result = TrainResult()
    plan = [Phase.WARMUP] * cfg.epochs.warmup + [Phase.MASK] * cfg.epochs.mask + [Phase.FINETUNE] * cfg.epochs.finetune
    run = _run_settings(model, data, cfg, settings) if cfg.checkpoint is not None else {}
    start, pruner, saved_phase = _resume(cfg, run, model, make_pruner, result)
    phase = None
    for epoch in range(start, len(plan)):
        name = plan[epoch]
        if name is not Phase.WARMUP and pruner is None and make_pruner is not None:
            pruner = make_pruner(model)
        if name is Phase.FINETUNE and pruner is not None and pruner.result is None:
            result.prune_result = _finalize(pruner, model, train_loader, cfg, epoch)
        if phase is None or phase.name is not name:
            phase = _Phase(name, model, cfg, plan, batches, pruner)
            net = wrap_ddp(model) if distributed else model  # buffers: synced after each epoch, not each forward
            if saved_phase is not None and Phase.parse(saved_phase["name"]) is name:
                phase.load_state_dict(saved_phase)  # resumed inside this phase
            saved_phase = None
        _shuffle_for(train_loader, cfg.seed, epoch)
        stats = _epoch(net, train_loader, phase, cfg.progress and rank0, f"{name} {epoch + 1}/{len(plan)}", task)
        sync_buffers(model)  # before evaluating, saving, building or finalizing the pruner
        stats.update(epoch=epoch, phase=name.value, test_acc=evaluate(model, test_loader, task))
        if pruner is not None:
            stats.update({k: v for k, v in pruner.state().items() if isinstance(v, (int, float))})
        result.history.append(stats)
        log.info("epoch %d (%s): %s", epoch + 1, name, {k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in stats.items()})
        if name is Phase.WARMUP and epoch == cfg.epochs.warmup - 1:
            result.dense_accuracy = stats["test_acc"]
        if cfg.checkpoint is not None and rank0:
            _save_progress(cfg, epoch, model, pruner, phase, result, run)
    if pruner is not None and pruner.result is None:
        result.prune_result = _finalize(pruner, model, train_loader, cfg, len(plan))  # no fine-tune: still hard
    result.pruner = pruner
    result.prune_result = pruner.result if pruner is not None else None
    result.accuracy = evaluate(model, test_loader, task)
    return result


def _finalize(pruner: Any, model: nn.Module, train_loader, cfg: TrainConfig, epoch: int) -> Any:
    """The hard mask, then BatchNorm statistics re-estimated on the batches epoch ``epoch`` would see
    (the same ones on a resumed run) and averaged over ranks."""
    out = pruner.finalize()
    _shuffle_for(train_loader, cfg.seed, epoch)
    recalibrate_norms(model, train_loader, cfg.recalibrate_batches)
    sync_buffers(model)
    return out


def _loaders(data: Dataset, cfg: TrainConfig):
    if is_distributed():
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        train_set = TensorDataset(data.x_train, data.y_train)
        sampler = DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
        test = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=256)
        collate = CropFlip(cfg.seed) if data.augment else None
        return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate), test
    return data.loaders(cfg.batch_size, seed=cfg.seed)


def _shuffle_for(loader, seed: int, epoch: int) -> None:
    """Each epoch's order (and augmentation) from (seed, epoch) alone, so a resumed epoch sees the
    batches it would have."""
    if is_distributed():
        loader.sampler.set_epoch(epoch)  # DistributedSampler: seeded by (its seed, epoch) already
    else:
        loader.generator.manual_seed(epoch_seed(seed, epoch))
    if isinstance(loader.collate_fn, CropFlip):  # per rank: each rank's images get their own draws
        rank = torch.distributed.get_rank() if is_distributed() else 0
        loader.collate_fn.reseed(epoch_seed(seed, epoch) + 7919 * (rank + 1))


# ---------------------------------------------------------------- progress file (resume)

def _run_settings(model: nn.Module, data: Dataset, cfg: TrainConfig, extra: Mapping[str, str] | None) -> dict[str, str]:
    """What makes two runs the same run: recorded in the progress file, compared on resume."""
    e = cfg.epochs
    world = torch.distributed.get_world_size() if is_distributed() else 1
    return {**(extra or {}), "architecture": describe_model(model), "data": describe_data(data),
            "epochs": f"{e.warmup},{e.mask},{e.finetune}", "seed": str(cfg.seed),
            "optimizer": cfg.optimizer.value, "lr": repr(cfg.lr), "mask_lr": repr(cfg.mask_lr),
            "lr_schedule": cfg.lr_schedule.value,
            "weight_decay": repr(cfg.weight_decay), "momentum": repr(cfg.momentum),
            "batch_size": str(cfg.batch_size), "world_size": str(world)}


def _save_progress(cfg: TrainConfig, epoch: int, model: nn.Module, pruner: Any, phase: _Phase,
                   result: TrainResult, settings: Mapping[str, str]) -> None:
    state = {"epoch": epoch, "model": clean_state_dict(model), "phase": phase.state_dict(),
             "pruner": pruner.state_dict() if pruner is not None and hasattr(pruner, "state_dict") else None,
             "history": result.history, "dense_accuracy": result.dense_accuracy, "rng": rng_state()}
    save_progress(cfg.checkpoint, state, settings)


def _resume(cfg: TrainConfig, settings: Mapping[str, str], model: nn.Module, make_pruner: Callable | None,
            result: TrainResult) -> tuple[int, Any, dict[str, Any] | None]:
    """(first epoch to run, pruner, the running phase's optimiser state) from the progress file, if resuming.

    Weights, pruner and history come back as they were after the last finished epoch, and the RNG
    states last, so the epoch that was running when the run stopped restarts exactly.
    """
    if cfg.checkpoint is None:
        return 0, None, None
    if not cfg.resume:
        if Path(cfg.checkpoint).exists() and is_rank0():
            log.warning("progress file '%s' exists and will be overwritten (resume from it with --resume)",
                        cfg.checkpoint)
        return 0, None, None
    state = load_progress(cfg.checkpoint, settings)
    if state is None:
        return 0, None, None
    try:
        model.load_state_dict(state["model"])
        pruner = None
        if state["pruner"] is not None and make_pruner is not None:
            pruner = make_pruner(model)
            pruner.load_state_dict(state["pruner"])
        result.history, result.dense_accuracy = list(state["history"]), state["dense_accuracy"]
        set_rng_state(state["rng"])
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"progress file '{cfg.checkpoint}' does not fit this run ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); delete it to start "
                              "fresh") from None
    log.info("resuming from '%s' after epoch %d", cfg.checkpoint, state["epoch"] + 1)
    return state["epoch"] + 1, pruner, state["phase"]


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

