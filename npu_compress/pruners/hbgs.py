"""HBGS / HBGTS: greedy hierarchical channel pruning with least-squares compensation.

Purohit et al., "A greedy hierarchical approach to whole-network filter-pruning in CNNs"
(TMLR 2024, arXiv 2409.03777), on the pruning graph's channel units and the true cost model:

- within a group (coupled channels), on the calibration inputs of every consumer conv/linear,
  choose the units to drop so the dropped channels are best rebuilt as linear combinations of the
  kept ones (backward elimination or OMP, ``hbgs_select.py``), and fold the least-squares
  coefficients into each consumer's input weights (W_S += W_R Bᵀ, per kernel tap);
- across groups, in rounds: tentatively drop the next p units of every group that keeps ≥ 2,
  score the error on the calibration batch (HBGS: relative error of that group's consumers'
  outputs; HBGTS: relative error of the network output) per unit of profile cost saved, and
  apply the best, until the cost meets the schedule's goal.

Pruning happens in ``rounds`` events spread over the mask phase (a linear schedule from the
dense cost to the budget), so training runs between them; ``finalize()`` finishes the rest.

    pruner = HbgsPruner(model, (x,), "ethos-u55-128", "latency=50%",
                        calibration=data.x_train[:256], mask_steps=len(loader) * epochs)
    ... loss.backward(); opt.step(); pruner.step() ...
    result = pruner.finalize()

Calibration must come from the training split (the driver passes ``dataset.x_train[:256]``);
the pruner never sees a dataset, only that tensor.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..choices import Choice
from ..distributed import is_distributed
from ..errors import NpuCompressError, PrunerConfigError
from ..graph import Structure, apply_masks
from ..graph.masks import get_tensor
from ..graph_cost import predict
from .base import Pruner, register
from .problem import MethodConfig, checked_calibration
from .hbgs_select import Fit, fold, gram, ls_coefficients, removal_order, weight_delta
from .importance import _input_dim, unit_sq_norms
from .select import measure

log = logging.getLogger(__name__)


class HbgsError(PrunerConfigError):
    """Bad input to HBGS / HBGTS: a structure other than channel, bad calibration data or knobs."""


class Selection(Choice):
    """How units are chosen within a group."""

    BACKWARD = "backward"  # backward elimination, closed-form residual increase
    OMP = "omp"  # orthogonal-matching-pursuit-style forward selection


class ErrorTarget(Choice):
    """Where a tentative removal's error is measured."""

    LAYER = "layer"  # HBGS: the group's consumers' outputs
    NETWORK = "network"  # HBGTS: the network output


@dataclass(frozen=True)
class Consumer:
    """A conv / linear reading a group's channels: ``weight[..., cols, ...]`` along ``dim`` belong to ``units``."""

    module: str
    param: str
    dim: int
    cols: torch.Tensor  # (c,) input columns of the group (channels; features after a flatten)
    units: torch.Tensor  # (c,) unit of each column


def find_consumers(graph: Any, model: nn.Module) -> list[list[Consumer]]:
    """Per group, the consumers whose input is linear in the group's channels (conv with groups=1, linear).

    Depthwise / grouped convs, transposed convs and non-weight readers (attention scores, norms)
    are not consumers: their channels are dropped without compensation.
    """
    out: list[list[Consumer]] = [[] for _ in range(len(graph.groups))]
    for (name, dim), (idx, unit) in graph.param_tables().items():
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if attr != "weight" or _input_dim(module) != dim or not _compensable(module):
            continue
        groups = graph.unit_group[unit]
        for g in groups.unique().tolist():
            sel = groups == g
            out[g].append(Consumer(path, name, dim, idx[sel], unit[sel]))
    return out


def _compensable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and module.groups == 1
            and module.padding_mode == "zeros")


@dataclass
class _Seen:
    """One consumer in one round: its input at the group's kept columns, their Gram and units."""

    consumer: Consumer
    pos: torch.Tensor  # (k,) positions in consumer.cols of the kept columns
    fit: Fit
    x_dim: int  # the columns' dim in xs: 1 (conv, channels first) or -1 (linear)
    xs: list[torch.Tensor] = field(default_factory=list)  # inputs at those columns (HBGS only)
    out_sq: float = 0.0  # ||consumer output||² on the batch

    def restrict(self, keep: torch.Tensor) -> "_Seen":
        """The same activations at the columns of the units still kept (no new forward)."""
        idx = keep[self.fit.col_unit].nonzero().flatten()
        if len(idx) == len(self.pos):
            return self
        fit = Fit(self.fit.gram[idx][:, idx], self.fit.col_unit[idx])
        xs = [x.index_select(self.x_dim % x.dim(), idx.to(x.device)) for x in self.xs]
        return _Seen(self.consumer, self.pos[idx], fit, self.x_dim, xs, self.out_sq)


