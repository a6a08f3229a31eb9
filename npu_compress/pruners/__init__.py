"""Pruners: one interface (construct, ``step()``, ``finalize()``), one budget, a registry by name."""
from .base import PRUNERS, Pruner, PruneResult, get_pruner, register
from .smart import SmartPruner
from .baselines import MagnitudePruner, RandomPruner, TaylorPruner  # noqa: E402  (registration order = import order)
from .pdp import PdpPruner
from .acdc import AcdcPruner

__all__ = ["PRUNERS", "AcdcPruner", "MagnitudePruner", "PdpPruner", "PruneResult", "Pruner", "RandomPruner",
           "SmartPruner", "TaylorPruner", "get_pruner", "register"]
