"""The interface every pruner shares, and the registry that feeds ``npu-compress prune --method``.

Lifecycle, like an optimizer::

    pruner = SmartPruner(model, (x,), "ethos-u55-256", "latency=50%")
    for batch in loader:
        loss.backward(); optimizer.step(); pruner.step()
    result = pruner.finalize()        # hard keep-set under the true cost model, masks fixed
    ...fine-tune, calling pruner.step() after each optimizer step (re-zeroes pruned weights)...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..errors import NpuCompressError
from ..export.job import attach_result
from ..graph import apply_masks, build
from ..graph_cost import predict
from ..hardware.budget import Budget
from ..hardware.cost import CostReport
from ..hardware.profile import HardwareProfile, load_profile
from .importance import unit_sq_norms
from .select import choose_nm_layers, measure, minimum_cost, nm_keep, select_keep
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

    @property
    def achieved_ratio(self) -> float:
        """Achieved cost / target (≤ 1 when the budget holds)."""
        return measure(self.predicted, self.budget.kind) / self.target


class Pruner:
    """Base: builds the graph, prices the dense model, checks the budget is feasible.

    Subclasses give ``scores()`` (higher = keep) and may learn things in ``step()``.
    """

    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, example_inputs: Any, profile: str | HardwareProfile,
                 budget: str | Budget, structure: str = "channel", *, nm: tuple[int, int] = (2, 4),
                 group_size: int | None = None):
        self.model = model
        self.profile = load_profile(profile)
        self.budget = budget if isinstance(budget, Budget) else Budget.parse(budget)
        self.graph = build(model, example_inputs, self.profile, structure, nm=nm, group_size=group_size)
        if self.graph.num_units == 0:
            raise NpuCompressError(f"nothing in {type(model).__name__} can be pruned with structure "
                                   f"'{structure}':\n{self.graph.report()}")
        self.dense = predict(self.graph, torch.ones(self.graph.num_units, dtype=torch.bool), self.profile)
        self.minimum = minimum_cost(self.graph, self.profile, self.budget.kind)
        self.target = self.budget.require_feasible(self.dense, self.minimum)
        self.result: PruneResult | None = None
        self.nm_layers: set[str] = set()
        if self.graph.structure is Structure.NM:  # the budget picks which weights become N:M
            magnitude = unit_sq_norms(self.graph, model)
            self.nm_layers = choose_nm_layers(self.graph, magnitude, self.profile, self.budget, self.target)

    # -- the lifecycle -------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the pruner itself (mask logits); give them their own optimizer group."""
        return []

    def scores(self) -> torch.Tensor:
        """(n_units,) importance; the highest-scored units are kept."""
        raise NotImplementedError

    def step(self) -> None:
        """Call after each ``optimizer.step()``. After ``finalize()``: keeps pruned weights at zero."""
        if self.result is not None:
            apply_masks(self.model, self.graph, self.result.keep)

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
        """Zero the pruned units, record the result, and let the model carry it to ``export_onnx``."""
        keep = self.graph.check_keep(keep)
        apply_masks(self.model, self.graph, keep)
        self.result = PruneResult(self.graph, keep, predict(self.graph, keep, self.profile), self.dense,
                                  self.budget, self.target, self.profile)
        attach_result(self.model, self.result)

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


def register(name: str) -> Callable[[type[Pruner]], type[Pruner]]:
    """Class decorator: make a pruner available as ``--method name``."""
    def deco(cls: type[Pruner]) -> type[Pruner]:
        if name in PRUNERS:
            raise ValueError(f"pruner '{name}' registered twice")
        cls.name = name
        PRUNERS[name] = cls
        return cls
    return deco


def get_pruner(name: str) -> type[Pruner]:
    if name not in PRUNERS:
        raise NpuCompressError(f"unknown method '{name}'; available: {', '.join(sorted(PRUNERS))}")
    return PRUNERS[name]