@dataclass
class _Plan:
    """Drop ``units`` of ``group``; per consumer the (keep, drop) positions and B (X_R ≈ X_S B)."""

    group: int
    units: list[int]
    comp: list[tuple[_Seen, torch.Tensor, torch.Tensor, torch.Tensor | None]]  # B None: no compensation


@dataclass(frozen=True)
class HbgsConfig(MethodConfig):
    """``p``: channels tried per group and round; ``rounds``: pruning events over the mask phase;
    ``selection``: backward or omp within a group; ``ridge``: least-squares regulariser; ``compensate``:
    fold the least-squares coefficients into the consumers; ``rescore_every``: rounds between full
    re-scoring; ``calibration``: training inputs the errors are measured on (the driver gives
    its training split; not a command-line knob)."""

    p: int = 1
    rounds: int = 10
    selection: Selection = Selection.BACKWARD
    ridge: float = 1e-6
    compensate: bool = True
    rescore_every: int = 1
    calibration: torch.Tensor | None = field(default=None, repr=False, metadata={"cli": False})

    def for_run(self, mask_steps: int, calibration: torch.Tensor | None = None) -> "HbgsConfig":
        out = super().for_run(mask_steps, calibration)
        return out if out.calibration is not None else dataclasses.replace(out, calibration=calibration)


@dataclass(frozen=True)
class HbgtsConfig(HbgsConfig):
    """HBGTS's knobs are HBGS's (it measures errors at the network output instead)."""


