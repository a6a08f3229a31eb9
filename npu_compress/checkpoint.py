"""The pruned-model checkpoint ``npu-compress prune`` writes and ``export`` reads.

Self-contained: model spec and input shape (to rebuild the module), the fine-tuned weights with
the hard mask applied, the keep-set, the profile as TOML text, budget, structure and method, and
the cost/accuracy report. Written atomically.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .errors import NpuCompressError
from .io import write_atomic

FORMAT = "npu_compress.checkpoint"
VERSION = 1


class CheckpointError(NpuCompressError, ValueError):
    """A checkpoint file is missing, corrupted, or from another model."""


@dataclass
class PruneCheckpoint:
    model_spec: str
    input_shape: tuple[int, ...]
    profile_toml: str
    budget: str
    structure: str
    method: str
    keep: torch.Tensor
    state_dict: dict[str, torch.Tensor]
    nm: tuple[int, int] = (2, 4)
    group_size: int | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        payload = {"format": FORMAT, "version": VERSION, "npu_compress": __version__, **self.__dict__}
        write_atomic(path, lambda tmp: torch.save(payload, tmp))

    @classmethod
    def load(cls, path: str | Path) -> "PruneCheckpoint":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{path}' does not exist")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise CheckpointError(f"checkpoint '{path}' is not readable (corrupted or not a torch file): {e}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"'{path}' is not an npu_compress checkpoint (written by 'npu-compress prune')")
        if payload.get("version") != VERSION:
            raise CheckpointError(f"checkpoint '{path}' has format version {payload.get('version')}; "
                                  f"this npu_compress reads {VERSION}")
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in payload.items() if k in names})
