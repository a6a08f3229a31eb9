"""Output files: checked before any work, written atomically, never half-written nor left behind.

    check_output(args.output, inputs=[args.checkpoint])   # up front: one line, before minutes of work
    write_atomic(path, lambda tmp: tmp.write_text(text))  # temp file beside the target, then os.replace

A write goes to ``.NAME.PID.XXXXXXXX.tmp`` in the target's folder and is moved over the target
only when it finished, so a failure (an exception, Ctrl-C, SIGTERM from the CLI's handler) leaves
the old target untouched and no temp file. A ``kill -9`` cannot be caught: its temp file is swept
by the next write to the same target once its process is gone (the pid is in the name; on a
shared file system a writer on another machine counts as gone). Written files get
``0o666 & ~umask`` like any newly created file (``mkstemp`` alone would make them 0600).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import NpuCompressError, OutputError

__all__ = ["OutputError", "atomic_path", "check_output", "check_writable", "write_atomic", "write_torch"]

_STARTED = time.time()  # untagged temp files (older versions) older than this process are stale
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_writable(path: str | Path) -> Path:
    """The folder ``path`` would be written in; :class:`OutputError` if ``path`` is a folder or an
    existing non-regular file, or its folder is missing or not writable (tried with a temp file).
    Call it before long work, so a bad output path fails first, not last."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"cannot write '{target}': it is a folder; give a file name inside it")
    if target.exists() and not target.is_file():
        raise OutputError(f"cannot write '{target}': it exists and is not a regular file")
    if not folder.exists():
        raise OutputError(f"cannot write '{target}': folder '{folder}' does not exist")
    if not folder.is_dir():
        raise OutputError(f"cannot write '{target}': '{folder}' is not a folder")
    try:  # os.access says yes to root and knows nothing of quotas or read-only bind mounts: try it
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise OutputError(f"cannot write '{target}': folder '{folder}' is not writable ({_reason(e)})") from None
        raise OutputError(f"cannot write '{target}': {_reason(e)}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def check_output(path: str | Path, inputs: Iterable[str | Path | None] = (), flag: str = "") -> Path:
    """:func:`check_writable`, and refuse an output that is one of ``inputs`` (same file by any
    spelling: relative, ``..``, a symlink or a hard link). ``flag`` names the option in messages."""
    target = Path(path)
    name = f"{flag} '{target}'" if flag else f"'{target}'"
    for source in inputs:
        if source is not None and same_file(target, source):
            raise OutputError(f"{name} is the input '{source}'; refusing to overwrite an input: "
                              "write elsewhere (then move it if you mean to replace it)")
    return check_writable(target)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file (or would, once ``a`` is created)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet): compare where they point
        return Path(a).resolve() == Path(b).resolve()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success move it over ``path``, else delete it.

    OS errors (disk full, permission, read-only file system) become :class:`OutputError` naming
    ``path``; nothing is left behind either way.
    """
    target = Path(path)
    folder = check_writable(target)
    _sweep_stale(folder, target.name)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have created
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, target)
    except NpuCompressError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write '{target}': {_reason(e)}") from None
    except Exception as e:
        if _disk_full(folder):  # writers that hide the OSError (torch.save's "unexpected pos")
            raise OutputError(f"cannot write '{target}': no space left on device ({type(e).__name__}: "
                              f"{e})") from None
        raise
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp_path)`` then move into place."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_torch(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically, serialised in memory first, so that a full disk
    is an ``OSError`` (torch's own writer reports it as an obscure RuntimeError)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def _reason(e: OSError) -> str:
    if e.errno in _DISK_ERRNOS:
        return f"{e.strerror} (disk full or over a size limit)"
    return e.strerror or str(e)


def _disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _umask() -> int:
    """The process umask: from /proc where Linux shows it, else by setting and restoring it."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sweep_stale(folder: Path, name: str) -> None:
    """Remove temp files of ``name`` left by killed writers: tagged with the pid of a process that
    no longer runs on this machine, or untagged (older versions) and older than this process."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = pattern.fullmatch(entry.name)
            if not match or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                pid = match.group(1)
                if (not _alive(int(pid))) if pid else entry.stat(follow_symlinks=False).st_mtime < _STARTED:
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's live process (or not a pid: leave it alone)
    return True
