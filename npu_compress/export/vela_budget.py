"""A latency budget in the chip compiler's own terms: Arm Vela judges the pruned model, not our cost model.

Our Vela-calibrated cost model tracks Vela within a few percent on dense models, but pruning
produces channel counts at which Vela is irregular, and a pruned model our model puts exactly on
budget can land 5-15 % over it by Vela. :func:`judge_budget` closes the loop before any training:
it compiles the dense model with Vela, then magnitude-pruned candidates at trial budgets of our
cost model, and searches (secant steps on log budget vs log Vela latency) for the budget of ours
whose pruned model Vela puts within ``[low, high]`` of the user's budget. A method then prunes to
that internal budget, and the export is judged by Vela again (``export --target ethos-u``).

    judged = judge_budget(model, x, load_profile("ethos-u55-128"), "latency=50%")
    result = nc.prune(..., budget=str(judged.internal))     # what our cost model must hit
    print(judged.describe())

Needs the ``ethos-u`` extra; each step is one Vela compile (seconds for CIFAR-size nets).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import BudgetError, NpuCompressError
from ..hardware.budget import Budget, BudgetKind
from ..hardware.profile import HardwareProfile, load_profile

log = logging.getLogger(__name__)

LOW, HIGH = 0.93, 1.00  # accepted band of Vela latency / budget
AIM = 0.965  # where the search aims inside the band


@dataclass(frozen=True)
class JudgeStep:
    """One candidate: our budget (fraction of our dense latency) and what Vela says of its pruned model."""

    internal: float
    predicted_s: float  # our cost model, pruned candidate
    vela_s: float  # Vela, pruned candidate, at the profile's clock
    ratio: float  # vela_s / the budget in Vela's terms


@dataclass(frozen=True)
class JudgedBudget:
    """The user's budget, the candidate chosen (whose budget our cost model must meet so that Vela meets
    the user's), and the search."""

    budget: Budget
    chosen: JudgeStep
    vela_dense_s: float
    vela_target_s: float
    steps: tuple[JudgeStep, ...] = field(default=())
    band: tuple[float, float] = (LOW, HIGH)

    @property
    def internal(self) -> Budget:
        """The relative latency budget of our cost model."""
        return Budget(BudgetKind.LATENCY, self.chosen.internal, relative=True)

    @property
    def ratio(self) -> float:
        """Vela latency of the chosen candidate / the budget in Vela's terms."""
        return self.chosen.ratio

    @property
    def ok(self) -> bool:
        """The chosen candidate landed inside the band."""
        return self.band[0] <= self.chosen.ratio <= self.band[1]

    def describe(self) -> str:
        head = (f"budget {self.budget} judged by Vela: dense {self.vela_dense_s * 1e3:.4g} ms, target "
                f"{self.vela_target_s * 1e3:.4g} ms; our cost model must meet {self.internal} "
                f"(Vela / budget {self.ratio:.3f}{'' if self.ok else ', outside ' + f'[{self.band[0]}, {self.band[1]}]'})")
        steps = "; ".join(f"{s.internal * 100:.2f}% -> {s.ratio:.3f}" for s in self.steps)
        return f"{head}; search: {steps}"

    def to_dict(self) -> dict[str, Any]:
        return {"budget": str(self.budget), "internal": str(self.internal), "vela_dense_s": self.vela_dense_s,
                "vela_target_s": self.vela_target_s, "ok": self.ok, "ratio": self.ratio,
                "steps": [s.__dict__ for s in self.steps]}


