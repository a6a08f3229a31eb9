"""PDP: parameter-free differentiable pruning (Cho et al., NeurIPS 2023), on units and cost.

The paper's soft mask for a weight w is σ((w² − t²)/τ), with t set from the weights so the
target share of them falls below it. Here, per unit u (channel group, block, or N:M weight)::

    f_u = σ((s_u + t) / τ),   s_u = ‖W_u‖² / (mean ‖W_v‖² over u's group),   Σ c_u f_u = B

s_u is computed from the *current* weights at every forward, so the mask is a function of the
weights and adds no parameters: its gradient flows back into the weights themselves. t is solved
per forward by the same cost-weighted soft top-k as SMART (``soft_topk`` with logits s), c_u is the
cost saved by removing u, and τ follows SMART's schedule. ``finalize()`` ranks units by s and
selects under the true cost model, like every method.

    pruner = PdpPruner(model, (x,), "generic-4tops", "latency=60%", mask_steps=len(loader) * epochs)
    assert pruner.parameters() == []          # nothing for the driver's mask optimiser
    ... loss.backward(); opt.step(); pruner.step() ...
    result = pruner.finalize()
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import register
from .smart import SmartConfig, SmartPruner


def raw_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The stored parameter ``name`` (under a parametrization: the original, not W ⊙ f)."""
    owner, _, attr = name.rpartition(".")
    module = model.get_submodule(owner)
    if parametrize.is_parametrized(module, attr):
        return module.parametrizations[attr].original
    return getattr(module, attr)


@dataclass(frozen=True)
class PdpConfig(SmartConfig):
    """PDP's knobs are SMART's (its logits come from the weights, so nothing more)."""


@register("pdp", PdpConfig)
class PdpPruner(SmartPruner):
    """SMART's machinery with the learnable logits replaced by the units' normalised squared norms.

    Knobs are SMART's: ``structure``, ``nm``, ``group_size``, ``mask_steps``, ``tau_end_ratio``,
    ``relinearize_every``, ``frac_tol``. ``parameters()`` is empty.

        >>> p = PdpPruner(model, (x,), "generic-4tops", "memory=50%", mask_steps=100)
        >>> f = p.soft_keep()      # (n_units,), Σ c f = soft budget, differentiable in the weights
    """

    norm_safe = False  # the mask multiplies the weights its logits are read from (the paper's form)

    @property
    def logits(self) -> torch.Tensor:
        """(n_units,) s_u from the current weights, differentiable in them."""
        return self.weight_logits()

    @logits.setter
    def logits(self, value: torch.Tensor) -> None:
        """SMART's constructor assigns its learnable logits here; PDP has none, so it is dropped."""

    def parameters(self) -> list[nn.Parameter]:
        return []

    def _spread(self) -> float:
        """τ is measured in the spread of s at the start (floored: a trained model's s can be nearly equal)."""
        with torch.no_grad():
            s = self.weight_logits()
        return max(float(s.std()), 0.05) if s.numel() > 1 else 1.0

    def weight_logits(self) -> torch.Tensor:
        """(n_units,) float32: Σ of squared masked entries of each unit, over its group's mean."""
        tables = getattr(self, "_tables", None) or self._mask_tables(self.model)[0]  # attached, or not yet / no more
        s = None
        for name, entries in tables.items():
            w = raw_tensor(self.model, name)
            s = torch.zeros(self.graph.num_units, dtype=torch.float32, device=w.device) if s is None else s
            for dim, idx, unit in entries:
                s = s.index_add(0, *_entry_sums(w, dim, idx, unit))
        return _over_group_mean(s, self.graph.unit_group.to(s.device), len(self.graph.groups))


def _entry_sums(w: torch.Tensor, dim: int | None, idx, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit of each entry, its squared sum): block / N:M per weight, channel per slice along ``dim``."""
    sq = w.float().square()
    if dim is None:  # block / N:M: unit has the weight's shape
        return unit.to(w.device).flatten(), sq.flatten()
    per_entry = sq.sum(dim=[d for d in range(sq.dim()) if d != dim]) if sq.dim() > 1 else sq  # (size along dim,)
    return unit.to(w.device), per_entry[idx.to(w.device)]


def _over_group_mean(s: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """s_u / mean of s over u's group (differentiable; an all-zero group stays zero)."""
    sums = torch.zeros(n_groups, dtype=s.dtype, device=s.device).index_add(0, group, s)
    counts = torch.bincount(group, minlength=n_groups).to(s.dtype)
    mean = (sums / counts.clamp_min(1))[group]
    return s / mean.clamp_min(torch.finfo(s.dtype).tiny)


__all__ = ["PdpPruner", "raw_tensor"]
