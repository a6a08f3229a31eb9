"""Hard selection under the true (tiled, non-linear) cost model.

Units are ranked by score; the best unit of every channel group is kept (a group cannot be
emptied); then units are added best first whenever their exact marginal cost fits what is left
(cost is monotone in kept units). Channel graphs do it in one sweep that re-prices only the
layers each unit touches (:class:`~npu_compress.graph_cost.ChannelCosts`), re-trying a turned-down
unit only when one of its layers has changed since; block / N:M graphs bisect for the longest
prefix, then fill. On return no unkept unit fits, so the cost lies in [target - max unit cost, target].
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BudgetError
from ..graph_cost import ChannelCosts, predict, unit_costs
from ..hardware.budget import Budget, BudgetKind, measure
from ..hardware.profile import HardwareProfile
from ..graph.types import Structure


def mandatory_keep(graph, scores: torch.Tensor | None = None) -> torch.Tensor:
    """The units that must stay: one per channel group, and one of each producer's where its group does
    not already keep one (none for block / N:M) — the best-scored one, or without scores the narrowest
    one (a partial last tile), which makes the cheapest model."""
    keep = torch.zeros(graph.num_units, dtype=torch.bool)
    if graph.structure is not Structure.CHANNEL:
        return keep
    def best(units: list[int]) -> int:
        if scores is None:
            return min(units, key=lambda u: (graph.units[u].size, u))
        return units[int(torch.argmax(scores[torch.tensor(units)]))]

    for group in graph.groups:
        keep[best(list(group))] = True
    for cover in graph.covers:  # and every producer a channel
        if not bool(keep[cover].any()):
            keep[best(cover.tolist())] = True
    return keep


def minimum_cost(graph, profile: HardwareProfile, kind: BudgetKind) -> float:
    """The cost of the smallest model the graph allows (what no pruning can go below)."""
    keep = mandatory_keep(graph)
    return measure(predict(graph, keep, profile), kind)


def select_keep(graph, scores: torch.Tensor, profile: HardwareProfile, budget: Budget, target: float,
                max_fill_rounds: int = 64) -> torch.Tensor:
    """A keep-set of the highest-scored units whose true cost is at most ``target``."""
    if graph.structure is Structure.CHANNEL:
        return _select_channels(graph, scores, profile, budget, target)
    return select_by_bisection(graph, scores, profile, budget, target, max_fill_rounds)


def select_by_bisection(graph, scores: torch.Tensor, profile: HardwareProfile, budget: Budget, target: float,
                        max_fill_rounds: int = 64) -> torch.Tensor:
    """The general path (any structure): bisect for the longest prefix that fits, re-predicting the
    whole model per probe, then fill round by round (block / N:M; the channel sweep's reference)."""
    keep = select_prefix(graph, scores, profile, budget, target)
    return _fill(graph, keep, scores, profile, budget.kind, target, max_fill_rounds)


def select_prefix(graph, scores: torch.Tensor, profile: HardwareProfile, budget: Budget,
                  target: float) -> torch.Tensor:
    """The mandatory units and the longest run of the best-scored others whose true cost fits
    ``target``: a threshold set in score order (no unit kept below a dropped one), so its cost lies
    in [target - the next unit's marginal cost, target]. SMART's selection: its soft mask can only
    express threshold sets, and finalize() then keeps exactly what was trained."""
    kind = budget.kind
    keep = mandatory_keep(graph, scores)
    order = [u for u in torch.argsort(scores, descending=True, stable=True).tolist() if not keep[u]]

    def cost_with(k: int) -> float:
        trial = keep.clone()
        trial[order[:k]] = True
        return measure(predict(graph, trial, profile), kind)

    floor = cost_with(0)
    if floor > target:
        raise _infeasible(budget, target, floor)
    lo, hi = 0, len(order)  # invariant: cost_with(lo) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost_with(mid) <= target else (lo, mid - 1)
    keep[order[:lo]] = True
    return keep


def _infeasible(budget: Budget, target: float, floor: float) -> BudgetError:
    return BudgetError(f"budget {budget} = {budget.format_amount(target)} is infeasible: the unprunable parts "
                       f"cost {budget.format_amount(floor)}; ask for at least that")


def _select_channels(graph, scores: torch.Tensor, profile: HardwareProfile, budget: Budget,
                     target: float) -> torch.Tensor:
    """Channel graphs, incrementally: from the mandatory units, add units best-scored first whenever
    their exact marginal cost fits what is left (the prefix and the fill of the general path in one
    sweep); then re-try only the units whose layers changed since they were turned down, until none
    fits. Each try re-prices only the layers the unit touches (:class:`ChannelCosts`)."""
    kind = budget.kind
    fixed = mandatory_keep(graph, scores)
    keep = fixed.clone()
    floor = measure(predict(graph, keep, profile), kind)
    if floor > target:
        raise _infeasible(budget, target, floor)
    # layers as the dense model has them: a slice is priced as the copy it is there
    state = ChannelCosts(graph, profile, kind, keep, layers_at=torch.ones(graph.num_units, dtype=torch.bool))
    order = [u for u in torch.argsort(scores, descending=True, stable=True).tolist() if not keep[u]]
    changed_at = np.zeros(len(state.layer_costs), dtype=np.int64)  # sweep step at which a layer last changed
    tried_at: dict[int, int] = {}
    step, pending = 1, order
    while pending:
        refused = []
        for u in pending:
            step += 1
            if state.total + state.delta(u) <= target:
                state.flip(u)
                changed_at[state.layers_of(u)] = step
            else:
                tried_at[u] = step
                refused.append(u)
        # a refused unit can fit later only if one of its layers changed after it was tried (costs
        # only grow as units are added)
        pending = [u for u in refused if len(state.layers_of(u)) and changed_at[state.layers_of(u)].max() > tried_at[u]]
    keep = state.keep.clone()
    return _within(graph, keep, scores, profile, kind, target, fixed)


def _within(graph, keep: torch.Tensor, scores: torch.Tensor, profile: HardwareProfile, kind: BudgetKind,
            target: float, fixed: torch.Tensor) -> torch.Tensor:
    """The incremental state prices layers with the fusion and op kinds of where it started; the true
    cost re-derives them. Where that lands over ``target`` (rare), drop the worst-scored units."""
    while measure(predict(graph, keep, profile), kind) > target:
        droppable = (keep & ~fixed).nonzero().flatten()
        if not len(droppable):
            break
        keep[droppable[torch.argmin(scores[droppable])]] = False
    return keep


def _fill(graph, keep: torch.Tensor, scores: torch.Tensor, profile: HardwareProfile, kind: BudgetKind,
          target: float, rounds: int) -> torch.Tensor:
    """Add the best unkept unit whose exact marginal cost fits the slack, until none does."""
    rejected: set[int] = set()
    for _ in range(rounds):
        slack = target - measure(predict(graph, keep, profile), kind)
        marginal = unit_costs(graph, profile, kind, keep)
        fits = (~keep) & (marginal <= slack)
        for u in rejected:
            fits[u] = False
        if not fits.any():
            break
        candidates = fits.nonzero().flatten()
        u = int(candidates[torch.argmax(scores[candidates])])
        keep[u] = True
        if measure(predict(graph, keep, profile), kind) > target:  # non-linear interaction: undo
            keep[u] = False
            rejected.add(u)
    return keep


# ---------------------------------------------------------------- N:M: which layers to convert

def nm_keep(graph, scores: torch.Tensor, converted: set[str]) -> torch.Tensor:
    """Keep the N best of every M weights in ``converted`` weights; keep all weights elsewhere."""
    n, m = graph.nm
    keep = torch.ones(graph.num_units, dtype=torch.bool)
    for name, first, count in graph.param_unit_ranges():
        if name not in converted:
            continue
        block = scores[first:first + count].view(-1, m)  # (groups, M)
        top = torch.zeros_like(block, dtype=torch.bool).scatter_(1, block.topk(n, dim=1).indices, True)
        keep[first:first + count] = top.flatten()
    return keep


def choose_nm_layers(graph, scores: torch.Tensor, profile: HardwareProfile, budget: Budget,
                     target: float) -> set[str]:
    """Weights to store as N:M so the cost fits: least score lost per cost saved first, then revert
    converted weights to dense (last converted first) while the budget still holds."""
    kind = budget.kind
    dense_keep = torch.ones(graph.num_units, dtype=torch.bool)
    base = measure(predict(graph, dense_keep, profile), kind)
    ranked = []
    for name, first, count in graph.param_unit_ranges():
        alone = nm_keep(graph, scores, {name})
        saving = base - measure(predict(graph, alone, profile), kind)
        s = scores[first:first + count]
        lost = float(s[~alone[first:first + count]].sum() / s.sum().clamp_min(1e-30))
        if saving > 0:
            ranked.append((lost / saving, name))
    converted: list[str] = []
    cost = base
    for _, name in sorted(ranked):
        if cost <= target:
            break
        converted.append(name)
        cost = measure(predict(graph, nm_keep(graph, scores, set(converted)), profile), kind)
    if cost > target:
        raise BudgetError(f"budget {budget} = {budget.format_amount(target)} is infeasible with "
                          f"{graph.nm[0]}:{graph.nm[1]} sparsity: every weight packed costs "
                          f"{budget.format_amount(cost)}; ask for at least that")
    for name in reversed(list(converted)):
        trial = set(converted) - {name}
        if measure(predict(graph, nm_keep(graph, scores, trial), profile), kind) <= target:
            converted.remove(name)
    return set(converted)
