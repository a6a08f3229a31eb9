"""A pruning problem, built once: what every method prunes, and the configs that say how.

    >>> problem = plan(model, (x,), "ethos-u55-256", "latency=50%", structure="channel")
    >>> problem.target, problem.minimum          # seconds: the budget, and what no pruning goes below
    >>> pruner = SmartPruner(problem, SmartConfig(mask_steps=200))

``plan`` traces the model once (``torch.export``), prices the dense and the smallest model, and
checks the budget is feasible: the one place that does. Methods share the problem (DPM's base
method gets the same object), so nothing is traced or priced twice.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..choices import Choice, NMPattern
from ..errors import NpuCompressError, PrunerConfigError
from ..graph import build
from ..graph.types import PruningGraphError, Structure
from ..graph_cost import predict
from ..hardware.budget import Budget
from ..hardware.cost import CostReport
from ..hardware.profile import HardwareProfile, load_profile
from .select import minimum_cost


@dataclass(frozen=True, eq=False)
class PruningProblem:
    """A model, its example inputs, the chip, the budget and the unit structure, with the graph and the
    costs that follow from them. Frozen: build a new one (:func:`plan`) to change any of it."""

    model: nn.Module
    example_inputs: tuple
    profile: HardwareProfile  # the profile object itself: a user's own .toml need not be findable by name
    budget: Budget
    structure: Structure
    nm: NMPattern  # the N:M pattern (used when structure is NM)
    graph: Any  # PruningGraph
    dense: CostReport  # the unpruned model on the profile
    minimum: float  # the cost no pruning goes below (seconds or bytes, as the budget counts)
    target: float  # the budget in seconds or bytes, checked >= minimum

    def with_model(self, model: nn.Module) -> "PruningProblem":
        """The same problem for another instance of the same architecture (a copy): shares the graph."""
        return dataclasses.replace(self, model=model)

    def with_budget(self, budget: str | Budget) -> "PruningProblem":
        """The same model and graph under another budget (feasibility checked; nothing traced again)."""
        budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        if budget.kind is not self.budget.kind:
            raise PrunerConfigError(f"with_budget: a {budget.kind} budget for a problem priced as {self.budget.kind}")
        return dataclasses.replace(self, budget=budget, target=budget.require_feasible(self.dense, self.minimum))


def plan(model: nn.Module, example_inputs: Any, profile: str | HardwareProfile, budget: str | Budget,
         structure: str | Structure = Structure.CHANNEL, *, nm: Any = (2, 4),
         group_size: int | None = None) -> PruningProblem:
    """Trace ``model`` once, price it on ``profile`` and check ``budget`` is feasible (a BudgetError names
    the minimum achievable otherwise)."""
    structure = Structure.parse(structure)
    pattern = NMPattern.parse(nm, "nm", PruningGraphError)
    profile = load_profile(profile)
    budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    graph = build(model, inputs, profile, structure, nm=pattern, group_size=group_size)
    if graph.num_units == 0:
        raise NpuCompressError(f"nothing in {type(model).__name__} can be pruned with structure "
                               f"'{structure}':\n{graph.report()}")
    dense = predict(graph, torch.ones(graph.num_units, dtype=torch.bool), profile)
    minimum = minimum_cost(graph, profile, budget.kind)
    target = budget.require_feasible(dense, minimum)
    return PruningProblem(model, inputs, profile, budget, structure, pattern, graph, dense, minimum, target)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config. ``mask_steps``: optimiser steps in the mask phase; None: the
    training driver's (its mask epochs × batches), or 1000 when a method is used on its own."""

    mask_steps: int | None = None

    @property
    def steps(self) -> int:
        """``mask_steps``, 1000 when unset."""
        return 1000 if self.mask_steps is None else self.mask_steps

    def check(self) -> None:
        """Checks that need no model (run before anything is traced); methods check the rest on construction."""

    def for_run(self, mask_steps: int, calibration: torch.Tensor | None = None) -> "MethodConfig":
        """This config with what the training driver knows filled in where the user left it unset."""
        return self if self.mask_steps is not None else dataclasses.replace(self, mask_steps=mask_steps)


