"""What an export works on, whatever it was given: a ``prune`` checkpoint, a model with the
``PruneResult`` its pruner's ``finalize()`` returned (passed explicitly: nothing rides on the model),
or a dense model.

    job = job_from("digits.ckpt")                                  # or job_from(model, result=result)
    job.masked, job.graph, job.keep, job.profile, job.default_precision()

Shared by the ONNX exporter and the Ethos-U target, with the inputs both check on.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, PruneCheckpoint
from ..data import Dataset, load_dataset
from ..errors import NpuCompressError
from ..graph import PruningGraphError, Structure, build
from ..graph.identity import check_identities
from ..hardware.cost import FormatKind
from ..hardware.profile import HardwareProfile, load_profile, profile_from_dict
from ..modelspec import load_model
from .quantize import Precision

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
FLOAT_CHECK_SAMPLES = 64  # real test samples the float check runs on, besides random ones
RANDOM_CHECK_SAMPLES = 256  # random inputs an integer check runs on when no data is given


@dataclass
class Job:
    """Everything an export needs, whatever it was given."""

    masked: nn.Module  # the model as trained: pruned units are zeros, original shapes
    example: torch.Tensor  # (1, ...) example input
    profile: HardwareProfile
    structure: Structure | None  # None: a dense model (not pruned)
    graph: Any = None
    keep: torch.Tensor | None = None
    budget: str | None = None
    nm: tuple[int, int] = (2, 4)
    profile_known: bool = True  # False: a plain model with no profile given (precision defaults to fp32)

    @property
    def label(self) -> str:
        """``dense`` or the structure's name, for reports and file metadata."""
        return "dense" if self.structure is None else self.structure.value

    @property
    def channel(self) -> bool:
        return self.structure is Structure.CHANNEL

    @property
    def packed_format(self) -> FormatKind | None:
        """How pruned weights are packed in the file: blocks, N:M, or not at all (dense, channel)."""
        return {Structure.BLOCK: FormatKind.BLOCK, Structure.NM: FormatKind.NM}.get(self.structure)

    def default_precision(self) -> Precision:
        return Precision.default_for(self.profile.compute.dtype) if self.profile_known else Precision.FP32


def _from_checkpoint(path: Path) -> Job:
    ckpt = PruneCheckpoint.load(path)
    loaded = load_model(ckpt.model_spec, tuple(ckpt.input_shape))
    try:
        loaded.module.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit model '{ckpt.model_spec}' "
                              f"(was it written for another model?): {str(e).splitlines()[0]}") from None
    profile = profile_from_dict(tomllib.loads(ckpt.profile_toml), where=f"{path} (profile)")
    example = torch.zeros(1, *ckpt.input_shape[1:])
    structure = Structure.parse(ckpt.structure)
    graph = build(loaded.module, (example,), profile, structure, nm=tuple(ckpt.nm), group_size=ckpt.group_size)
    if graph.num_units != len(ckpt.keep):
        raise CheckpointError(f"checkpoint '{path}' has {len(ckpt.keep)} units but model '{ckpt.model_spec}' has "
                              f"{graph.num_units} with structure {ckpt.structure}: written for another model")
    if ckpt.units is None:
        log.warning("checkpoint '%s' predates stored unit identities: its keep-set is applied by position "
                    "(prune again to store them)", path)
    else:
        try:
            check_identities(graph, ckpt.keep.bool(), ckpt.units)
        except PruningGraphError as e:
            raise CheckpointError(f"checkpoint '{path}' does not match model '{ckpt.model_spec}' as rebuilt now "
                                  f"(other model code or npu_compress version?): {e}; nothing exported") from None
    return Job(loaded.module, example, profile, structure, graph, ckpt.keep.bool(), ckpt.budget, tuple(ckpt.nm))


def _from_model(model: nn.Module, example_inputs: Any, profile: Any, result: Any) -> Job:
    if example_inputs is None and result is not None and getattr(result, "problem", None) is not None:
        example_inputs = result.problem.example_inputs
    if example_inputs is None:
        raise NpuCompressError("export_onnx(model, ...) needs example_inputs, e.g. (torch.randn(1, 3, 32, 32),)")
    example = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if result is None:
        return Job(model, example[:1], load_profile(profile) if profile is not None else load_profile(), None,
                   profile_known=profile is not None)
    if not (hasattr(result, "graph") and hasattr(result, "keep")):
        raise NpuCompressError(f"result must be the PruneResult a pruner's finalize() returned, got "
                               f"{type(result).__name__}")
    # the result carries the profile object itself: a user's own .toml need not be findable by name
    return Job(model, example[:1], load_profile(profile) if profile is not None else result.profile,
               result.graph.structure, result.graph, result.keep, str(result.budget), result.graph.nm or (2, 4))


def job_from(model_or_checkpoint: nn.Module | str | Path, example_inputs: Any = None,
             profile: str | HardwareProfile | None = None, structure: str | Structure | None = None,
             result: Any = None) -> Job:
    """What to export, from a checkpoint path or a model (with the ``PruneResult`` its pruner returned, or dense)."""
    src = model_or_checkpoint
    if isinstance(src, (str, Path)):
        if result is not None:
            raise NpuCompressError("result= goes with a model; a checkpoint carries its own result")
        job = _from_checkpoint(Path(src))
    else:
        job = _from_model(src, example_inputs, profile, result)
    asked = None if structure is None or structure == "dense" else Structure.parse(structure)
    if structure is not None and asked is not job.structure:
        raise NpuCompressError(f"structure='{structure}' was asked for, but the model was pruned with structure "
                               f"'{job.label}' (dense: not pruned); export it as '{job.label}'")
    return job


def as_dataset(data: Dataset | str | Path | None) -> Dataset | None:
    """``data`` as the normalised dataset the model was trained on (normalisation is train statistics)."""
    if data is None:
        return None
    return (data if isinstance(data, Dataset) else load_dataset(data)).normalized()


def random_inputs(example: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` standard-normal inputs shaped like ``example`` (1, ...), reproducibly."""
    return torch.randn(n, *example.shape[1:], generator=torch.Generator().manual_seed(seed))
