"""``prune``: model spec + data + profile + budget + method -> trained, pruned model and checkpoint.

    outcome = nc.prune("digits-cnn", "digits", "generic-4tops", "latency=50%", method="smart",
                       config=TrainConfig(Epochs(3, 4, 2)), output="digits.ckpt")
    outcome.result.predicted.latency_s, outcome.train.accuracy
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import PruneCheckpoint
from .choices import Choice, NMPattern
from .data import Dataset, load_dataset
from .errors import BudgetError, DataError, ModelSpecError, TrainingError
from .graph.identity import unit_identities
from .graph.types import PruningGraphError, Structure
from .hardware.budget import Budget
from .hardware.profile import HardwareProfile, load_profile
from .modelspec import LoadedModel, load_model
from .progress import seed_everything, text_digest
from .pruners import PruneResult, get_pruner
from .pruners.problem import MethodConfig, knobs, make_config, plan
from .task import Task, load_task
from .training import TrainConfig, TrainResult, clean_state_dict, train

log = logging.getLogger(__name__)
CALIBRATION_SAMPLES = 256


@dataclass
class PruneOutcome:
    model: torch.nn.Module  # fine-tuned, hard mask applied (zeros), original shapes
    result: PruneResult
    train: TrainResult
    checkpoint: PruneCheckpoint


def _check_data(loaded: LoadedModel, data: Dataset) -> None:
    if tuple(loaded.input_shape[1:]) != tuple(data.input_shape):
        raise DataError(f"data '{data.name}' has samples of shape {tuple(data.input_shape)} but model "
                        f"'{loaded.spec}' takes {tuple(loaded.input_shape[1:])}; pick matching data or --input-shape")
    outputs = _num_outputs(loaded)
    if outputs is not None and outputs < data.num_classes:
        raise DataError(f"data '{data.name}' has labels up to {data.num_classes - 1} ({data.num_classes} classes) "
                        f"but model '{loaded.spec}' outputs {outputs} classes; labels must be < {outputs}")


def _num_outputs(loaded: LoadedModel) -> int | None:
    """The model's class count: declared, else the width of its output on the example input (None if
    it does not run: the pruner's trace reports that)."""
    if loaded.num_classes is not None:
        return loaded.num_classes
    module, was = loaded.module, loaded.module.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # a forward must not move the seeded RNG
            module.eval()
            out = module(torch.zeros(1, *loaded.input_shape[1:]))
    except Exception:  # noqa: BLE001 - reported, with the model's own message, when the pruner traces it
        return None
    finally:
        with contextlib.suppress(Exception):
            module.train(was)
    out = out if isinstance(out, torch.Tensor) else next((o for o in out if isinstance(o, torch.Tensor)), None)
    return int(out.shape[1]) if out is not None and out.ndim >= 2 else None


def _loaded(model: str | torch.nn.Module, input_shape: tuple[int, ...] | None) -> LoadedModel:
    """A spec loaded, or a user's module taken as it is (it needs ``input_shape``, batch first)."""
    if isinstance(model, str):
        return load_model(model, input_shape)
    if not isinstance(model, torch.nn.Module):
        raise ModelSpecError(f"model must be a model spec string or an nn.Module, got {type(model).__name__}")
    if input_shape is None:
        raise ModelSpecError(f"prune({type(model).__name__}(...)): give input_shape=(1, C, H, W) for a module")
    shape = tuple(int(d) for d in input_shape)
    return LoadedModel(model, shape, f"<nn.Module {type(model).__name__}>")


def _check_epochs(epochs) -> None:
    if epochs.mask + epochs.finetune < 1:
        raise TrainingError(f"epochs {epochs.warmup},{epochs.mask},{epochs.finetune} leave the pruner no epoch: "
                            "mask learning + fine-tune (M + F of W,M,F) must be at least 1, e.g. 2,6,2")


