"""SMART: learnable per-unit mask logits, a cost-weighted differentiable top-k, a decaying temperature.

Our formulation of Ding et al. (arXiv 2403.19969), as docs/METHODS.md describes it:

- every unit u has its own logit m_u (an ``nn.Parameter``), started by :mod:`.smart_start`: the
  log of its activation RMS on a calibration batch (weight norm without one), standardised within
  its group (spread 1), shifted per group so that threshold 0 keeps the same share of every group,
  the largest share that fits the budget;
- the forward multiplies each unit's output-side parameters by f_u = σ((m_u + t)/τ), t solved so
  that Σ c_u f_u = B: c_u the cost saved by removing u, linearised at the hard guess (a fixed point
  at construction, then every ``relinearize_every`` steps the guess has moved), B the budget minus
  the cost nothing can remove (N:M: Σ f = N per group of M instead). Where a norm follows a conv,
  the norm's affine parameters carry the mask, not the conv's rows: its running statistics stay
  valid, so ``finalize()`` does not collapse accuracy;
- τ decays exponentially from ``tau_start`` (in units of the logits' spread) to ``tau_end_ratio``
  of it over ``mask_steps`` steps, and keeps decaying while more than ``frac_tol`` of the units are
  fractional;
- ``finalize()`` ranks units by logit and takes them under the true tiled cost model.

``learn=False`` is the frozen-logit control: the same soft masks, temperature and re-linearisation,
the logits never trained. SMART must beat it for the learned mask to earn its place.

    pruner = SmartPruner(model, (x,), "ethos-u55-256", "latency=50%", mask_steps=len(loader) * epochs)
    mask_opt = torch.optim.Adam(pruner.parameters(), lr=0.01)     # own group, no weight decay
    ... loss.backward(); opt.step(); mask_opt.step(); pruner.step() ...
    result = pruner.finalize()
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parametrize

import dataclasses
from dataclasses import dataclass, field

from ..choices import Choice
from ..distributed import is_distributed
from ..errors import PrunerConfigError
from ..graph_cost import predict, unit_costs
from .base import Pruner, register
from .problem import MethodConfig, checked_calibration
from .importance import output_side_tables, unit_sq_norms
from .smart_start import norm_safe_tables, starting_logits
from .select import mandatory_keep, measure, select_prefix
from .topk import soft_topk, soft_topk_groups, solve_threshold
from ..graph import masked_norm, norm_weights
from ..graph.types import Structure

_FRACTIONAL = (0.05, 0.95)
_F_FLOOR = 1e-8  # soft mask factors below this are 0 (subnormal floats are slow on CPUs; see soft_keep)
_NORM = "norm:"  # mask cache key prefix of a norm's statistics weights


class _SoftMask(nn.Module):
    """Parametrization W -> W ⊙ mask, the mask computed once per forward by the pruner."""

    def __init__(self, pruner: "SmartPruner", name: str):
        super().__init__()
        self.name = name
        object.__setattr__(self, "_pruner", pruner)  # not a submodule: keep it out of state_dict / .to()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self._pruner.mask_for(self.name).to(device=w.device, dtype=w.dtype)


class MaskUpdate(Choice):
    RELATIVE = "relative"
    ADAM = "adam"


@dataclass(frozen=True)
class SmartConfig(MethodConfig):
    """SMART's knobs. ``tau_start``: the first temperature, in units of the starting logits' spread
    within a group (1); ``tau_end_ratio``: τ decays to this fraction of ``tau_start`` over the mask
    phase; ``relinearize_every``: steps between re-linearisations of the unit costs at the hard guess
    (skipped while the guess has not moved; 0: only at construction); ``frac_tol``: keep decaying
    past the mask phase while more than this share of units is fractional; ``learn``: False freezes
    the logits at their start (the control run); ``mask_update``: "relative" (SGD with momentum on
    each logit's gradient over the root-mean-square of all of them: a unit moves in proportion to
    how much more its gradient says than the others') or "adam" (per-logit normalised steps, which
    move a unit with a tiny but steady gradient as fast as any); ``calibration``: training inputs the activation
    importance is measured on (the driver gives its training split; not a command-line knob)."""

    tau_start: float = 0.5
    tau_end_ratio: float = 1e-3
    relinearize_every: int = 25
    frac_tol: float = 0.01
    learn: bool = True
    start: str = "global"
    importance: str = "weight"
    mask_update: str = "relative"
    calibration: torch.Tensor | None = field(default=None, repr=False, metadata={"cli": False})

    def check(self) -> None:
        for knob in ("tau_start", "tau_end_ratio"):
            value = getattr(self, knob)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise PrunerConfigError(f"{knob} must be a finite number > 0, got {value!r}")
        if self.importance not in ("weight", "activation"):
            raise PrunerConfigError(f"importance must be 'weight' or 'activation', got {self.importance!r}")
        if self.start not in ("global", "uniform"):
            raise PrunerConfigError(f"start must be 'global' or 'uniform', got {self.start!r}")
        if isinstance(self.relinearize_every, bool) or not isinstance(self.relinearize_every, int) or \
                self.relinearize_every < 0:
            raise PrunerConfigError(f"relinearize_every must be an integer >= 0, got {self.relinearize_every!r}")

    def for_run(self, mask_steps: int, calibration: torch.Tensor | None = None) -> "SmartConfig":
        out = super().for_run(mask_steps, calibration)
        return out if out.calibration is not None else dataclasses.replace(out, calibration=calibration)


@register("smart", SmartConfig)
class SmartPruner(Pruner):
    #: mask a norm's output rather than the conv rows before it (PDP's logits read the conv rows)
    norm_safe: bool = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c, model = self.config, self.model
        c.check()
        mask_steps = c.steps
        if mask_steps < 1:
            raise PrunerConfigError(f"mask_steps must be >= 1, got {mask_steps}")
        inputs = _calibration_inputs(c.calibration, self.problem.example_inputs)  # checked whatever ranks the start
        # the calibration batch is only forwarded when it ranks the start (importance="activation")
        tables, energy = self._mask_tables(model, inputs if c.importance == "activation" else None)
        self.learn = bool(c.learn)
        logits = starting_logits(self.graph, model, tables, energy, unit_sq_norms(self.graph, model).sqrt(),
                                 self.profile, self.budget, self.target, c.start, c.importance)
        self.logits = nn.Parameter(logits, requires_grad=self.learn)  # (n_units,)
        if is_distributed():
            dist.broadcast(self.logits.data, src=0)  # identical start on every rank
            if self.learn:
                self.logits.register_hook(_average_across_ranks)
        self.mask_update = MaskUpdate.parse(c.mask_update, "mask_update", PrunerConfigError)
        if self.learn and self.mask_update is MaskUpdate.RELATIVE:
            self.logits.register_hook(_relative_to_rms)
        self.tau0 = float(c.tau_start) * self._spread()
        self.tau = self.tau0
        self.gamma = c.tau_end_ratio ** (1.0 / mask_steps)
        self.mask_steps, self.frac_tol, self.relinearize_every = mask_steps, c.frac_tol, c.relinearize_every
        self.steps = 0
        self._linearized_at: torch.Tensor | None = None
        # the units no selection may drop (one per group and producer, the best at the start) hold f = 1:
        # a group whose logits all fell below the threshold would otherwise train without the unit
        # finalize() must then keep
        self.fixed = mandatory_keep(self.graph, self.logits.detach().double().cpu())
        self._free = (~self.fixed).nonzero().flatten()
        self._linearize(torch.ones(self.graph.num_units, dtype=torch.bool))
        for _ in range(4):  # the fixed point: costs linearised at the hard set they select
            if not self._relinearize():
                break
        self._cache: dict[str, torch.Tensor] | None = None
        self._tables: dict[str, list] = tables
        self._energy = energy  # per-channel mean square of each masked module's output at the start
        self._hook = None
        self._attach(tables)

    def _spread(self) -> float:
        """The logits' spread the temperature is measured in: 1 (standardised within every group)."""
        return 1.0

    def _attach(self, tables: dict[str, list] | None = None) -> None:
        """Register the soft-mask parametrizations and the per-forward cache reset."""
        self._tables = tables if tables is not None else self._mask_tables(self.model)[0]
        self._hook = self.model.register_forward_pre_hook(lambda m, a: self._invalidate())
        for name in self._tables:
            owner, _, attr = name.rpartition(".")
            parametrize.register_parametrization(self.model.get_submodule(owner), attr, _SoftMask(self, name),
                                                 unsafe=True)
        for path in self._norm_paths():  # a LayerNorm over masked channels: statistics weighted by f
            masked_norm.set_weights(self.model.get_submodule(path), lambda key=_NORM + path: self.mask_for(key))

    def _detach(self) -> None:
        """Remove the soft masks: parameters are W again (not W ⊙ f)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for name in self._tables:
            owner, _, attr = name.rpartition(".")
            parametrize.remove_parametrizations(self.model.get_submodule(owner), attr, leave_parametrized=False)
        for path in self._norm_paths():
            masked_norm.clear(self.model.get_submodule(path))
        self._tables = {}

    def _norm_paths(self) -> list[str]:
        return [path for path, *_ in self.graph._channel.norms] if self.graph._channel is not None else []

    # -- soft masks ----------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [self.logits] if self.learn else []

    def _linearize(self, keep: torch.Tensor) -> None:
        """c_u at ``keep``, and B = Σ c over the keep-set the true cost model selects at the current
        logits: Σ c f = B is the budget. Aiming at that discrete set's cost, not at the target itself,
        leaves no unit fractional at low τ (an exact target puts the boundary unit at f = remainder / c,
        and dropping a unit trained at f = 0.25 costs accuracy at ``finalize()``)."""
        if self.graph.structure is Structure.NM:
            return
        kind = self.budget.kind
        self._linearized_at = keep.clone()
        costs = unit_costs(self.graph, self.profile, kind, keep).clamp_min(1e-30)
        chosen = self._select()
        scale = float(costs[self._free].sum()) if len(self._free) else 1.0
        self.costs = (costs / scale).float()  # normalised: Σ c over the free units = 1
        # clamp into the open interval soft_topk accepts
        self.soft_budget = min(max(float(costs[chosen & ~self.fixed].sum()) / scale, 1e-4), 1.0 - 1e-6)

    def _mask_tables(self, model: nn.Module, inputs: tuple | None = None
                     ) -> tuple[dict[str, list], dict[str, torch.Tensor]]:
        """``param -> [(dim, entry index, unit)]`` the soft mask multiplies, and (channel graphs, with
        ``inputs``) the per-channel mean square of each masked module's output on them."""
        tables: dict[str, list] = {}
        if self.graph.structure is Structure.CHANNEL:
            if self.norm_safe:  # one forward finds which producers feed a norm (and, with inputs, measures)
                tables, energy = norm_safe_tables(self.graph, model, inputs or self.problem.example_inputs)
                return tables, energy if inputs is not None else {}
            for name, dim, idx, unit in output_side_tables(self.graph, model):
                tables.setdefault(name, []).append((dim, idx, unit))
        else:
            converted = self.nm_layers if self.graph.structure is Structure.NM else None
            for name, entry_unit in self.graph.entry_units():
                if converted is None or name in converted:
                    tables[name] = [(None, None, entry_unit)]
        return tables, {}

    def soft_keep(self) -> torch.Tensor:
        """f, (n_units,): the current soft mask. Factors below ``_F_FLOOR`` are exactly 0: a unit far
        below the threshold has f ~ 1e-40 at low τ, a subnormal float, and every activation and
        gradient it scales is subnormal too, which x86 CPUs compute up to 100x slower (measured: a
        ResNet-50 SMART step 1.64x a plain one with them, 1.0x with the CPU flushing them to zero).
        Its gradient, ~f / τ, was negligible anyway."""
        f = self._soft_keep()
        return torch.where(f < _F_FLOOR, torch.zeros_like(f), f)

    def _soft_keep(self) -> torch.Tensor:
        m = self.logits
        if self.graph.structure is not Structure.NM:
            free = self._free.to(m.device)
            if not len(free):
                return torch.ones_like(m)
            f = soft_topk(m[free], self.costs.to(m.device)[free], self.soft_budget, self.tau)
            return torch.ones_like(m).index_put((free,), f)
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
        out.update({_NORM + path: w for path, w in norm_weights(self.graph, f).items()})
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
        if self.steps <= self.mask_steps or not self.converged():
            self.tau *= self.gamma
        if self.relinearize_every and self.steps % self.relinearize_every == 0:
            self._relinearize()

    def mask_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if self.mask_update is MaskUpdate.ADAM:
            return super().mask_optimizer(params, lr)
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    def mask_lr_scale(self) -> float:
        """The logits' learning rate decays as (τ / τ0)²: faster than the temperature, so units that the
        budget's gradient drew onto the threshold together (a non-sparse point) are left behind by the
        shrinking band and end hard, and a late step does not flip units across the threshold at
        random (the training driver multiplies its mask LR by this before each step)."""
        return (self.tau / self.tau0) ** 2

    def _relinearize(self) -> bool:
        """Linearise the costs at the current hard guess if it moved since the last time; True if it did."""
        if self.graph.structure is Structure.NM:
            return False
        keep = self._hard_guess()
        if self._linearized_at is not None and torch.equal(keep, self._linearized_at):
            return False
        self._linearize(keep)
        self._cache = None
        return True

    def converged(self) -> bool:
        """At most ``frac_tol`` of the units fractional, or one: Σ c f = B leaves the unit at the
        boundary fractional whatever τ (its f is the budget's remainder over its cost)."""
        return self.fractional() <= max(self.frac_tol, 1.0 / max(self.graph.num_units, 1))

    def _hard_guess(self) -> torch.Tensor:
        with torch.no_grad():
            keep = self.soft_keep() > 0.5
        return keep.cpu() | self.fixed

    def _select(self) -> torch.Tensor:
        """The longest run of best-ranked units that fits (a threshold set, which the soft mask
        converges to): no unit that trained at f ≈ 0 is revived by a fill (on ResNet-20 / CIFAR-10 at
        latency=30 %, the greedy fill's revived units cost 15-25 points of accuracy at finalize())."""
        if self.graph.structure is Structure.NM:
            return super()._select()
        return select_prefix(self.graph, self.scores().double().cpu(), self.profile, self.budget, self.target)

    def scores(self) -> torch.Tensor:
        """The logits, with the fixed units (f = 1 throughout) ranked first."""
        m = self.logits.detach()
        if not bool(self.fixed.any()):
            return m
        return torch.where(self.fixed.to(m.device), m.max() + 1.0, m)

    def _before_finalize(self) -> None:
        """Drop the soft masks: the weights go back to W, then the hard masks zero the pruned units."""
        self._detach()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out.update(logits=self.logits.detach().clone(), tau=self.tau, steps=self.steps,
                   costs=getattr(self, "costs", None), soft_budget=getattr(self, "soft_budget", None),
                   linearized_at=self._linearized_at, fixed=self.fixed.clone())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "logits" in state:
            self.logits.data.copy_(state["logits"])
            self.tau, self.steps = float(state["tau"]), int(state["steps"])
            if state.get("costs") is not None:
                self.costs, self.soft_budget = state["costs"], float(state["soft_budget"])
            if state.get("fixed") is not None:  # chosen at construction, from the weights of then
                self.fixed = state["fixed"].clone()
                self._free = (~self.fixed).nonzero().flatten()
            if state.get("linearized_at") is not None:
                self._linearized_at = state["linearized_at"].clone()
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
                free = self._free.to(f.device)
                out["residual"] = abs(float((self.costs.to(f.device)[free] * f[free]).sum()) - self.soft_budget) \
                    / self.soft_budget
                out["threshold"] = solve_threshold(self.logits.detach()[free], self.costs[free], self.soft_budget,
                                                   self.tau)
        out["predicted"] = measure(predict(self.graph, self._hard_guess(), self.profile), self.budget.kind)
        return out


def _calibration_inputs(calibration: Any, example_inputs: tuple) -> tuple | None:
    """The forward inputs activation importance is measured on: the calibration batch, or None
    (weight norms instead) without one."""
    if calibration is None:
        return None
    example = example_inputs[0]
    batch = checked_calibration(calibration, example_inputs, PrunerConfigError, "SMART's activation importance")
    return (batch.to(example.device, example.dtype),)


def _relative_to_rms(grad: torch.Tensor) -> torch.Tensor:
    """The logits' gradient over its root-mean-square: steps in logit units, relative across units."""
    rms = grad.pow(2).mean().sqrt()
    return grad / rms if float(rms) > 0 else grad


def _average_across_ranks(grad: torch.Tensor) -> torch.Tensor:
    """Logits are not inside the DDP module: average their gradient over ranks during backward."""
    grad = grad.clone()
    dist.all_reduce(grad)
    return grad / dist.get_world_size()


__all__ = ["SmartPruner"]
