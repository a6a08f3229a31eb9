"""Hardware side of the pipeline: profiles -> op trace -> costed layers -> cost reports, budgets."""
from .budget import Budget, BudgetKind
from .cost import CostReport, LayerCost, WeightFormat, estimate, layer_cost, trace_layers
from .layers import LayerSpec
from .profile import DEFAULT_PROFILE, DType, HardwareProfile, list_profiles, load_profile, profile_dir

__all__ = ["Budget", "BudgetKind", "CostReport", "DEFAULT_PROFILE", "DType", "HardwareProfile", "LayerCost",
           "LayerSpec", "WeightFormat", "estimate", "layer_cost", "list_profiles", "load_profile", "profile_dir",
           "trace_layers"]