def checked_calibration(calibration: Any, example_inputs: Any, error: type[Exception], who: str) -> torch.Tensor:
    """``calibration`` checked as a batch of training inputs shaped like the model's single example
    input (N >= 1); ``error`` names ``who`` and what is valid otherwise."""
    example = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor) and len(example_inputs) != 1:
        raise error(f"{who} supports models with one input tensor; got {len(example_inputs)} example inputs")
    if not isinstance(calibration, torch.Tensor):
        raise error(f"calibration must be a tensor of training inputs (e.g. dataset.x_train[:256]), "
                    f"got {type(calibration).__name__}")
    if calibration.dim() != example.dim() or tuple(calibration.shape[1:]) != tuple(example.shape[1:]) \
            or len(calibration) == 0:
        raise error(f"calibration has shape {tuple(calibration.shape)}; expected (N, "
                    f"{', '.join(str(s) for s in example.shape[1:])}) with N >= 1, like the example input")
    return calibration.detach()


def make_config(cls: type[MethodConfig], method: str, values: Any) -> MethodConfig:
    """``values`` (a config, a dict, or None) as a ``cls``; an unknown key is a PrunerConfigError naming the knobs."""
    if isinstance(values, cls):
        return values
    if values is None:
        values = {}
    if isinstance(values, MethodConfig):
        raise PrunerConfigError(f"method '{method}' takes a {cls.__name__}, got a {type(values).__name__}")
    if not isinstance(values, dict):
        raise PrunerConfigError(f"method '{method}' takes a {cls.__name__} or a dict of its fields, got "
                                f"{type(values).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise PrunerConfigError(f"method '{method}' has no knob '{unknown[0]}'; its knobs: {', '.join(known)}")
    return cls(**values)


# ---------------------------------------------------------------- knobs from text (the CLI's --method-arg)

def knobs(cls: type[MethodConfig]) -> list[tuple[str, Any, Any]]:
    """(name, type, default) of the fields a user can set as text (``metadata={"cli": False}`` excluded)."""
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def describe(cls: type[MethodConfig]) -> str:
    """``name: type = default`` for each knob, for ``--help``."""
    return ", ".join(f"{name}: {_type_name(tp)} = {default}" for name, tp, default in knobs(cls))


def config_from_text(cls: type[MethodConfig], method: str, pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as typed field values of ``cls`` (checked: known key, value of its type)."""
    types = {name: tp for name, tp, _ in knobs(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise PrunerConfigError(f"--method-arg '{pair}' must be key=value, e.g. mask_steps=100")
        if key not in types:
            raise PrunerConfigError(f"method '{method}' has no knob '{key}'; its knobs: "
                                    f"{', '.join(types) or 'none'}")
        out[key] = _from_text(types[key], text.strip(), f"--method-arg {key}")
    return out


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args and len(args) < len(typing.get_args(tp)):
        return f"{_type_name(args[0])} or none"
    if isinstance(tp, type) and issubclass(tp, Choice):
        return "|".join(tp.values())
    return getattr(tp, "__name__", str(tp))


def _from_text(tp: Any, text: str, what: str) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        tp = next(a for a in args if a is not type(None))
    if isinstance(tp, type) and issubclass(tp, Choice):
        return tp.parse(text, what, PrunerConfigError)
    if tp is bool:
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        raise PrunerConfigError(f"{what}={text!r} must be true or false")
    if tp in (int, float, str):
        try:
            return tp(text)
        except ValueError:
            raise PrunerConfigError(f"{what}={text!r} must be {'an integer' if tp is int else 'a number'}") from None
    raise PrunerConfigError(f"{what} cannot be given as text (type {_type_name(tp)})")


__all__ = ["MethodConfig", "PruningProblem", "config_from_text", "describe", "knobs", "make_config", "plan"]
