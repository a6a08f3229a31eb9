"""DPM: decay the units a base pruner removes, instead of cutting them at once, and let resisting units go.

Our formulation of Yang et al., "Decay Pruning Method" (arXiv 2406.03879), docs/METHODS.md, as a wrapper
around any pruner that ranks units (``scores()``):

- **Decision.** The base runs its own ``step()`` until ``decide_at`` (default ``mask_steps - steps``).
  Its soft masks, if any, are folded into the weights and removed (W ← W ⊙ f: the function does
  not move), and its ``scores()`` choose the units to remove under the true cost model
  (``select_keep`` / ``nm_keep``, exactly as ``finalize()`` would).
- **Smooth Pruning.** After every optimiser step, each chosen unit's parameter entries (all its
  slices: producer rows, bias, norm affine, consumer columns; never BN running statistics) are
  rescaled, x ← x*·L/‖x*‖, so the unit's L2 norm follows L = (N − k)·‖x_0‖/N at decay step k;
  after N steps they are exactly zero. Entries shared by two decaying units (a consumer weight
  whose row and column both decay) are scaled by both factors, refined until every norm is on
  its schedule.
- **Self-Rectifying.** Before that rescale, a decaying unit whose norm grew by more than
  ``t_rate`` (relative to the norm it was set to) and whose gradient norm exceeds ``t_len`` times
  the mean over its group (channel: coupled group; block / N:M: its weight) is released: it stops
  decaying and keeps its values. The base re-selects with released units forced kept and decaying
  units forced removed; the units it now drops start decaying from their current norm and reach
  zero with the others, at step N (the remaining steps, not a fresh N). Units resisting at the
  same step are released together; those the budget cannot afford are refused and go on decaying.
  Decaying units the re-selection keeps anyway stop decaying too (counted as released).
- ``finalize()``: the decayed set is the hard mask. ``scores()`` returns the scores of the last
  selection, so the shared ``select_keep`` gives back exactly that keep-set.

    pruner = DecayPruning(model, (x,), "ethos-u55-256", "latency=50%", mask_steps=800, base="smart")
    # the same by hand: SMART anneals over 400 steps, then 400 steps of decay
    smart = SmartPruner(model, (x,), "ethos-u55-256", "latency=50%", mask_steps=400)
    pruner = DecayPruning.wrap(smart, steps=400, mask_steps=800)
    ... loss.backward(); opt.step(); pruner.step() ...     # as any pruner
    result = pruner.finalize()

Default ``steps``: half the mask phase (the base gets the first half). Defaults ``t_rate=0.1``
and ``t_len=2.0`` are our assumptions, not the paper's values (we could not
check them): a unit must grow 10% in one step against the decay and draw twice its group's mean
gradient. ``t_rate=math.inf`` turns Self-Rectifying off.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import BudgetError, PrunerConfigError
from ..graph import masked_norm, norm_weights
from ..graph_cost import predict
from .base import Pruner, get_pruner, register
from .problem import MethodConfig
from .select import measure, nm_keep, select_keep
from ..graph.types import Structure

log = logging.getLogger(__name__)

_KEPT, _DECAYING, _RELEASED = 0, 1, 2
_REFINE_ROUNDS = 25  # shared entries: rescale rounds until every decaying norm is on schedule


class DecayConfigError(PrunerConfigError):
    """A DPM knob is out of range: steps, decision point, thresholds, or the base method."""


# ---------------------------------------------------------------- unit entries

def _param(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter behind ``name`` (the original, if a parametrization still wraps it)."""
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path) if path else model
    if parametrize.is_parametrized(mod, attr):
        return mod.parametrizations[attr].original
    return getattr(mod, attr)


