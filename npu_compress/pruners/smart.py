"""SMART: learnable per-unit mask logits, a cost-weighted differentiable top-k, a decaying temperature.

Our formulation of Ding et al. (arXiv 2403.19969), as docs/METHODS.md describes it:

- every unit u has its own logit m_u (an ``nn.Parameter``), initialised to the log of its weight
  norm divided by its group's mean norm;
- the forward uses W ⊙ f on the output side of each unit, f_u = σ((m_u + t)/τ), with t solved so
  that Σ c_u f_u = B: c_u the cost saved by removing u (re-linearised every few hundred steps),
  B the budget minus the cost nothing can remove (N:M: Σ f = N per group of M instead);
- τ decays exponentially from the logits' spread to ``tau_end_ratio`` of it over ``mask_steps``
  steps, and keeps decaying while more than ``frac_tol`` of the units are fractional;
- ``finalize()`` ranks units by logit and takes them under the true tiled cost model.

    pruner = SmartPruner(model, (x,), "ethos-u55-256", "latency=50%", mask_steps=len(loader) * epochs)
    mask_opt = torch.optim.Adam(pruner.parameters(), lr=0.05)     # own group, no weight decay
    ... loss.backward(); opt.step(); mask_opt.step(); pruner.step() ...
    result = pruner.finalize()
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

from dataclasses import dataclass

from ..distributed import is_distributed
from ..errors import PrunerConfigError
from ..graph_cost import predict, unit_costs
from .base import Pruner, register
from .problem import MethodConfig
from .importance import normalized_by_group, output_side_tables, unit_sq_norms
from .select import mandatory_keep, measure
from .topk import soft_topk, soft_topk_groups, solve_threshold
from ..graph.types import Structure

_FRACTIONAL = (0.05, 0.95)


class _SoftMask(nn.Module):
    """Parametrization W -> W ⊙ mask, the mask computed once per forward by the pruner."""

    def __init__(self, pruner: "SmartPruner", name: str):
        super().__init__()
        self.name = name
        object.__setattr__(self, "_pruner", pruner)  # not a submodule: keep it out of state_dict / .to()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._pruner.mask_for(self.name).to(device=w.device, dtype=w.dtype)


@dataclass(frozen=True)
class SmartConfig(MethodConfig):
    """SMART's knobs. ``tau_end_ratio``: the temperature decays to this fraction of its start over the
    mask phase; ``relinearize_every``: steps between re-linearisations of the unit costs (0: never);
    ``frac_tol``: keep decaying past the mask phase while more than this share of units is fractional."""

    tau_end_ratio: float = 1e-3
    relinearize_every: int = 200
    frac_tol: float = 0.01


@register("smart", SmartConfig)
class SmartPruner(Pruner):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c, model = self.config, self.model
        mask_steps, tau_end_ratio = c.steps, c.tau_end_ratio
        relinearize_every, frac_tol = c.relinearize_every, c.frac_tol
        if mask_steps < 1:
            raise PrunerConfigError(f"mask_steps must be >= 1, got {mask_steps}")
        z = normalized_by_group(unit_sq_norms(self.graph, model).sqrt(), self.graph)
        self.logits = nn.Parameter(torch.log(z + 1e-3).float())  # (n_units,)
        if is_distributed():
            dist.broadcast(self.logits.data, src=0)  # identical start on every rank
            self.logits.register_hook(_average_across_ranks)
        self.tau0 = max(float(self.logits.detach().std()), 0.05) if self.logits.numel() > 1 else 1.0
        self.tau = self.tau0
        self.gamma = tau_end_ratio ** (1.0 / mask_steps)
        self.mask_steps, self.frac_tol, self.relinearize_every = mask_steps, frac_tol, relinearize_every
        self.steps = 0
        self._linearize(torch.ones(self.graph.num_units, dtype=torch.bool))
        self._cache: dict[str, torch.Tensor] | None = None
        self._tables: dict[str, list] = {}
        self._hook = None
        self._attach()

    def _attach(self) -> None:
        """Register the soft-mask parametrizations and the per-forward cache reset."""
        self._tables = self._mask_tables(self.model)
        self._hook = self.model.register_forward_pre_hook(lambda m, a: self._invalidate())
        for name in self._tables:
            owner, _, attr = name.rpartition(".")
            parametrize.register_parametrization(self.model.get_submodule(owner), attr, _SoftMask(self, name),
                                                 unsafe=True)

    def _detach(self) -> None:
        """Remove the soft masks: parameters are W again (not W ⊙ f)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for name in self._tables:
            owner, _, attr = name.rpartition(".")
            parametrize.remove_parametrizations(self.model.get_submodule(owner), attr, leave_parametrized=False)
        self._tables = {}

    # -- soft masks ----------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [self.logits]

    def _linearize(self, keep: torch.Tensor) -> None:
        """c_u at ``keep`` and B = target - (cost of keep - Σ c over kept units): Σ c f = B is the budget."""
        if self.graph.structure is Structure.NM:
            return
        kind = self.budget.kind
        costs = unit_costs(self.graph, self.profile, kind, keep).clamp_min(1e-30)
        at_keep = measure(predict(self.graph, keep, self.profile), kind)
        fixed = at_keep - float(costs[keep].sum())
        scale = float(costs.sum())
        self.costs = (costs / scale).float()  # normalised: Σ c = 1
        # clamp into the open interval soft_topk accepts (the hard selection uses the true cost)
        self.soft_budget = min(max((self.target - fixed) / scale, 1e-4), 1.0 - 1e-6)

    def _mask_tables(self, model: nn.Module) -> dict[str, list]:
        tables: dict[str, list] = {}
        if self.graph.structure is Structure.CHANNEL:
            for name, dim, idx, unit in output_side_tables(self.graph, model):
                tables.setdefault(name, []).append((dim, idx, unit))
        else:
            converted = self.nm_layers if self.graph.structure is Structure.NM else None
            for name, entry_unit in self.graph.entry_units():
                if converted is None or name in converted:
                    tables[name] = [(None, None, entry_unit)]
        return tables

    def soft_keep(self) -> torch.Tensor:
        """f, (n_units,): the current soft mask."""
        m = self.logits
        if self.graph.structure is not Structure.NM:
            return soft_topk(m, self.costs.to(m.device), self.soft_budget, self.tau)
        n, width = self.graph.nm
        f = torch.ones_like(m)
        for name, first, count in self.graph.param_unit_ranges():
            if name in self.nm_layers:
                rows = soft_topk_groups(m[first:first + count].view(-1, width), n, self.tau)
                f = f.index_put((torch.arange(first, first + count, device=m.device),), rows.flatten())
        return f

    def _invalidate(self) -> None:
        self._cache = None

    def mask_for(self, name: str) -> torch.Tensor:
        if self._cache is None:
            self._cache = self._build_masks(self.soft_keep())
        return self._cache[name]

    def _build_masks(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, entries in self._tables.items():
            shape = self.graph.param_shapes[name]
            mask = None
            for dim, idx, unit in entries:
                if dim is None:  # block / N:M: one factor per weight entry
                    part = f[unit.to(f.device)]
                else:
                    vec = torch.ones(shape[dim], dtype=f.dtype, device=f.device).index_put(
                        (idx.to(f.device),), f[unit.to(f.device)])
                    view = [1] * len(shape)
                    view[dim] = shape[dim]
                    part = vec.view(view)
                mask = part if mask is None else mask * part
            out[name] = mask
        return out

    # -- schedule --------------------------------------------------------------------------
    def fractional(self) -> float:
        """Share of units with f in (0.05, 0.95)."""
        with torch.no_grad():
            f = self.soft_keep()
        return float(((f > _FRACTIONAL[0]) & (f < _FRACTIONAL[1])).float().mean())

    def _step(self) -> None:
        self.steps += 1
        self._cache = None
        if self.steps <= self.mask_steps or self.fractional() > self.frac_tol:
            self.tau *= self.gamma
        if self.relinearize_every and self.steps % self.relinearize_every == 0:
            self._linearize(self._hard_guess())

    def converged(self) -> bool:
        return self.fractional() <= self.frac_tol

    def _hard_guess(self) -> torch.Tensor:
        with torch.no_grad():
            keep = self.soft_keep() > 0.5
        return keep.cpu() | mandatory_keep(self.graph, self.logits.detach().double().cpu())

    def scores(self) -> torch.Tensor:
        return self.logits.detach()

    def _before_finalize(self) -> None:
        """Drop the soft masks: the weights go back to W, then the hard masks zero the pruned units."""
        self._detach()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(logits=self.logits.detach().clone(), tau=self.tau, steps=self.steps,
                   costs=getattr(self, "costs", None), soft_budget=getattr(self, "soft_budget", None))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "logits" in state:
            self.logits.data.copy_(state["logits"])
            self.tau, self.steps = float(state["tau"]), int(state["steps"])
            if state.get("costs") is not None:
                self.costs, self.soft_budget = state["costs"], float(state["soft_budget"])
        layers = set(state.get("nm_layers") or [])
        if state.get("keep") is None and self.graph.structure is Structure.NM and layers != self.nm_layers:
            self._detach()  # the checkpoint converted other weights: mask those instead
            self.nm_layers = layers
            self._attach()
        super().load_state_dict(state)

    def state(self) -> dict[str, float]:
        out = super().state()
        if self.result is not None:
            out.update(tau=self.tau, predicted=measure(self.result.predicted, self.budget.kind))
            return out
        with torch.no_grad():
            f = self.soft_keep()
            out["tau"] = self.tau
            out["fractional"] = float(((f > _FRACTIONAL[0]) & (f < _FRACTIONAL[1])).float().mean())
            if self.graph.structure is not Structure.NM:
                out["residual"] = abs(float((self.costs.to(f.device) * f).sum()) - self.soft_budget) / self.soft_budget
                out["threshold"] = solve_threshold(self.logits.detach(), self.costs, self.soft_budget, self.tau)
        out["predicted"] = measure(predict(self.graph, self._hard_guess(), self.profile), self.budget.kind)
        return out


def _average_across_ranks(grad: torch.Tensor) -> torch.Tensor:
    """Logits are not inside the DDP module: average their gradient over ranks during backward."""
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


__all__ = ["SmartPruner"]
