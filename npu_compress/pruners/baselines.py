"""Baseline pruners: weight magnitude, first-order Taylor, random; one-shot or iterative.

Each ranks units by a score and leaves the hard choice to the shared selection (``select.py``),
so a baseline meets the budget exactly as SMART does. ``schedule="oneshot"`` decides once, at
``finalize()``; ``schedule="iterative"`` prunes during the mask phase toward a cubic schedule of
intermediate costs (Zhu & Gupta, arXiv 1710.01878), in cost rather than sparsity::

    T(s) = B + (D - B) * (1 - s / mask_steps) ** 3        D: dense cost, B: the budget

re-selecting every ``every`` steps under T(s). A unit once pruned stays pruned (score -inf) and
is held at zero after every step; ``finalize()`` selects at B itself.

    pruner = MagnitudePruner(model, (x,), "generic-4tops", "latency=60%", schedule="iterative",
                             mask_steps=len(loader) * epochs)
    ... loss.backward(); opt.step(); pruner.step() ...
    result = pruner.finalize()
"""
from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from ..choices import Choice
from ..errors import PrunerConfigError
from ..graph import apply_masks
from ..graph_cost import predict
from .base import Pruner, register
from .problem import MethodConfig
from .importance import normalized_by_group, output_side_tables
from .select import measure, nm_keep, select_keep
from ..graph.types import Structure



class Norm(Choice):
    L1 = "l1"
    L2 = "l2"


class Schedule(Choice):
    ONESHOT = "oneshot"  # decide at finalize()
    ITERATIVE = "iterative"  # prune progressively over the mask phase (cubic schedule)


E = TypeVar("E", bound=enum.Enum)


def parse_choice(kind: type[E], value: Any, knob: str) -> E:
    """``value`` as a member of ``kind``; PrunerConfigError listing the valid values otherwise."""
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(repr(m.value) for m in kind)
        raise PrunerConfigError(f"{knob}={value!r} is not valid; choose one of {valid}") from None


def check_steps(knob: str, value: Any, allow_none: bool = False) -> int | None:
    """A positive integer step count (or None when allowed); PrunerConfigError otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrunerConfigError(f"{knob} must be a positive integer, got {value!r}")
    return value


# ---------------------------------------------------------------- per-unit sums over parameters

Values = Callable[[str, torch.Tensor], "torch.Tensor | None"]


@torch.no_grad()
def unit_sums(graph, model: nn.Module, values: Values, output_side: bool = True) -> torch.Tensor:
    """(n_units,) float64: Σ of ``values(name, param)`` over each unit's parameter entries.

    ``values`` maps a parameter to a tensor of its shape (or None: it adds nothing). Channel
    graphs sum over output-side entries (producer rows, biases, norm affine parameters) or, with
    ``output_side=False``, also over the consumers' input columns; block / N:M over the unit's weights.

        >>> unit_sums(g, model, lambda n, p: p.abs())      # group L1 norms
    """
    params = dict(model.named_parameters())  # buffers (running statistics) carry no score
    if graph.structure is not Structure.CHANNEL:
        parts = ((entry_unit.flatten(), values(name, params[name]), None)
                 for name, entry_unit in graph.entry_units() if name in params)
    else:
        tables = (output_side_tables(graph, model) if output_side else
                  ((name, dim, idx, unit) for (name, dim), (idx, unit) in graph.param_tables().items()))
        parts = ((unit, values(name, params[name]), (dim, idx)) for name, dim, idx, unit in tables if name in params)
    out = torch.zeros(graph.num_units, dtype=torch.float64)
    for unit, v, along in parts:
        if v is not None:
            out.index_add_(0, unit, _reduce(v.detach(), along).double().cpu())
    return out


def _reduce(v: torch.Tensor, along: tuple[int, Any] | None) -> torch.Tensor:
    """On v's device: flattened (block / N:M), or summed to one value per entry ``idx`` along ``dim``."""
    if along is None:
        return v.flatten()
    dim, idx = along
    per_entry = v.sum(dim=[d for d in range(v.dim()) if d != dim]) if v.dim() > 1 else v  # (size along dim,)
    return per_entry[idx.to(v.device)]


def magnitude_scores(graph, model: nn.Module, norm: Norm, normalize: bool = True) -> torch.Tensor:
    """(n_units,) float64 group norm of each unit's output-side weights, over its group's mean if ``normalize``.

    Normalising makes layers comparable: a conv with 9x more inputs has ~3x larger row norms.
    """
    if norm is Norm.L1:
        score = unit_sums(graph, model, lambda _, p: p.abs())
    else:
        score = unit_sums(graph, model, lambda _, p: p.square()).sqrt()
    return normalized_by_group(score, graph) if normalize else score


