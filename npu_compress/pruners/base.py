"""The interface every pruner shares, and the registry that feeds ``npu-compress prune --method``.

Lifecycle, like an optimizer::

    problem = plan(model, (x,), "ethos-u55-256", "latency=50%")     # traced and priced once
    pruner = SmartPruner(problem, SmartConfig(mask_steps=500))
    for batch in loader:
        loss.backward(); optimizer.step(); pruner.step()
    result = pruner.finalize()        # hard keep-set under the true cost model, masks fixed
    ...fine-tune, calling pruner.step() after each optimizer step (re-zeroes pruned weights)...
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..errors import NpuCompressError
from ..graph import apply_masks
from ..graph_cost import predict
from ..hardware.budget import Budget
from ..hardware.cost import CostReport
from ..hardware.profile import HardwareProfile
from .importance import unit_sq_norms
from .problem import MethodConfig, PruningProblem, make_config, plan
from .select import choose_nm_layers, measure, nm_keep, select_keep
from ..graph.types import Structure


@dataclass
class PruneResult:
    """What ``finalize()`` returns: the graph, the keep-set (the format ``remove_pruned`` takes), costs."""

    graph: Any
    keep: torch.Tensor  # (n_units,) bool
    predicted: CostReport  # the pruned model on the profile, by the true cost model
    dense: CostReport
    budget: Budget
    target: float  # the budget in seconds or bytes
    profile: HardwareProfile  # the profile itself (a user's own .toml need not be findable by name)
    problem: PruningProblem | None = None  # what was pruned: model, inputs, profile, budget, structure

    @property
    def achieved_ratio(self) -> float:
        """Achieved cost / target (≤ 1 when the budget holds)."""
        return measure(self.predicted, self.budget.kind) / self.target


class Pruner:
    """Base: a method constructed from a :class:`PruningProblem` and its config, ``Method(problem, config)``.

    ``Method(model, example_inputs, profile, budget, structure, nm=..., group_size=..., **knobs)`` is
    short for ``Method(plan(model, ...), Method.Config(**knobs))``. Subclasses give ``scores()``
    (higher = keep) and may learn things in ``_step()``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    picks_nm_layers: ClassVar[bool] = True  # False: a wrapper that takes its base's choice

    def __init__(self, *args: Any, **kwargs: Any):
        problem, config = _arguments(type(self), args, kwargs)
        self.problem, self.config = problem, config
        self.model, self.profile, self.budget, self.graph = problem.model, problem.profile, problem.budget, problem.graph
        self.dense, self.minimum, self.target = problem.dense, problem.minimum, problem.target
        self.result: PruneResult | None = None
        self.nm_layers: set[str] = set()
        if self.graph.structure is Structure.NM and self.picks_nm_layers:  # the budget picks which become N:M
            magnitude = unit_sq_norms(self.graph, self.model)
            self.nm_layers = choose_nm_layers(self.graph, magnitude, self.profile, self.budget, self.target)

    # -- the lifecycle -------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the pruner itself (mask logits); give them their own optimizer group."""
        return []

    def mask_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """The optimiser of ``parameters()`` (the training driver's mask optimiser): Adam by default."""
        return torch.optim.Adam(params, lr=lr)

    def mask_lr_scale(self) -> float:
        """Factor on the mask optimiser's learning rate for the next step (1: as configured)."""
        return 1.0

    def scores(self) -> torch.Tensor:
        """(n_units,) importance; the highest-scored units are kept."""
        raise NotImplementedError

    def step(self) -> None:
        """Call after each ``optimizer.step()``. After ``finalize()``: keeps pruned weights at zero
        (the one place that rule lives); before it, the method's own ``_step()``."""
        if self.result is not None:
            apply_masks(self.model, self.graph, self.result.keep)
        else:
            self._step()

    def _step(self) -> None:
        """A method's work after an optimiser step, before ``finalize()`` (nothing by default)."""

    def finalize(self) -> PruneResult:
        """Choose the hard keep-set under the true cost model and zero the pruned units in the model."""
        if self.result is not None:
            return self.result
        self._before_finalize()
        self._install(self._select())
        return self.result

    def _select(self) -> torch.Tensor:
        """The hard keep-set: by score under the true cost model (N:M: the best N of every M)."""
        scores = self.scores().detach().double()
        if self.graph.structure is Structure.NM:
            return nm_keep(self.graph, scores, self.nm_layers)
        return select_keep(self.graph, scores, self.profile, self.budget, self.target)

    def _install(self, keep: torch.Tensor) -> None:
        """Zero the pruned units and record the result (``finalize()`` returns it: pass it to ``export_onnx``)."""
        keep = self.graph.check_keep(keep)
        apply_masks(self.model, self.graph, keep)
        self.result = PruneResult(self.graph, keep, predict(self.graph, keep, self.profile), self.dense,
                                  self.budget, self.target, self.profile, self.problem)

    def _before_finalize(self) -> None:
        """Hook for subclasses: drop soft masks before the hard ones go in."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume this pruner."""
        return {"keep": None if self.result is None else self.result.keep.clone(), "nm_layers": sorted(self.nm_layers)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("nm_layers") is not None:
            self.nm_layers = set(state["nm_layers"])
        if state.get("keep") is not None:
            self._before_finalize()
            self._install(state["keep"])

    def state(self) -> dict[str, float]:
        """Numbers for progress bars and logs."""
        return {"target": self.target, "dense": measure(self.dense, self.budget.kind)}


PRUNERS: dict[str, type[Pruner]] = {}


def register(name: str, config: type[MethodConfig] = MethodConfig) -> Callable[[type[Pruner]], type[Pruner]]:
    """Class decorator: make a pruner available as ``--method name``, with its config dataclass (whose
    fields are ``--method-arg key=value`` knobs)."""
    def deco(cls: type[Pruner]) -> type[Pruner]:
        if name in PRUNERS:
            raise ValueError(f"pruner '{name}' registered twice")
        if not (dataclasses.is_dataclass(config) and issubclass(config, MethodConfig)):
            raise TypeError(f"pruner '{name}': its config must be a MethodConfig dataclass, got {config!r}")
        cls.name, cls.Config = name, config
        PRUNERS[name] = cls
        return cls
    return deco


def unregister(name: str) -> None:
    """Remove a method from the registry (tests that register a toy method clean up with this)."""
    PRUNERS.pop(name, None)


_PLAN_KEYS = ("structure", "nm", "group_size")


def _arguments(cls: type[Pruner], args: tuple, kwargs: dict[str, Any]) -> tuple[PruningProblem, MethodConfig]:
    """(problem, config) from ``(problem, config)`` or the short form ``(model, inputs, profile, budget,
    structure, nm=, group_size=, **knobs)``; the knobs are checked before anything is traced."""
    kwargs = dict(kwargs)
    if args and isinstance(args[0], PruningProblem):
        if len(args) > 2:
            raise TypeError(f"{cls.__name__}(problem, config): got {len(args)} positional arguments")
        config = args[1] if len(args) == 2 else kwargs.pop("config", None)
        if config is not None and kwargs:
            raise TypeError(f"{cls.__name__}: give knobs in the config or as keywords, not both")
        config = make_config(cls.Config, cls.name or cls.__name__, config if config is not None else kwargs)
        config.check()
        return args[0], config
    names = ("model", "example_inputs", "profile", "budget", "structure")
    given = dict(zip(names, args))
    for key in names + _PLAN_KEYS:
        if key in kwargs:
            given[key] = kwargs.pop(key)
    if len(args) > 5 or not set(names[:4]) <= set(given):
        raise TypeError(f"{cls.__name__}(problem, config) or {cls.__name__}(model, example_inputs, profile, "
                        "budget, structure='channel', **knobs)")
    config = kwargs.pop("config", None)
    config = make_config(cls.Config, cls.name or cls.__name__, config if config is not None else kwargs)
    config.check()  # every knob checked before anything is traced
    problem = plan(given["model"], given["example_inputs"], given["profile"], given["budget"],
                   given.get("structure", Structure.CHANNEL), nm=given.get("nm", (2, 4)),
                   group_size=given.get("group_size"))
    return problem, config


def get_pruner(name: str) -> type[Pruner]:
    if name not in PRUNERS:
        raise NpuCompressError(f"unknown method '{name}'; available: {', '.join(sorted(PRUNERS))}")
    return PRUNERS[name]
