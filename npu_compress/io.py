"""Atomic file writes: a temp file beside the target, then ``os.replace``; a failure leaves nothing."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import NpuCompressError


class OutputError(NpuCompressError, OSError):
    """An output path cannot be written."""


def check_writable(path: str | Path) -> Path:
    """The folder ``path`` would be written in; :class:`OutputError` if it is missing or read-only
    (call it before long work, so a bad output path fails first, not last)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"cannot write '{target}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write '{target}': folder '{folder}' is not writable")
    return folder


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success move it over ``path``, else delete it."""
    target = Path(path)
    folder = check_writable(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)`` then move into place."""
    with atomic_path(path) as tmp:
        write(tmp)
