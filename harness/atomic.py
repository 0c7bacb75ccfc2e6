"""Atomic writes: a file or a whole directory appears complete or not at all.

Every writer in the harness and its first-party plugins goes through these helpers, so
a reader (a concurrent job, a resumed run, a report) never sees half a file and a kill
mid-write leaves only a temporary sibling behind::

    atomic_write(path, text_or_bytes)                   # small files: JSON, YAML, markdown
    with atomic_path(path) as tmp: torch.save(obj, tmp) # anything that writes to a path
    with atomic_dir(target) as tmp: ...fill tmp...      # a directory, swapped in as a whole
    swap_in(built_dir, target)                          # a directory built elsewhere nearby

Temporaries are siblings of the target (same file system, so ``os.replace`` is atomic) and
are named ``.<name>.<random>.tmp-<host>-<pid>``: `harness.store.remove_stale_temporaries`
recognises and removes those whose writer is gone.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


def host_tag() -> str:
    """This host's name as it appears in temporary names (no dashes: the pid follows the last)."""
    return socket.gethostname().replace("-", "_") or "host"


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_suffix() -> str:
    return f"{TMP_MARK}{host_tag()}-{os.getpid()}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (e.g. a platform without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on a clean exit it is renamed over ``path``.

    On an exception the temporary is removed and ``path`` is left as it was. The temporary
    keeps ``path``'s suffix last but one (``.x.npy.<rand>.tmp-...``), so writers that append a
    suffix themselves (``np.save``) must be given an open file instead (see `atomic_write`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_tmp_suffix())
    try:  # mkstemp makes 0600 files; the result gets the permissions a plain open() would give
        os.fchmod(fd, 0o666 & ~_umask())
    except (OSError, AttributeError):  # pragma: no cover (platforms without fchmod)
        pass
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync and tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def swap_in(built: str | os.PathLike[str], target: str | os.PathLike[str], *, replace: bool = True) -> Path:
    """Rename the finished directory ``built`` (a sibling of ``target``) to ``target``.

    ``replace=True``: an existing ``target`` is moved aside, the new one renamed in, the old
    one deleted, so no file of the old directory survives in the new one. ``replace=False``:
    when ``target`` already exists (another process finished first), ``built`` is discarded
    and theirs is kept. Returns ``target``.
    """
    built, target = Path(built), Path(target)
    if target.exists() and not replace:
        shutil.rmtree(built, ignore_errors=True)
        return target
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old{_tmp_suffix()}")
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    try:
        os.replace(built, target)
    except OSError:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous directory back
        elif target.exists():  # another process renamed its copy in between: keep theirs
            shutil.rmtree(built, ignore_errors=True)
            return target
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)
    return target


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary sibling directory; on a clean exit it becomes ``target`` (`swap_in`).

    On an exception the temporary directory is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=_tmp_suffix()))
    try:
        yield tmp
        swap_in(tmp, target, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
