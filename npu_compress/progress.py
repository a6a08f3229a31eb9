"""Seeding and the ``.progress`` file ``prune --resume`` continues from.

A run is reproducible when everything random is drawn from the seed: :func:`seed_everything`
before the model is built, and each epoch's shuffle from its own generator seeded by
:func:`epoch_seed` (so an epoch's data order does not depend on the epochs before it).

After every epoch the driver writes a progress file holding all an exact resume needs: weights,
optimiser / LR-scheduler / pruner states, the RNG states (torch, numpy, ``random``) and the
run's settings. Resuming restarts the epoch that was running when the run stopped and ends with
the same keep-set and weights as an uninterrupted run::

    save_progress(path, {"epoch": 3, "model": ..., "rng": rng_state(), ...}, settings)
    state = load_progress(path, settings)   # None (logged) when there is none; a mismatch is an error

Files are read with ``weights_only=True`` (:func:`npu_compress.checkpoint.safe_load`).
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .checkpoint import CheckpointError, safe_load, save_plain, to_plain
from .distributed import is_rank0
from .errors import NpuCompressError

log = logging.getLogger(__name__)

FORMAT = "npu_compress.progress"
VERSION = 2  # 1: {"epoch", "model", "history", "pruner"} pickled, no optimiser / RNG state nor settings
MAX_SEED = 2**63 - 1
_START_FRESH = "delete it to start fresh"
_KEYS = ("epoch", "model", "phase", "pruner", "history", "dense_accuracy", "rng")  # what save_progress gets
_FLAGS = {"model", "input_shape", "method", "structure", "budget", "profile", "nm", "data", "epochs", "seed",
          "optimizer", "lr", "batch_size"}  # settings named as `npu-compress prune` flags in messages


# ---------------------------------------------------------------- seeding

def check_seed(seed: Any) -> int:
    """``seed`` if it is an integer in 0..2**63-1, else :class:`NpuCompressError`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise NpuCompressError(f"--seed {seed!r} must be an integer from 0 to {MAX_SEED}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and ``random`` (call before building the model)."""
    check_seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # numpy takes 32-bit seeds
    random.seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle: a hash of (seed, epoch), so epochs are independent."""
    digest = hashlib.sha256(f"npu_compress shuffle {seed} {epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & MAX_SEED


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU, numpy, ``random``) as plain values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos,
                                                         has_gauss, gauss],
            "random": random.getstate()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))


# ---------------------------------------------------------------- what a run is

def digest(*tensors: torch.Tensor) -> str:
    """Short sha256 of tensors' shapes, dtypes and bytes (identity of data, not of objects)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_data(data: Any) -> str:
    """E.g. ``digits: 1437 train + 360 test of (1, 8, 8), sha256 1a2b...``."""
    return (f"{data.name}: {len(data.y_train)} train + {len(data.y_test)} test of {tuple(data.input_shape)}, "
            f"sha256 {digest(data.x_train, data.y_train, data.x_test, data.y_test)}"
            + (", random crop + flip" if getattr(data, "augment", False) else ""))


def describe_model(model: torch.nn.Module) -> str:
    """The architecture as its parameter / buffer names and shapes (not their values)."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return f"{len(model.state_dict())} tensors, sha256 {text_digest(shapes)}"


# ---------------------------------------------------------------- the file

def save_progress(path: str | Path, state: Mapping[str, Any], settings: Mapping[str, str]) -> None:
    """Write ``state`` (plain values and tensors) and ``settings`` to ``path`` atomically."""
    payload = to_plain({"format": FORMAT, "version": VERSION, "settings": dict(settings), **state},
                       f"progress file '{path}'")
    save_plain(path, payload)


def load_progress(path: str | Path, settings: Mapping[str, str]) -> dict[str, Any] | None:
    """The state saved at ``path``; None (and a log line) when there is none.

    :class:`CheckpointError` when the file is unsafe, unreadable, from an older npu_compress, or
    was written by a run with other ``settings`` (the message names the first difference).
    """
    path = Path(path)
    if not path.exists():
        if is_rank0():
            log.warning("resume: no progress file '%s'; starting fresh", path)
        return None
    state = safe_load(path, "progress file", f"; {_START_FRESH}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        if isinstance(state, dict) and {"epoch", "model"} <= state.keys():
            raise CheckpointError(f"progress file '{path}' was written by an older npu_compress and lacks the "
                                  f"optimiser, scheduler and RNG states an exact resume needs; {_START_FRESH}")
        raise CheckpointError(f"'{path}' is not an npu_compress progress file; {_START_FRESH} or choose another -o")
    if state.get("version") != VERSION:
        raise CheckpointError(f"progress file '{path}' has format version {state.get('version')}; this "
                              f"npu_compress reads {VERSION}; {_START_FRESH}")
    missing = [k for k in ("settings", *_KEYS) if k not in state]
    if missing or not isinstance(state["settings"], dict):
        raise CheckpointError(f"progress file '{path}' is incomplete (no {', '.join(missing) or 'settings'}); "
                              f"{_START_FRESH}")
    check_settings(path, state["settings"], settings)
    return state


def check_settings(path: Path, saved: Mapping[str, str], now: Mapping[str, str]) -> None:
    """:class:`CheckpointError` naming the first setting that differs between ``saved`` and ``now``."""
    differ = [k for k in dict.fromkeys([*now, *saved]) if saved.get(k) != now.get(k)]
    if not differ:
        return
    first = differ[0]
    more = f" (also differs: {', '.join(_flag(k) for k in differ[1:])})" if differ[1:] else ""
    raise CheckpointError(f"progress file '{path}' was written for {_flag(first)} {saved.get(first, '(unset)')}, "
                          f"this run is {_flag(first)} {now.get(first, '(unset)')}{more}; rerun with the same "
                          f"settings or {_START_FRESH}")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-") if key in _FLAGS else key.replace("_", " ")


__all__ = ["check_seed", "epoch_seed", "load_progress", "rng_state", "save_progress", "seed_everything",
           "set_rng_state"]
