"""npu_compress: prune PyTorch models to a latency or memory budget of a specific NPU.

    import npu_compress as nc
    profile = nc.load_profile("ethos-u55-256")
    report = nc.estimate(model, example_input, profile)
    budget = nc.Budget.parse("latency=50%")
"""
from ._version import __version__
from .errors import (BudgetError, DataError, ModelSpecError, NpuCompressError, ProfileError, PrunerConfigError,
                     TraceError, VerificationError)
from .data import Dataset, load_dataset
from .modelspec import LoadedModel, load_model, parse_input_shape
from . import graph, models
from .export import Calibration, EthosUReport, ExportReport, IntGate, export_ethos_u, export_onnx, verify_onnx
from .pruners import PRUNERS, MethodConfig, PruneResult, PruningProblem, SmartConfig, SmartPruner, plan
from .pruning import PruneOutcome, prune
from .task import Task
from .training import Epochs, TrainConfig, train
from .hardware import (Budget, BudgetKind, CostReport, HardwareProfile, LayerSpec, WeightFormat, estimate,
                       layer_cost, list_profiles, load_profile, trace_layers)

__all__ = ["__version__", "graph", "models", "Calibration", "Epochs", "EthosUReport", "ExportReport", "IntGate",
           "export_ethos_u", "export_onnx", "verify_onnx", "PRUNERS", "MethodConfig", "PruneOutcome", "PruneResult", "PruningProblem", "SmartConfig", "SmartPruner", "plan", "Task", "TrainConfig",
           "prune", "train", "Budget", "BudgetError", "BudgetKind", "CostReport", "DataError", "Dataset",
           "HardwareProfile", "LoadedModel", "load_dataset", "load_model", "parse_input_shape",
           "LayerSpec", "ModelSpecError", "NpuCompressError", "ProfileError", "PrunerConfigError", "TraceError", "VerificationError",
           "WeightFormat", "estimate", "layer_cost", "list_profiles", "load_profile", "trace_layers"]