def _wide(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.device.type == "mps" else torch.float64


class _UnitEntries:
    """The parameter entries each unit owns (both sides of a channel; a block's weights), to measure and scale.

        >>> e = _UnitEntries(graph, model)
        >>> e.norms()              # (n_units,) float64: L2 norm of each unit's parameter entries
        >>> e.scale(f)             # every entry *= Π f[u] over the units that own it
    """

    def __init__(self, graph, model: nn.Module):
        self.model, self.n = model, graph.num_units
        buffers = {name for name, _ in model.named_buffers()}
        if graph.structure is Structure.CHANNEL:
            self.tables = [(name, dim, idx, unit) for (name, dim), (idx, unit) in graph.param_tables().items()
                           if name not in buffers]  # running statistics are left alone
            self.group = graph.unit_group
        else:
            self.tables = [(name, None, None, eu) for name, eu in graph.entry_units() if name not in buffers]
            self.group = graph.unit_param  # "its layer": N:M groups of M are too small to average over
        self.shapes = dict(graph.param_shapes)
        self.owners = [unit.flatten().unique() for *_, unit in self.tables]  # the units each table touches

    def norms(self, grad: bool = False, only: torch.Tensor | None = None) -> torch.Tensor:
        """(n_units,) float64 L2 norms of the entries (or of their ``.grad``; missing grads count 0).

        ``only`` (n_units,) bool: skip tensors none of these units touch (their norms come out short).
        """
        out = torch.zeros(self.n, dtype=torch.float64)
        squares: dict[str, torch.Tensor | None] = {}  # one pass per tensor, however many tables it has
        for (name, dim, idx, unit), owners in zip(self.tables, self.owners):
            if only is not None and not bool(only[owners].any()):
                continue
            if name not in squares:
                t = _param(self.model, name)
                t = t.grad if grad else t
                squares[name] = None if t is None else t.detach().to(_wide(t)).square()
            sq = squares[name]
            if sq is None:
                continue
            if dim is None:  # block / N:M: one unit per entry
                part = torch.zeros(self.n, dtype=sq.dtype, device=sq.device).index_add_(
                    0, unit.flatten().to(sq.device), sq.flatten())
            else:
                per = sq.sum(dim=[d for d in range(sq.dim()) if d != dim]) if sq.dim() > 1 else sq  # (size,)
                part = torch.zeros(self.n, dtype=sq.dtype, device=sq.device).index_add_(
                    0, unit.to(sq.device), per[idx.to(sq.device)])
            out += part.cpu().double()
        return out.sqrt()

    @torch.no_grad()
    def scale(self, f: torch.Tensor) -> None:
        """Multiply, in place, every entry by the factors ``f`` (n_units,) of the units owning it."""
        masks: dict[str, torch.Tensor] = {}
        for name, dim, idx, unit in self.tables:
            fu = f[unit]
            if bool((fu == 1).all()):
                continue
            if dim is None:
                mask = fu  # shaped like the weight
            else:
                shape = self.shapes[name]
                view = [1] * len(shape)
                view[dim] = shape[dim]
                mask = torch.ones(shape[dim], dtype=f.dtype).index_put((idx,), fu).view(view)
            masks[name] = masks[name] * mask if name in masks else mask
        for name, mask in masks.items():
            p = _param(self.model, name)
            p.mul_(mask.to(device=p.device, dtype=p.dtype))

    def tolerance(self) -> float:
        """Relative accuracy a rescale can reach in the parameters' dtype."""
        eps = max((torch.finfo(_param(self.model, name).dtype).eps for name, *_ in self.tables), default=1e-7)
        return max(eps, 1e-10)

    def group_mean(self, values: torch.Tensor) -> torch.Tensor:
        """(n_units,) the mean of ``values`` over each unit's group."""
        g = self.group
        sums = torch.zeros(int(g.max()) + 1, dtype=values.dtype).index_add_(0, g, values)
        counts = torch.bincount(g).to(values.dtype).clamp_min(1)
        return (sums / counts)[g]


# ---------------------------------------------------------------- knobs

def _schedule(mask_steps: int | None, steps: int | None, decide_at: int | None) -> tuple[int, int]:
    """(steps, decide_at), checked: decay over the last ``steps`` of the mask phase unless told otherwise."""
    def positive_int(name: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DecayConfigError(f"DPM {name} must be an integer >= {minimum}, got {value!r}")
        return value

    if mask_steps is None:
        if steps is None or decide_at is None:
            raise DecayConfigError("DPM needs mask_steps (the mask-phase length), or both steps and decide_at")
        return positive_int("steps", steps, 1), positive_int("decide_at", decide_at, 0)
    mask_steps = positive_int("mask_steps", mask_steps, 1)
    steps = positive_int("steps", max(1, mask_steps // 2) if steps is None else steps, 1)
    if steps > mask_steps:
        raise DecayConfigError(f"DPM steps={steps} is longer than the mask phase ({mask_steps} steps): the decay "
                               f"would not finish before the hard mask; use steps <= {mask_steps}")
    decide_at = positive_int("decide_at", mask_steps - steps if decide_at is None else decide_at, 0)
    if decide_at + steps > mask_steps:
        raise DecayConfigError(f"DPM decide_at={decide_at} + steps={steps} runs past the mask phase ({mask_steps} "
                               f"steps); use decide_at <= {mask_steps - steps}")
    return steps, decide_at


def _check_thresholds(t_rate: float, t_len: float) -> None:
    for name, value in (("t_rate", t_rate), ("t_len", t_len)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
            raise DecayConfigError(f"DPM {name} must be a number >= 0 (math.inf turns Self-Rectifying off), "
                                   f"got {value!r}")


def _base_class(base: str) -> type[Pruner]:
    cls = get_pruner(base) if isinstance(base, str) else None
    if cls is None or issubclass(cls, DecayPruning):
        raise DecayConfigError(f"DPM base must name another registered method (e.g. 'magnitude', 'smart'), "
                               f"got {base!r}; to wrap a pruner you built, use DecayPruning.wrap(pruner)")
    return cls


# ---------------------------------------------------------------- the wrapper

@dataclass(frozen=True)
class DpmConfig(MethodConfig):
    """``base``: the registered method that decides what to remove; ``steps``: decay length (default half
    the mask phase); ``decide_at``: the step the base decides at (default mask_steps - steps);
    ``t_rate`` / ``t_len``: Self-Rectifying thresholds (math.inf: off); ``calibration``: training inputs
    for a data-driven base (the driver gives its training split; not a command-line knob)."""

    base: str = "magnitude"
    steps: int | None = None
    decide_at: int | None = None
    t_rate: float = 0.1
    t_len: float = 2.0
    calibration: torch.Tensor | None = field(default=None, repr=False, metadata={"cli": False})

    @property
    def schedule(self) -> tuple[int, int]:
        """(decay steps, decide_at), checked against the mask phase."""
        return _schedule(1000 if self.mask_steps is None else self.mask_steps, self.steps, self.decide_at)

    def check(self) -> None:
        self.schedule  # noqa: B018 - checks
        _check_thresholds(self.t_rate, self.t_len)
        _base_class(self.base)

    def for_run(self, mask_steps: int, calibration: torch.Tensor | None = None) -> "DpmConfig":
        out = super().for_run(mask_steps, calibration)
        return out if out.calibration is not None else dataclasses.replace(out, calibration=calibration)


@register("dpm", DpmConfig)
class DecayPruning(Pruner):
    """Decay Pruning around a base pruner; see the module docstring. ``wrap()`` takes a built base.

    The base is built on the same :class:`PruningProblem` (one graph, one pricing), with its own config's
    schedule ending at the decision point."""

    picks_nm_layers = False  # the base's choice is shared

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        c = self.config
        steps, decide_at = c.schedule
        cls = _base_class(c.base)
        inner = cls(self.problem, cls.Config().for_run(max(decide_at, 1), c.calibration))
        self._setup(inner, steps, decide_at, c.t_rate, c.t_len)

    @classmethod
    def wrap(cls, base: Pruner, steps: int | None = None, *, mask_steps: int | None = None, t_rate: float = 0.1,
             t_len: float = 2.0, decide_at: int | None = None) -> "DecayPruning":
        """DPM around an already built ``base``; ``mask_steps`` defaults to ``base.mask_steps`` when it has one."""
        if not isinstance(base, Pruner) or isinstance(base, DecayPruning):
            raise DecayConfigError(f"DPM wraps a pruner (not another DPM), got {type(base).__name__}")
        if base.result is not None:
            raise DecayConfigError("DPM cannot wrap a pruner that is already finalized")
        steps, decide_at = _schedule(getattr(base, "mask_steps", None) if mask_steps is None else mask_steps,
                                     steps, decide_at)
        _check_thresholds(t_rate, t_len)
        self = cls.__new__(cls)
        config = DpmConfig(mask_steps=decide_at + steps, base=base.name or "magnitude", steps=steps,
                           decide_at=decide_at, t_rate=t_rate, t_len=t_len)
        Pruner.__init__(self, base.problem, config)
        self._setup(base, steps, decide_at, t_rate, t_len)
        return self

    def _setup(self, base: Pruner, steps: int, decide_at: int, t_rate: float, t_len: float) -> None:
        """Take the base (built on this problem: one graph build) and its N:M choice, and start the schedule."""
        self.base = base
        self.nm_layers = set(base.nm_layers)
        self.steps, self.decide_at, self.t_rate, self.t_len = steps, decide_at, float(t_rate), float(t_len)
        self.entries = _UnitEntries(self.graph, self.model)
        n = self.graph.num_units
        self.t = self.k = 0  # optimiser steps seen; decay steps done (0..steps)
        self.decided = False
        self.status = torch.full((n,), _KEPT, dtype=torch.int8)
        self.start_norm = torch.zeros(n, dtype=torch.float64)  # ‖x‖ when the unit began to decay
        self.start_step = torch.zeros(n, dtype=torch.long)  # the decay step it began at
        self._scores: torch.Tensor | None = None  # the scores of the last selection
        self._keep: torch.Tensor | None = None  # and its keep-set (= not decaying)
        self._predicted: float | None = None

    @property
    def decaying(self) -> torch.Tensor:
        """(n_units,) bool: the units being decayed (or already at zero): the removal set."""
        return self.status == _DECAYING

    @property
    def released(self) -> torch.Tensor:
        """(n_units,) bool: units that were decaying and were let go."""
        return self.status == _RELEASED

    # -- lifecycle -------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return list(self.base.parameters())

    def mask_lr_scale(self) -> float:
        return self.base.mask_lr_scale()

    def mask_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return self.base.mask_optimizer(params, lr)

    def scores(self) -> torch.Tensor:
        return self._scores.clone() if self.decided else self.base.scores()

    def _step(self) -> None:
        if not self.decided and self.t >= self.decide_at:  # decide_at == 0: decide on the first step
            self._decide()
        self.t += 1
        if not self.decided:
            self.base.step()
            if self.t >= self.decide_at:
                self._decide()
        elif self.k < self.steps:
            self._decay_step()
        else:  # decay done, mask phase not over: hold the decayed units at zero
            self.entries.scale(torch.where(self.status == _DECAYING, 0.0, 1.0).double())
            self._norm_statistics()

    def _before_finalize(self) -> None:
        if not self.decided:
            warnings.warn("DPM finalized before its decision point: the base's choice is cut at once, not decayed "
                          "(give the mask phase at least decide_at + steps optimiser steps)", stacklevel=3)
            self._decide()
        elif self.k < self.steps and bool((self.status == _DECAYING).any()):
            warnings.warn(f"DPM finalized after {self.k} of {self.steps} decay steps: what is left of the decaying "
                          "units is cut at once", stacklevel=3)

    # -- decision, decay, rectification ----------------------------------------------------
    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        if self.graph.structure is Structure.NM:
            return nm_keep(self.graph, scores, self.nm_layers)
        return select_keep(self.graph, scores, self.profile, self.budget, self.target)

    def _drop_base_masks(self, fold: bool) -> None:
        """Remove the base's soft masks (its ``_before_finalize``); ``fold``: keep W ⊙ f as the new weights."""
        folded = {}
        if fold:
            if hasattr(self.base, "_invalidate"):  # the mask of the current logits, not the last forward's
                self.base._invalidate()
            with torch.no_grad():
                for path, mod in self.model.named_modules():
                    if parametrize.is_parametrized(mod):
                        for attr in list(mod.parametrizations.keys()):
                            folded[path, attr] = getattr(mod, attr).detach().clone()
        self.base._before_finalize()
        with torch.no_grad():
            for (path, attr), value in folded.items():
                mod = self.model.get_submodule(path)
                if not parametrize.is_parametrized(mod, attr):  # the base removed it: W ← W ⊙ f
                    getattr(mod, attr).copy_(value)

    def _decide(self) -> None:
        """The base chooses the set to remove; it starts decaying from its current norms."""
        self._drop_base_masks(fold=True)
        scores = self.base.scores().detach().double().cpu().clone()
        self._accept(scores, self._choose(scores), self.entries.norms())
        self.decided = True
        log.info("DPM decision at step %d: %d units decay over %d steps", self.t,
                 int((self.status == _DECAYING).sum()), self.steps)

    def _accept(self, scores: torch.Tensor, keep: torch.Tensor, norms: torch.Tensor) -> int:
        """Make ``keep`` the selection: dropped units not yet decaying start now (returns how many);
        decaying units it keeps stop where they are."""
        self.status[(self.status == _DECAYING) & keep] = _RELEASED
        new = ~keep & (self.status == _KEPT)
        self.status[new] = _DECAYING
        self.start_norm[new] = norms[new]
        self.start_step[new] = self.k
        self._scores, self._keep, self._predicted = scores, keep.clone(), None
        return int(new.sum())

    def _targets(self, k: int) -> torch.Tensor:
        """(n_units,) the norm each decaying unit should have after decay step ``k`` (zero at k = steps)."""
        left = (self.steps - k) / (self.steps - self.start_step).double()  # start_step < steps for decaying units
        return self.start_norm * left.clamp(0.0, 1.0)

    def _decay_step(self) -> None:
        self.k += 1
        if self.k < self.steps:  # a unit released at the last step could not be replaced in time
            self._rectify(self.entries.norms())
        self._rescale(self._targets(self.k))
        self._norm_statistics()

    def _norm_statistics(self) -> None:
        """A LayerNorm over decaying channels weighs them in its statistics by the share of their norm
        left ((N − k) / (N − start)), so it stops counting them as their values reach zero."""
        if self.graph.structure is not Structure.CHANNEL or not self.graph._channel.norms:
            return
        left = ((self.steps - self.k) / (self.steps - self.start_step).double()).clamp(0.0, 1.0)
        share = torch.where(self.status == _DECAYING, left, torch.ones_like(left)).float()
        for path, w in norm_weights(self.graph, share).items():
            masked_norm.set_weights(self.model.get_submodule(path), w)

    def _rescale(self, targets: torch.Tensor) -> None:
        """x ← x*·L/‖x*‖ for every decaying unit; repeated while shared entries pull norms off schedule."""
        active = self.status == _DECAYING
        if not bool(active.any()):
            return
        tol = self.entries.tolerance()
        for _ in range(_REFINE_ROUNDS):
            cur, want = self.entries.norms(only=active)[active], targets[active]
            done = (cur == 0) | ((want > 0) & ((cur - want).abs() <= tol * want))
            if bool(done.all()):
                return
            f = torch.ones(self.graph.num_units, dtype=torch.float64)
            f[active] = torch.where(cur > 0, want / cur.clamp_min(1e-300), torch.zeros_like(cur))
            self.entries.scale(f)

    def _rectify(self, norms: torch.Tensor) -> None:
        """Release decaying units that grew more than t_rate and draw more than t_len × their group's gradient."""
        if math.isinf(self.t_rate) or math.isinf(self.t_len):
            return
        prev = self._targets(self.k - 1)
        grads = self.entries.norms(grad=True)
        decaying = (self.status == _DECAYING) & (prev > 0)
        growth = (norms - prev) / prev.clamp_min(1e-300)
        resist = decaying & (growth > self.t_rate) & (grads > self.t_len * self.entries.group_mean(grads))
        if bool(resist.any()):
            self._release(resist, grads, norms)

    def _release(self, batch: torch.Tensor, grads: torch.Tensor, norms: torch.Tensor) -> None:
        """Stop decaying the units in ``batch`` and let the base pick replacements under the budget.

        Released units are forced kept (+inf), decaying ones forced removed (-inf). Candidates the
        re-selection cannot keep are refused (they go on decaying): those it dropped, else the one
        with the smallest gradient, until the rest fits.
        """
        batch = batch.clone()
        while bool(batch.any()):
            trial = self.status.clone()
            trial[batch] = _RELEASED
            scores = self.base.scores().detach().double().cpu().clone()
            scores[trial == _RELEASED] = math.inf
            scores[trial == _DECAYING] = -math.inf
            try:
                keep = self._choose(scores)
            except BudgetError:  # the forced set alone is over the budget
                keep = None
            if keep is not None and bool(keep[trial == _RELEASED].all()):
                self.status[batch] = _RELEASED
                new = self._accept(scores, keep, norms)
                log.info("DPM decay step %d: released %d unit(s); %d replacement(s) start decaying", self.k,
                         int(batch.sum()), new)
                return
            dropped = batch & ~keep if keep is not None else torch.zeros_like(batch)
            if not bool(dropped.any()):
                dropped[int(torch.where(batch, grads, math.inf).argmin())] = True
            batch &= ~dropped
            log.info("DPM decay step %d: %d resisting unit(s) refused: the budget cannot keep them", self.k,
                     int(dropped.sum()))

    # -- reporting and resume --------------------------------------------------------------
    def state(self) -> dict[str, float]:
        out = super().state()
        if not self.decided:
            out.update(self.base.state())
        elif self.result is not None:
            out["predicted"] = measure(self.result.predicted, self.budget.kind)
        else:
            if self._predicted is None:
                self._predicted = measure(predict(self.graph, self._keep, self.profile), self.budget.kind)
            out["predicted"] = self._predicted
        out.update(decaying=float((self.status == _DECAYING).sum()), released=float((self.status == _RELEASED).sum()),
                   decay_step=float(self.k))
        return out

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["dpm"] = {"t": self.t, "k": self.k, "decided": self.decided, "status": self.status.clone(),
                      "start_norm": self.start_norm.clone(), "start_step": self.start_step.clone(),
                      "scores": self._scores, "selection": self._keep}
        out["base"] = None if self.decided else self.base.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dpm = state.get("dpm")
        if dpm is not None and dpm["decided"]:
            self._drop_base_masks(fold=False)  # the checkpoint's weights already are the folded ones
            self.status, self.start_norm = dpm["status"].clone(), dpm["start_norm"].clone()
            self.start_step, self._scores, self._keep = dpm["start_step"].clone(), dpm["scores"], dpm["selection"]
            self.decided, self._predicted = True, None
        elif state.get("base") is not None:
            self.base.load_state_dict(state["base"])
            self.nm_layers = set(self.base.nm_layers)
        if dpm is not None:
            self.t, self.k = int(dpm["t"]), int(dpm["k"])
        super().load_state_dict(state)


__all__ = ["DecayConfigError", "DecayPruning"]