@register("hbgs", HbgsConfig)
class HbgsPruner(Pruner):
    """HBGS: the error of a tentative removal is measured at the group's consumers' outputs."""

    error_target: ClassVar[ErrorTarget] = ErrorTarget.LAYER

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c, structure, model = self.config, self.problem.structure, self.model
        p, rounds, mask_steps, selection, ridge = c.p, c.rounds, c.steps, c.selection, c.ridge
        if structure is not Structure.CHANNEL:
            raise HbgsError(f"{type(self).__name__} prunes channels only (structure='channel'), got "
                            f"structure='{structure}'; use method 'smart' for block or N:M sparsity")
        try:
            self.selection = Selection(selection)
        except ValueError:
            raise HbgsError(f"selection must be one of {', '.join(s.value for s in Selection)}, "
                            f"got {selection!r}") from None
        for knob, value in (("p", p), ("rounds", rounds), ("mask_steps", mask_steps),
                            ("rescore_every", c.rescore_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise HbgsError(f"{knob} must be a positive integer, got {value!r}")
        if not ridge > 0:
            raise HbgsError(f"ridge must be > 0, got {ridge!r}")
        self.p, self.rounds, self.mask_steps, self.ridge = p, rounds, mask_steps, float(ridge)
        self.compensate, self.rescore_every = bool(c.compensate), c.rescore_every
        self.calibration = _calibration(c.calibration, self.problem.example_inputs)
        self.consumers = find_consumers(self.graph, model)
        self.keep = torch.ones(self.graph.num_units, dtype=torch.bool)
        self.removed: list[int] = []  # units in the order they were dropped
        self.cost = measure(self.dense, self.budget.kind)
        self.steps = self.events = 0
        self._forget()

    # -- the lifecycle -------------------------------------------------------------------
    def _step(self) -> None:
        """After each optimizer step: hold dropped units at zero; every ``mask_steps // rounds`` steps, prune."""
        self.steps += 1
        if self.removed:
            apply_masks(self.model, self.graph, self.keep)
        if self.events < self.rounds and self.steps % max(self.mask_steps // self.rounds, 1) == 0:
            self.events += 1
            self._event(self._goal(self.events))

    def _select(self) -> torch.Tensor:
        """``finalize()``: finish the remaining rounds down to the budget; keep what the greedy search left."""
        self.events = self.rounds
        self._event(self.target)
        if self.cost > self.target:
            raise NpuCompressError(f"{self.name}: cost {self.budget.format_amount(self.cost)} is still above the "
                                   f"budget {self.budget.format_amount(self.target)} with no group left to prune")
        return self.keep.clone()

    def scores(self) -> torch.Tensor:
        """Kept units 1; dropped units below, the earliest dropped lowest (the order the greedy search chose)."""
        out = torch.ones(self.graph.num_units, dtype=torch.float64)
        n = max(len(self.removed), 1)
        for i, u in enumerate(self.removed):
            out[u] = i / n - 1.0
        return out

    def state(self) -> dict[str, float]:
        out = super().state()
        out.update(predicted=self.cost, dropped=float(len(self.removed)), events=float(self.events))
        return out

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(hbgs_removed=list(self.removed), steps=self.steps, events=self.events)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the weights (already compensated and masked) come from the checkpoint's model."""
        self.removed = list(state.get("hbgs_removed", []))
        self.keep = torch.ones(self.graph.num_units, dtype=torch.bool)
        self.keep[self.removed] = False
        self.steps, self.events = int(state.get("steps", 0)), int(state.get("events", 0))
        super().load_state_dict(state)
        if self.result is not None:
            self.keep = self.result.keep.clone()
        self.cost = self._cost(self.keep)

    # -- rounds ------------------------------------------------------------------------------
    def _goal(self, event: int) -> float:
        dense = measure(self.dense, self.budget.kind)
        return self.target if event >= self.rounds else dense - (dense - self.target) * event / self.rounds

    def _cost(self, keep: torch.Tensor) -> float:
        return measure(predict(self.graph, keep, self.profile), self.budget.kind)

    def _kept_units(self, g: int) -> list[int]:
        return [u for u in self.graph.groups[g] if self.keep[u]]

    def _forget(self) -> None:
        """Drop cached activations and scores (the weights changed: training, or another rank's result)."""
        self._seen: dict[int, list[_Seen]] | None = None
        self._scored: dict[int, tuple[_Plan, float]] = {}
        self._reference: torch.Tensor | None = None
        self._norms: torch.Tensor | None = None  # output-side norms, for groups without a consumer to fit
        self._stale = 0

    def _event(self, goal: float) -> None:
        """Greedy rounds until the cost is at most ``goal``; ranks then agree on rank 0's result."""
        self._forget()
        was = self.model.training
        self.model.eval()
        try:
            while self.cost > goal and self._round(goal):
                pass
        finally:
            self.model.train(was)
            self._forget()
        _sync_ranks(self)

    @torch.no_grad()
    def _round(self, goal: float) -> bool:
        """One round: score every group's next p units, apply the best. False when nothing is left to drop.

        Activations are collected once per round (every ``rescore_every`` rounds: in between, only the
        group just pruned is re-scored, on its cached activations at the columns it still keeps)."""
        candidates = [g for g in range(len(self.graph.groups)) if len(self._kept_units(g)) >= 2]
        if not candidates:
            return False
        if self._seen is None or self._stale >= self.rescore_every:
            self._forget()
            self._seen, self._reference = self._collect(candidates)
        best = None
        for g in candidates:
            if g not in self._scored:
                self._seen[g] = [r for r in (s.restrict(self.keep) for s in self._seen[g]) if len(r.pos)]
                # every producer keeps a channel: a concat into a grouped conv can tie two in one group
                order = self.graph.droppable(self.keep, self._order(g, self._seen[g]))
                plan = self._plan(g, self._seen[g], order) if order else None
                self._scored[g] = (plan, self._error(plan) if order else math.inf)
            plan, err = self._scored[g]
            if plan is None:
                continue
            trial = self.keep.clone()
            trial[plan.units] = False
            saved = self.cost - self._cost(trial)
            key = (0, err / saved, g) if saved > 0 else (1, err, g)
            best = min(best, (key, plan)) if best is not None else (key, plan)
        if best is None:
            return False
        (_, err_ratio, _), plan = best
        plan = self._trim(plan, self._seen[plan.group], goal)
        self._apply(plan)
        del self._scored[plan.group]
        self._stale += 1
        self._reference = None  # the network changed: HBGTS needs a new reference output
        log.debug("%s: group %d drops units %s (error/cost %.3g), cost %.4g", self.name, plan.group,
                  plan.units, err_ratio, self.cost)
        return True

    def _trim(self, plan: _Plan, seen: list[_Seen], goal: float) -> _Plan:
        """Drop only as many of the plan's units (in order) as the goal needs: the last round lands within one unit."""
        for i in range(1, len(plan.units)):
            trial = self.keep.clone()
            trial[plan.units[:i]] = False
            if self._cost(trial) <= goal:
                return self._plan(plan.group, seen, plan.units[:i])
        return plan

    def _apply(self, plan: _Plan) -> None:
        _drop(self.model, self.graph, plan)
        self.keep[plan.units] = False
        self.removed += plan.units
        self.cost = self._cost(self.keep)

    # -- within a group ------------------------------------------------------------------
    def _collect(self, groups: list[int]) -> tuple[dict[int, list[_Seen]], torch.Tensor | None]:
        """One forward of the calibration batch: every candidate consumer's input, Gram and output norm."""
        keep_x = self.error_target is ErrorTarget.LAYER
        wanted = {c.module for g in groups for c in self.consumers[g]}
        taken: dict[str, list[tuple[torch.Tensor, float]]] = {m: [] for m in wanted}

        def hook(name):
            def record(module, args, out):
                if args and isinstance(out, torch.Tensor):  # (input, ||output||²) of every call
                    taken[name].append((args[0].detach(), float(out.detach().double().square().sum())))
            return record

        handles = [self.model.get_submodule(m).register_forward_hook(hook(m)) for m in wanted]
        try:
            out = self._output()
        finally:
            for h in handles:
                h.remove()
        seen: dict[int, list[_Seen]] = {}
        for g in groups:
            seen[g] = [self._observe(c, taken[c.module], keep_x) for c in self.consumers[g] if taken[c.module]]
        return seen, out

    def _observe(self, c: Consumer, calls: list[tuple[torch.Tensor, float]], keep_x: bool) -> _Seen:
        pos = self.keep[c.units].nonzero().flatten()
        cols = c.cols[pos]
        module = self._module(c)
        xs = [x.index_select(x.dim() - 1 if isinstance(module, nn.Linear) else 1, cols.to(x.device)) for x, _ in calls]
        flat = [_as_rows(x, module) for x in xs]
        g = sum(gram(f).cpu() for f in flat)
        x_dim = -1 if isinstance(module, nn.Linear) else 1
        return _Seen(c, pos, Fit(g, c.units[pos]), x_dim, xs if keep_x else [], sum(s for _, s in calls))

    def _output(self) -> torch.Tensor:
        return _flat_output(self.model(self.calibration.to(_device(self.model))))

    def _module(self, c: Consumer) -> nn.Module:
        return self.model.get_submodule(c.module)

    def _order(self, g: int, seen: list[_Seen]) -> list[int]:
        """The group's next units to drop: by the LS residual, or (no consumer to fit) smallest weights first."""
        units = self._kept_units(g)
        p = min(self.p, len(units) - 1)
        if not seen:
            if self._norms is None:
                self._norms = unit_sq_norms(self.graph, self.model)
            return sorted(units, key=lambda u: float(self._norms[u]))[:p]
        return removal_order([s.fit for s in seen], units, p, self.selection.value, self.ridge)

    def _plan(self, g: int, seen: list[_Seen], units: list[int]) -> _Plan:
        comp = []
        for s in seen:
            dropped = torch.isin(s.fit.col_unit, torch.as_tensor(units, dtype=torch.long))
            keep, drop = (~dropped).nonzero().flatten(), dropped.nonzero().flatten()
            if drop.numel():
                b = ls_coefficients(s.fit.gram, keep, drop, self.ridge) if self.compensate else None
                comp.append((s, keep, drop, b))
        return _Plan(g, list(units), comp)

    def _error(self, plan: _Plan) -> float:
        """Relative error of the tentative removal: consumers' outputs (HBGS) or the network output (HBGTS)."""
        if self.error_target is ErrorTarget.LAYER and plan.comp:
            rel = [_layer_error(self._module(s.consumer), s, keep, drop, b) / max(s.out_sq, 1e-30)
                   for s, keep, drop, b in plan.comp]
            return sum(rel) / len(rel)
        if self._reference is None:
            self._reference = self._output()
        reference = self._reference
        saved = _backup(self.model, self.graph, plan)
        try:
            _drop(self.model, self.graph, plan)
            out = self._output()
        finally:
            for name, t in saved.items():
                get_tensor(self.model, name).copy_(t)
        return float((out - reference).double().square().sum() / reference.double().square().sum().clamp_min(1e-30))


@register("hbgts", HbgtsConfig)
class HbgtsPruner(HbgsPruner):
    """HBGTS: the error of a tentative removal is measured at the network output (one forward per group)."""

    error_target: ClassVar[ErrorTarget] = ErrorTarget.NETWORK



# ---------------------------------------------------------------- helpers

def _calibration(calibration: Any, example_inputs: Any) -> torch.Tensor:
    """The calibration batch: a training-split tensor, or (with a warning) the example input plus noise."""
    if calibration is not None:
        return checked_calibration(calibration, example_inputs, HbgsError, "HBGS / HBGTS")
    example = example_inputs if isinstance(example_inputs, torch.Tensor) else example_inputs[0]
    example = checked_calibration(example, example_inputs, HbgsError, "HBGS / HBGTS")  # one input tensor
    log.warning("HBGS: no calibration batch given; using the example input repeated with noise. Pass "
                "calibration=dataset.x_train[:256] (training data, never the test split) for a meaningful "
                "selection")
    scale = float(example.float().std()) if example.numel() > 1 else 0.0
    gen = torch.Generator().manual_seed(0)
    base = example.expand(32, *example.shape[1:])
    return base + (scale or 1.0) * torch.randn(base.shape, generator=gen).to(base.dtype)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _flat_output(out: Any) -> torch.Tensor:
    """The model's output(s) flattened into one float vector."""
    if isinstance(out, torch.Tensor):
        return out.detach().flatten().float()
    items = out.values() if isinstance(out, dict) else out
    return torch.cat([_flat_output(o) for o in items])


def _as_rows(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """A consumer input at the group's columns as (samples, columns): conv (N, C, *S) -> (N·S, C)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _layer_error(module: nn.Module, s: _Seen, keep: torch.Tensor, drop: torch.Tensor, b: torch.Tensor | None) -> float:
    """||Δ output||² of one consumer: its own op applied to the inputs at the group's kept columns with ΔW."""
    w = module.weight.detach()
    cols = s.consumer.cols[s.pos].to(w.device)
    sub = w.index_select(s.consumer.dim, cols)  # (out, k, *kernel) or (out, k)
    delta = weight_delta(sub, s.consumer.dim, keep.to(w.device), drop.to(w.device),
                         None if b is None else b.to(w.device))
    total = 0.0
    for x in s.xs:
        y = F.linear(x, delta) if isinstance(module, nn.Linear) else module._conv_forward(x, delta, None)
        total += float(y.double().square().sum())
    return total


def _backup(model: nn.Module, graph: Any, plan: _Plan) -> dict[str, torch.Tensor]:
    names = {sl.param for u in plan.units for sl in graph.units[u].slices}
    names |= {s.consumer.param for s, *_ in plan.comp}
    return {n: get_tensor(model, n).detach().clone() for n in names}


@torch.no_grad()
def _drop(model: nn.Module, graph: Any, plan: _Plan) -> None:
    """Fold the LS coefficients into the consumers, then zero every slice of the plan's units."""
    for s, keep, drop, b in plan.comp:
        w = get_tensor(model, s.consumer.param)
        cols = s.consumer.cols[s.pos].to(w.device)
        fold(w, s.consumer.dim, cols[keep], cols[drop], None if b is None else b.to(w.device))
    for u in plan.units:
        for sl in graph.units[u].slices:
            t = get_tensor(model, sl.param)
            t.index_fill_(sl.dim, sl.indices().to(t.device), 0)


def _sync_ranks(pruner: HbgsPruner) -> None:
    """Under DDP every rank adopts rank 0's weights and keep-set (the search is deterministic, this makes sure)."""
    if not is_distributed():
        return
    for t in pruner.model.state_dict().values():
        if isinstance(t, torch.Tensor):
            dist.broadcast(t, src=0)
    removed = [pruner.removed]
    dist.broadcast_object_list(removed, src=0)
    pruner.removed = list(removed[0])
    pruner.keep = torch.ones(pruner.graph.num_units, dtype=torch.bool)
    pruner.keep[pruner.removed] = False
    pruner.cost = pruner._cost(pruner.keep)


__all__ = ["ErrorTarget", "HbgsError", "HbgsPruner", "HbgtsPruner", "Selection", "find_consumers"]