def prune(model: str | torch.nn.Module, data: str | Dataset, profile: str | HardwareProfile, budget: str | Budget, *,
          structure: str = "channel", method: str = "smart", config: TrainConfig,
          method_config: MethodConfig | dict | None = None,
          input_shape: tuple[int, ...] | None = None, nm: tuple[int, int] = (2, 4),
          group_size: int | None = None, output: str | Path | None = None,
          judge: str | None = None, task: str | Task | None = None) -> PruneOutcome:
    """Train (warm-up), learn masks under ``budget``, fine-tune, and write the checkpoint to ``output``.

    ``model``: a model spec (zoo name, ``pkg.mod:factory``, ``file.py:factory``, ``.pt2``) or an
    ``nn.Module`` (trained in place; give ``input_shape`` unless the spec has a default). A checkpoint
    of an ``nn.Module`` names no spec: export it from the returned model, or rebuild it yourself.
    ``method_config``: the method's config (``PRUNERS[method].Config``) or a dict of its fields;
    its ``mask_steps`` (unset) becomes the mask phase's length. The model is traced and priced once
    (:func:`~npu_compress.pruners.plan`), before any training: an infeasible budget fails first.

    ``data``: a Dataset, ``"digits"``, an ``.npz``, or ``file.py:factory`` / ``pkg.mod:factory`` returning
    a Dataset or ``(x_train, y_train, x_test, y_test)``. ``task``: the loss and metric (a :class:`Task`
    or a ``file.py:factory`` spec returning one); default classification (cross-entropy, accuracy).

    ``judge="vela"`` (Ethos-U profiles, the ``ethos-u`` extra): the latency budget is met in Vela's own
    terms: before training, :func:`~npu_compress.export.vela_budget.judge_budget` finds the budget of
    our cost model whose pruned model Vela puts within [0.93, 1.00] of ``budget``; the method prunes
    to that, and the checkpoint's report holds the search.

    Reproducible: everything random (the model's initial weights included) is drawn from ``config.seed``,
    so the same seed gives a bit-identical checkpoint on CPU.
    """
    _check_epochs(config.epochs)
    task_spec, task = (task if isinstance(task, str) else None), load_task(task)
    structure, nm = Structure.parse(structure), NMPattern.parse(nm, "nm", PruningGraphError)
    seed_everything(config.seed)  # before the model is built: its initial weights come from the seed
    loaded = _loaded(model, input_shape)
    dataset = (data if isinstance(data, Dataset) else load_dataset(data)).normalized()
    _check_data(loaded, dataset)
    prof = load_profile(profile)
    bud = budget if isinstance(budget, Budget) else Budget.parse(budget)
    cls = get_pruner(method)
    method_config = make_config(cls.Config, method, method_config)
    method_config.check()
    knobs_given = _knobs_given(method_config)
    example = torch.zeros(1, *loaded.input_shape[1:])
    batches = len(dataset.loaders(config.batch_size, seed=config.seed)[0])
    method_config = run_config(method_config, max(config.epochs.mask * batches, 1), dataset)

    # the one trace and pricing: fails before any training (and any judge) when the budget is infeasible
    problem = plan(loaded.module, (example,), prof, bud, structure, nm=nm, group_size=group_size)
    asked, judged = bud, _judge(judge, loaded.module, example, prof, bud, structure)
    if judged is not None:
        problem = problem.with_budget(judged.internal)

    def make(m: torch.nn.Module):
        return cls(problem.with_model(m), method_config)

    settings = _settings(loaded, prof, asked, structure, method, nm, group_size, judge, knobs_given)
    if task_spec is not None:
        settings["task"] = task_spec
    run = train(loaded.module, dataset, config, make_pruner=make, settings=settings, task=task)
    result = run.prune_result
    ckpt = PruneCheckpoint(model_spec=loaded.spec, input_shape=tuple(loaded.input_shape), profile_toml=prof.to_toml(),
                           budget=str(asked), structure=structure.value, method=method, keep=result.keep.clone(),
                           state_dict=clean_state_dict(loaded.module), nm=tuple(nm), group_size=group_size,
                           units=unit_identities(result.graph, result.keep),
                           report=summary(result, run, dataset, method, asked, judged, task.metric_name))
    if output is not None:
        ckpt.save(output)
    return PruneOutcome(loaded.module, result, run, ckpt)


