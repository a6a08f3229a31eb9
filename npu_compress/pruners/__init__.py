"""Pruners: one interface (construct, ``step()``, ``finalize()``), one budget, a registry by name."""
from .problem import MethodConfig, PruningProblem, plan
from .base import PRUNERS, Pruner, PruneResult, get_pruner, register, unregister
from .smart import SmartConfig, SmartPruner
from .baselines import MagnitudePruner, RandomPruner, TaylorPruner  # noqa: E402  (registration order = import order)
from .pdp import PdpPruner
from .acdc import AcdcPruner
from .hbgs import HbgsPruner, HbgtsPruner
from .dpm import DecayPruning

__all__ = ["MethodConfig", "PruningProblem", "SmartConfig", "plan", "unregister", "PRUNERS", "AcdcPruner", "DecayPruning", "HbgsPruner", "HbgtsPruner", "MagnitudePruner", "PdpPruner", "PruneResult", "Pruner", "RandomPruner",
           "SmartPruner", "TaylorPruner", "get_pruner", "register"]
