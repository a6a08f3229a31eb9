"""Pruners: one interface (construct, ``step()``, ``finalize()``), one budget, a registry by name."""
from .base import PRUNERS, Pruner, PruneResult, get_pruner, register
from .smart import SmartPruner

__all__ = ["PRUNERS", "PruneResult", "Pruner", "SmartPruner", "get_pruner", "register"]