def _settings(loaded: LoadedModel, prof: HardwareProfile, bud: Budget, structure: Structure, method: str,
              nm: tuple[int, int], group_size: int | None, judge: str | None = None,
              knobs_given: str = "") -> dict[str, str]:
    """What this run is, beyond the training config and data: recorded in the progress file, checked on resume."""
    out = {"model": loaded.spec, "input_shape": ",".join(map(str, loaded.input_shape)), "method": method,
           "structure": structure.value, "budget": str(bud), "profile": f"{prof.name} (sha256 {text_digest(prof.to_toml())})",
           "group_size": "default" if group_size is None else str(group_size)}
    if structure is Structure.NM:
        out["nm"] = str(NMPattern(*nm))
    if judge is not None:
        out["judge"] = str(judge)
    if knobs_given:
        out["method_args"] = knobs_given
    return out


class Judge(Choice):
    """Whose latency a budget is met in: ``vela`` (Arm's compiler, Ethos-U profiles); None is our cost model."""

    VELA = "vela"


JUDGES = tuple(Judge.values())


def _judge(judge: str | Judge | None, model: torch.nn.Module, example: torch.Tensor, profile: HardwareProfile,
           budget: Budget, structure: Structure) -> Any:
    """The budget judged by the chip's compiler (None: our cost model is the judge)."""
    if judge is None:
        return None
    judge = Judge.parse(judge, "judge", BudgetError)
    if structure is not Structure.CHANNEL:
        raise BudgetError(f"judge '{judge}' needs --structure channel (Vela compiles the physically pruned model)")
    from .export.vela_budget import judge_budget

    with torch.random.fork_rng(devices=[]):  # Vela's calibration inputs must not move the run's seeded RNG
        judged = judge_budget(model, example, profile, budget)
    log.info("%s", judged.describe())
    return judged


def _knobs_given(config: MethodConfig) -> str:
    """The knobs set away from their defaults, as ``key=value`` text (recorded, compared on resume)."""
    return " ".join(f"{name}={getattr(config, name)}" for name, _, default in knobs(type(config))
                    if getattr(config, name) != default)


def run_config(config: MethodConfig, mask_steps: int, dataset: Dataset) -> MethodConfig:
    """``config`` with what a training run knows filled in where unset: the mask phase's length, and
    calibration inputs (training split only, never the test split) for the methods that take them."""
    return config.for_run(mask_steps, dataset.x_train[:CALIBRATION_SAMPLES])


def summary(result: PruneResult, run: TrainResult, data: Dataset, method: str, budget: Budget | None = None,
            judged: Any = None, metric: str = "accuracy") -> dict[str, Any]:
    """The numbers a pipeline wants: costs before/after, budget exactness, accuracy (and, with a judge,
    the budget our cost model was given so that the judge's budget is met)."""
    extra = {"judge": judged.to_dict()} if judged is not None else {}
    return {**extra, "method": method, "data": data.name, "profile": result.dense.profile,
            "budget": str(budget or result.budget),
            "target": result.target, "achieved_ratio": result.achieved_ratio,
            "units_kept": int(result.keep.sum()), "units": len(result.keep),
            "dense": _cost(result.dense), "pruned": _cost(result.predicted),
            "dense_accuracy": run.dense_accuracy, "accuracy": run.accuracy, "metric": metric,
            "epochs": len(run.history)}


def _cost(report) -> dict[str, Any]:
    return {"latency_s": report.latency_s, "memory_bytes": report.memory_bytes, "macs": report.macs,
            "params": report.params, "peak_activation_bytes": report.peak_activation_bytes}