def cubic_target(dense: float, budget: float, step: int, steps: int) -> float:
    """Zhu & Gupta's cubic schedule in cost: ``dense`` at step 0, ``budget`` from ``steps`` on.

        >>> cubic_target(10.0, 6.0, 5, 10)    # 6 + 4 * 0.5 ** 3
        6.5
    """
    left = 1.0 - min(max(step, 0), steps) / steps
    return budget + (dense - budget) * left ** 3


# ---------------------------------------------------------------- hard selection, pruned units excluded

def select_unpruned(graph, scores: torch.Tensor, pruned: torch.Tensor, profile, budget,
                    target: float) -> torch.Tensor:
    """``select_keep`` over the units not yet pruned: a pruned unit is never kept again.

    Pruned units score -inf, so they rank last: the prefix reaches them only once every unpruned
    unit is in, and the fill takes one only when no unpruned unit fits. Dropping such picks gives
    back exactly that slack, so nothing else would fit and the cost stays within one unit of ``target``.
    """
    keep = select_keep(graph, scores.double().masked_fill(pruned, -math.inf), profile, budget, target)
    return keep & ~pruned


# ---------------------------------------------------------------- the shared schedule

@dataclass(frozen=True)
class BaselineConfig(MethodConfig):
    """``schedule``: oneshot (decide at finalize) or iterative (prune toward a cubic schedule over the mask
    phase); ``every``: steps between iterative re-selections (default mask_steps // 20)."""

    schedule: Schedule = Schedule.ONESHOT
    every: int | None = None


@dataclass(frozen=True)
class MagnitudeConfig(BaselineConfig):
    """``norm``: l1 or l2 group norm; ``normalize``: divide by the group's mean (comparable across layers)."""

    norm: Norm = Norm.L2
    normalize: bool = True


@dataclass(frozen=True)
class TaylorConfig(BaselineConfig):
    """``ema_decay``: smoothing of the per-step Taylor scores, in [0, 1)."""

    ema_decay: float = 0.9


@dataclass(frozen=True)
class RandomConfig(BaselineConfig):
    """``seed``: the random scores' seed (the same on every DDP rank)."""

    seed: int = 0


