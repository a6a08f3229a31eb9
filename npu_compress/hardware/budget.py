"""Budgets: what a pruned model must fit, in latency or memory, absolute or relative to dense.

Example::

    >>> Budget.parse("latency=2.5ms")
    Budget(kind=<BudgetKind.LATENCY: 'latency'>, value=0.0025, relative=False)
    >>> Budget.parse("memory=40%").target(dense_report)   # 0.4 * dense memory_bytes
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..choices import Choice
from ..errors import BudgetError
from .cost import CostReport, LayerCost


class BudgetKind(Choice):
    LATENCY = "latency"  # seconds, CostReport.latency_s
    MEMORY = "memory"  # bytes, CostReport.memory_bytes


def measure(cost: CostReport | LayerCost, kind: BudgetKind) -> float:
    """What a budget of ``kind`` counts in a model's or a layer's cost: seconds, or weight bytes
    (a report's ``memory_bytes`` is its packed weight bytes)."""
    return cost.latency_s if kind == BudgetKind.LATENCY else float(cost.weight_bytes)


_LATENCY_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}
_MEMORY_UNITS = {"B": 1, "kB": 1000, "KB": 1000, "KiB": 1 << 10, "MB": 1000 ** 2, "MiB": 1 << 20,
                 "GB": 1000 ** 3, "GiB": 1 << 30}
_UNITS = {BudgetKind.LATENCY: _LATENCY_UNITS, BudgetKind.MEMORY: _MEMORY_UNITS}
_PATTERN = re.compile(r"^\s*([a-z]+)\s*=\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*(\S*)\s*$")
_FORMS = "'latency=2.5ms', 'latency=50%', 'memory=1.5MiB' or 'memory=40%'"


@dataclass(frozen=True)
class Budget:
    """A cost limit. ``value`` is seconds or bytes, or a fraction in (0, 1] of the dense cost if ``relative``."""

    kind: BudgetKind
    value: float
    relative: bool = False

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """Parse ``kind=value<unit>``; units: latency s/ms/us, memory B/KB/KiB/MB/MiB/GB/GiB, or %."""
        if not isinstance(text, str):
            raise BudgetError(f"budget must be a string like {_FORMS}, got {type(text).__name__}")
        m = _PATTERN.match(text)
        if not m:
            raise BudgetError(f"budget '{text}' is not of the form kind=value<unit>, e.g. {_FORMS}")
        kind_text, number, exponent, unit = m.groups()
        try:
            kind = BudgetKind(kind_text)
        except ValueError:
            raise BudgetError(f"budget '{text}': unknown kind '{kind_text}'; valid kinds: latency, memory") from None
        try:
            value = float(f"{number}e{exponent or 0}")  # 1e400 is inf here, not an OverflowError
        except ValueError:
            raise BudgetError(f"budget '{text}' is not of the form kind=value<unit>, e.g. {_FORMS}") from None
        if not math.isfinite(value):
            raise BudgetError(f"budget '{text}': value is too large (it overflows to infinity)")
        if unit == "%":
            if not 0.0 < value <= 100.0:
                raise BudgetError(f"budget '{text}': a percentage must be in (0, 100], got {value:g}%")
            return cls(kind, value / 100.0, relative=True)
        units = _UNITS[kind]
        if unit not in units:
            raise BudgetError(f"budget '{text}': unit '{unit}' does not fit {kind.value}; "
                              f"valid units: {', '.join(units)} or %")
        if value <= 0.0:
            raise BudgetError(f"budget '{text}': value must be > 0")
        if not math.isfinite(value * units[unit]):
            raise BudgetError(f"budget '{text}': value is too large (it overflows to infinity)")
        return cls(kind, value * units[unit], relative=False)

    def measure(self, report: CostReport) -> float:
        """The budgeted quantity of a cost report (seconds or bytes)."""
        return measure(report, self.kind)

    def target(self, dense: CostReport) -> float:
        """The absolute limit (seconds or bytes), resolving a relative budget against the dense model."""
        return self.value * self.measure(dense) if self.relative else self.value

    def require_feasible(self, dense: CostReport, minimum: float) -> float:
        """The absolute target, or a BudgetError if it is below ``minimum`` (the unprunable cost)."""
        target = self.target(dense)
        if target < minimum:
            raise BudgetError(f"budget {self} = {self.format_amount(target)} is infeasible: the parts that cannot "
                              f"be pruned already cost {self.format_amount(minimum)} "
                              f"({100 * minimum / self.measure(dense):.1f}% of dense); ask for at least that")
        return target

    def format_amount(self, amount: float) -> str:
        if self.kind == BudgetKind.LATENCY:
            return f"{amount * 1e3:.4g}ms"
        return f"{amount / (1 << 20):.4g}MiB" if amount >= 1 << 20 else f"{amount / 1024:.4g}KiB"

    def __str__(self) -> str:
        amount = f"{self.value * 100:g}%" if self.relative else self.format_amount(self.value)
        return f"{self.kind.value}={amount}"
