"""The pruned-model checkpoint ``npu-compress prune`` writes and ``export`` reads.

Self-contained: model spec and input shape (to rebuild the module), the fine-tuned weights with
the hard mask applied, the keep-set, the profile as TOML text, budget, structure and method, and
the cost/accuracy report. Written atomically.

Safe to read from strangers: files hold tensors and plain containers only (:func:`to_plain`) and
are read with ``torch.load(weights_only=True)`` (:func:`safe_load`), so loading one never runs
code. A file that needs more (pickled Python objects) is refused; a trusted one is rewritten in
the safe form by :func:`convert_checkpoint` (``npu-compress convert-checkpoint OLD NEW --trust``).
Rebuilding the model still imports the checkpoint's model spec: see README "Security".
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .errors import NpuCompressError
from .io import write_torch

FORMAT = "npu_compress.checkpoint"
VERSION = 1  # the payload's keys are unchanged; only its values are now guaranteed plain
CONVERT_HINT = "npu-compress convert-checkpoint {path} NEW.ckpt --trust"
_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(NpuCompressError, ValueError):
    """A checkpoint file is missing, corrupted, unsafe to load, or from another model."""


def to_plain(value: Any, where: str = "value") -> Any:
    """``value`` as tensors and plain containers only (what ``weights_only=True`` loads).

    Enums become their value, numpy arrays tensors, numpy scalars Python numbers, dataclasses
    dicts, sets sorted lists, paths strings, tuple subclasses (``torch.Size``) tuples;
    anything else is a :class:`CheckpointError` naming where it sits (``where``).
    """
    if type(value) in _SCALARS:
        return value
    if isinstance(value, torch.Tensor):
        return value.detach()  # a Parameter is stored as its data
    if isinstance(value, enum.Enum):
        return to_plain(value.value, where)
    if isinstance(value, np.generic):
        return to_plain(value.item(), where)
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"cannot store {where}: a numpy array of Python objects")
        return torch.from_numpy(np.array(value))
    if isinstance(value, _SCALARS):  # str / int / float subclasses
        return next(t for t in _SCALARS if isinstance(value, t))(value)
    if isinstance(value, dict):
        return {to_plain(k, f"a key of {where}"): to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (set, frozenset)):
        return sorted(to_plain(v, f"an item of {where}") for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if isinstance(value, PurePath):
        return str(value)
    raise CheckpointError(f"cannot store {where}: a {type(value).__module__}.{type(value).__qualname__} is not a "
                          "tensor or a plain value (str, int, float, bool, None, list, tuple, dict)")


def save_plain(path: str | Path, payload: Any) -> None:
    """``torch.save`` a :func:`to_plain` payload to ``path`` atomically; the bytes depend on the payload
    only (serialised in memory: torch names the zip's inner folder "archive", not after the file), so
    equal payloads give byte-identical files, and a full disk is a one-line ``OutputError``."""
    write_torch(path, payload)


def safe_load(path: str | Path, what: str = "checkpoint", unsafe_hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never code.

    A file that holds pickled Python objects is refused with a :class:`CheckpointError` naming
    them (found by scanning the pickle, not running it), followed by ``unsafe_hint``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(f"{what} '{path}' holds Python objects ({', '.join(unsafe[:3])}"
                                  f"{', ...' if len(unsafe) > 3 else ''}) that loading would run as code, so it "
                                  f"is refused{unsafe_hint}") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what} '{path}' is not readable (corrupted or not a torch file): {reason}") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a torch file's pickle would import, read without unpickling; [] if not a torch zip."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


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
    units: dict[str, Any] | None = None  # the pruned units by identity (graph.identity); None: an older file

    def save(self, path: str | Path) -> None:
        payload = to_plain({"format": FORMAT, "version": VERSION, "npu_compress": __version__, **self.__dict__},
                           "the checkpoint")
        save_plain(path, payload)

    @classmethod
    def load(cls, path: str | Path) -> "PruneCheckpoint":
        """Read a checkpoint without running code from it (``weights_only=True``)."""
        hint = "; if you trust it (older checkpoints may hold such objects), convert it: " + CONVERT_HINT
        return cls._from_payload(safe_load(path, "checkpoint", hint.format(path=path)), Path(path))

    @classmethod
    def _from_payload(cls, payload: Any, path: Path) -> "PruneCheckpoint":
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise CheckpointError(f"'{path}' is not an npu_compress checkpoint (written by 'npu-compress prune')")
        if payload.get("version") != VERSION:
            raise CheckpointError(f"checkpoint '{path}' has format version {payload.get('version')}; "
                                  f"this npu_compress reads {VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in payload
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise CheckpointError(f"checkpoint '{path}' lacks {', '.join(missing)}: truncated or not written by "
                                  "'npu-compress prune'")
        ckpt = cls(**{k: v for k, v in payload.items() if k in names})
        ckpt.input_shape, ckpt.nm = tuple(ckpt.input_shape), tuple(ckpt.nm)
        return ckpt


def convert_checkpoint(source: str | Path, target: str | Path) -> PruneCheckpoint:
    """Rewrite a *trusted* checkpoint that holds pickled Python objects in the safe, plain form.

    This unpickles ``source`` with ``weights_only=False``, which runs any code the file holds:
    call it only on files you wrote or whose source you trust. ``target`` must be another path.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise CheckpointError(f"checkpoint '{source}' does not exist")
    if target.resolve() == source.resolve():
        raise CheckpointError(f"convert-checkpoint writes a new file: NEW must differ from '{source}' "
                              "(keep the original until the converted one is checked)")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{source}' is not readable (corrupted or not a torch file): "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    ckpt = PruneCheckpoint._from_payload(to_plain(payload, f"checkpoint '{source}'"), source)
    ckpt.save(target)
    return ckpt


__all__ = ["CheckpointError", "PruneCheckpoint", "convert_checkpoint", "safe_load", "save_plain", "to_plain"]