def _magnitude(model: nn.Module, example: torch.Tensor, profile: HardwareProfile,
               budget: str) -> tuple[nn.Module, float]:
    """The candidate for a trial budget: magnitude pruning, no training (costs only)."""
    from ..graph import remove_pruned
    from ..pruners import get_pruner

    result = get_pruner("magnitude")(model, (example,), profile, budget).finalize()
    return remove_pruned(model, result.graph, result.keep).eval(), result.predicted.latency_s


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def judge_budget(model: nn.Module, example: torch.Tensor, profile: HardwareProfile | str, budget: Budget | str,
                 low: float = LOW, high: float = HIGH, max_compiles: int = 6,
                 prune: Callable[[nn.Module, torch.Tensor, HardwareProfile, str], tuple[nn.Module, float]] | None = None,
                 ) -> JudgedBudget:
    """Search the latency budget of our cost model whose pruned ``model`` Vela puts in ``[low, high]`` x
    ``budget``. ``prune(model, example, profile, budget_text) -> (pruned model, our latency)`` makes the
    candidates (default: magnitude pruning, no training). At most ``max_compiles`` pruned candidates."""
    from .ethos_u import vela_estimate

    profile = load_profile(profile)
    budget = Budget.parse(budget) if isinstance(budget, str) else budget
    if budget.kind != BudgetKind.LATENCY:
        raise BudgetError(f"budget {budget}: only a latency budget can be judged by Vela (memory is counted "
                          "exactly from the packed weights)")
    if not profile.toolchain.vela_accelerator:
        raise NpuCompressError(f"profile '{profile.name}' names no Ethos-U accelerator ([toolchain] "
                               "vela_accelerator): Vela cannot judge its budget")
    if not 0 < low < high:
        raise ValueError(f"judge band must satisfy 0 < low < high, got [{low}, {high}]")
    prune = prune or _magnitude
    clock = profile.compute.clock_hz
    model = model.eval()
    dense_report = vela_estimate(model, example, profile.toolchain)
    if not dense_report.fully_delegated:
        log.warning("judge: %d compute op(s) of the model run on the host CPU, outside Vela's view; the "
                    "budget is judged on the NPU partitions only",
                    len(dense_report.host_operators) + len(dense_report.cpu_operators))
    vela_dense = dense_report.latency_s(clock)
    target = budget.value * vela_dense if budget.relative else budget.value
    if target >= vela_dense:  # nothing to remove in Vela's terms
        dense = JudgeStep(1.0, math.nan, vela_dense, vela_dense / target)
        return JudgedBudget(budget, dense, vela_dense, target, (dense,), (low, high))
    steps: list[JudgeStep] = []
    fraction = target / vela_dense  # first guess: our model and Vela agree on the ratio
    for _ in range(max_compiles):
        try:
            pruned, ours = prune(_clone(model), example, profile, f"latency={fraction * 100:.6g}%")
        except BudgetError as e:  # below what our model can reach: the last feasible candidate stands
            log.info("judge: %.4g%% is infeasible (%s)", fraction * 100, e)
            break
        vela = vela_estimate(pruned, example, profile.toolchain).latency_s(clock)
        steps.append(JudgeStep(fraction, ours, vela, vela / target))
        log.info("judge: our budget %.4g%% -> Vela %.4g ms = %.3f of the budget", fraction * 100, vela * 1e3,
                 vela / target)
        if low <= vela / target <= high:
            break
        fraction = _next_fraction(steps)
        if any(abs(fraction - s.internal) < 1e-4 for s in steps):
            break
    return _choose(budget, steps, vela_dense, target, low, high)


def _next_fraction(steps: list[JudgeStep]) -> float:
    """Secant on log(our budget) vs log(Vela ratio) between the closest steps either side of AIM (the
    ratio is a staircase in our budget: where the secant lands on a step already tried, bisect);
    a proportional step from one side."""
    last = steps[-1]
    below = [s for s in steps if s.ratio <= AIM]
    above = [s for s in steps if s.ratio > AIM]
    if not (below and above):
        return min(1.0, last.internal * AIM / last.ratio)
    a = max(below, key=lambda s: (s.ratio, s.internal))
    b = min(above, key=lambda s: (s.ratio, -s.internal))
    la, lb = math.log(a.ratio), math.log(b.ratio)
    t = (math.log(AIM) - la) / (lb - la) if lb != la else 0.5
    guess = math.exp(math.log(a.internal) + t * (math.log(b.internal) - math.log(a.internal)))
    if any(abs(guess - s.internal) < 1e-4 for s in steps):
        guess = math.sqrt(a.internal * b.internal)
    return guess


def _choose(budget: Budget, steps: list[JudgeStep], dense: float, target: float, low: float,
            high: float) -> JudgedBudget:
    if not steps:
        raise BudgetError(f"budget {budget} cannot be judged: our cost model cannot reach even the first "
                          "candidate (the budget is below what pruning can remove)")
    inside = [s for s in steps if low <= s.ratio <= high]
    feasible = [s for s in steps if s.ratio <= high]
    best = max(inside or feasible, key=lambda s: s.ratio) if inside or feasible else min(steps, key=lambda s: s.ratio)
    return JudgedBudget(budget, best, dense, target, tuple(steps), (low, high))


__all__ = ["JudgeStep", "JudgedBudget", "judge_budget"]