class BaselinePruner(Pruner):
    """Score-ranked pruning, one-shot or iterative; subclasses give ``scores()`` (and ``_observe()``).

    State during the mask phase: ``pruned`` (n_units,) bool, the units removed so far (iterative).
    """

    Config = BaselineConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c = self.config
        self.schedule = parse_choice(Schedule, c.schedule, "schedule")
        self.mask_steps = check_steps("mask_steps", c.steps)
        self.every = check_steps("every", c.every, allow_none=True) or max(1, self.mask_steps // 20)
        self.steps = 0
        self.pruned = torch.zeros(self.graph.num_units, dtype=torch.bool)
        self._nm_order = self._nm_conversion_order() if self.graph.structure is Structure.NM else []

    # -- lifecycle -------------------------------------------------------------------------
    def _step(self) -> None:
        """After each optimiser step: observe (Taylor), re-select when due (iterative), hold pruned units at zero."""
        self.steps += 1
        self._observe()
        due = self.steps % self.every == 0 or self.steps == self.mask_steps
        if self.schedule is Schedule.ITERATIVE and due and self.steps <= self.mask_steps:
            self._prune_to(self.intermediate_target())
        if self.pruned.any():
            apply_masks(self.model, self.graph, ~self.pruned)

    def _select(self) -> torch.Tensor:
        """One-shot: the shared selection by score. Iterative: the last step of the schedule, at the true budget."""
        if self.schedule is Schedule.ONESHOT:
            return super()._select()
        self._prune_to(self.target)
        return ~self.pruned

    def _observe(self) -> None:
        """Hook: read what this step taught (gradients) before anything is re-selected."""

    # -- iterative schedule ----------------------------------------------------------------
    def intermediate_target(self) -> float:
        """T(steps): the cost the iterative schedule allows now (the budget once ``mask_steps`` are done)."""
        return cubic_target(measure(self.dense, self.budget.kind), self.target, self.steps, self.mask_steps)

    def _prune_to(self, target: float) -> None:
        """Prune more units so the model costs at most ``target``; pruned units stay pruned."""
        scores = self.scores().detach().double().masked_fill(self.pruned, -math.inf)
        if self.graph.structure is Structure.NM:
            keep = nm_keep(self.graph, scores, self._nm_prefix(target, scores))
        else:
            keep = select_unpruned(self.graph, scores, self.pruned, self.profile, self.budget, target)
        self.pruned |= ~keep

    def _nm_conversion_order(self) -> list[str]:
        """The weights the budget converts to N:M, the one saving most cost first."""
        kind, dense = self.budget.kind, measure(self.dense, self.budget.kind)
        ones = torch.ones(self.graph.num_units, dtype=torch.double)
        saving = {name: dense - measure(predict(self.graph, nm_keep(self.graph, ones, {name}), self.profile), kind)
                  for name in self.nm_layers}
        return sorted(self.nm_layers, key=lambda name: -saving[name])

    def _nm_prefix(self, target: float, scores: torch.Tensor) -> set[str]:
        """The fewest weights, in conversion order, whose N:M conversion brings the cost to ``target``."""
        for k in range(len(self._nm_order) + 1):
            chosen = set(self._nm_order[:k])
            keep = nm_keep(self.graph, scores, chosen)
            if measure(predict(self.graph, keep, self.profile), self.budget.kind) <= target:
                return chosen
        return set(self._nm_order)  # all of them meet the true budget, so this is not reached

    # -- checkpoints and logs --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(steps=self.steps, pruned=self.pruned.clone())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        if state.get("pruned") is not None:
            self.pruned = self.graph.check_keep(~state["pruned"]).logical_not()
            if self.pruned.any():
                apply_masks(self.model, self.graph, ~self.pruned)
        super().load_state_dict(state)

    def state(self) -> dict[str, float]:
        out = super().state()
        keep = self.result.keep if self.result is not None else ~self.pruned
        out.update(steps=self.steps, sparsity=float((~keep).float().mean()),
                   predicted=measure(predict(self.graph, keep, self.profile), self.budget.kind))
        if self.schedule is Schedule.ITERATIVE and self.result is None:
            out["intermediate"] = self.intermediate_target()
        return out


# ---------------------------------------------------------------- the three baselines

@register("magnitude", MagnitudeConfig)
class MagnitudePruner(BaselinePruner):
    """Keep the units with the largest group norm of their output-side weights (L2 or L1).

        >>> p = MagnitudePruner(model, (x,), "generic-4tops", "latency=60%", norm="l1")
        >>> p.finalize().achieved_ratio <= 1.0
        True
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.norm = parse_choice(Norm, self.config.norm, "norm")
        self.normalize = bool(self.config.normalize)

    def scores(self) -> torch.Tensor:
        return magnitude_scores(self.graph, self.model, self.norm, self.normalize)


@register("taylor", TaylorConfig)
class TaylorPruner(BaselinePruner):
    """First-order Taylor importance (Molchanov et al., CVPR 2019): |Σ w·∂L/∂w| over a unit's entries.

    The sum runs over every parameter entry the unit owns, the consumers' input columns included
    (their w·g sums to the activation-side criterion Σ a·∂L/∂a), and is smoothed over steps with
    an exponential moving average. ``step()`` reads ``.grad`` (the driver calls it after
    ``optimizer.step()``, before the next ``zero_grad``); parameters without a gradient add nothing,
    and a step with no gradient at all leaves the scores as they were.

        >>> p = TaylorPruner(model, (x,), "generic-4tops", "memory=50%", ema_decay=0.9)
        >>> loss.backward(); opt.step(); p.step()      # scores now reflect this gradient
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        ema_decay = self.config.ema_decay
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise PrunerConfigError(f"ema_decay must be a number in [0, 1), got {ema_decay!r}")
        self.ema_decay = float(ema_decay)
        self.ema = torch.zeros(self.graph.num_units, dtype=torch.float64)
        self.seen = 0  # steps that had a gradient

    def _observe(self) -> None:
        if not any(p.grad is not None for p in self.model.parameters()):
            return
        dot = unit_sums(self.graph, self.model, lambda _, p: None if p.grad is None else p * p.grad,
                        output_side=False)
        self.ema.mul_(self.ema_decay).add_(dot.abs(), alpha=1.0 - self.ema_decay)
        self.seen += 1

    def scores(self) -> torch.Tensor:
        if self.seen == 0:
            warnings.warn("taylor: no gradient was seen before selection; ranking by weight magnitude instead",
                          RuntimeWarning, stacklevel=2)
            return magnitude_scores(self.graph, self.model, Norm.L2)
        return self.ema.clone()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(ema=self.ema.clone(), seen=self.seen)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("ema") is not None:
            self.ema, self.seen = state["ema"].double().clone(), int(state["seen"])
        super().load_state_dict(state)


@register("random", RandomConfig)
class RandomPruner(BaselinePruner):
    """Units ranked by seeded uniform random scores: the floor any method should beat.

        >>> a = RandomPruner(model, (x,), "generic-4tops", "latency=60%", seed=1)
        >>> torch.equal(a.scores(), RandomPruner(model, (x,), "generic-4tops", "latency=60%", seed=1).scores())
        True
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        seed = self.config.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PrunerConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)  # same on every DDP rank
        self._scores = torch.rand(self.graph.num_units, generator=gen, dtype=torch.float64)

    def scores(self) -> torch.Tensor:
        return self._scores.clone()


__all__ = ["BaselinePruner", "MagnitudePruner", "Norm", "PrunerConfigError", "RandomPruner", "Schedule",
           "TaylorPruner", "cubic_target", "magnitude_scores", "parse_choice", "select_unpruned", "unit_sums"]
