"""Unit claims: two processes on one ``run_name`` split the work instead of doing it twice.

Before a process computes a unit it takes an exclusive, non-blocking ``flock`` on
``<run root>/.claims/<unit_id>.lock`` and holds it until the unit's records are written. The
kernel drops the lock when the process dies (SIGKILL, OOM, a lost node's process), so a claim
never outlives its holder: a stale claim is simply free to take.

When the holder finishes it writes the finishing time into the lock file. A process that gets
a claim later checks that time against the moment it read the finished units (`Claims.since`):
a unit finished by someone else after that moment is done, not due. Lock files are left in
place (removing them would race with a process about to lock the same path).

On a platform without ``fcntl`` (Windows) claims are a no-op: every unit is "claimed".
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CLAIMS_DIR = ".claims"


class Claims:
    """Per-unit exclusive claims under one directory (see the module docstring).

    >>> c = Claims(run_root / ".claims"); c.since = time.time()   # doctest: +SKIP
    >>> if c.claim(unit_id): ...compute, write records...; c.release(unit_id, done=True)
    """

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        #: when this process read the finished units; a unit finished after it is not due
        self.since = time.time()
        self._held: dict[str, int] = {}

    def _path(self, unit_id: str) -> Path:
        return self.directory / f"{unit_id}.lock"

    def claim(self, unit_id: str) -> bool:
        """Take the claim on ``unit_id``; False when a live process holds it or just finished it."""
        if unit_id in self._held:
            return True
        if fcntl is None:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(unit_id), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        if self._finished_after(fd, self.since):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return False
        self._held[unit_id] = fd
        return True

    @staticmethod
    def _finished_after(fd: int, since: float) -> bool:
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            return bool(text) and float(text) >= since
        except (OSError, ValueError):
            return False

    def release(self, unit_id: str, *, done: bool = False) -> None:
        """Drop the claim; ``done=True`` first records that the unit's records are written."""
        fd = self._held.pop(unit_id, None)
        if fd is None:
            return
        try:
            if done:
                stamp = f"{time.time():.6f}\n".encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, stamp, 0)
        except OSError as exc:  # pragma: no cover (the claim is released anyway)
            logger.debug("cannot stamp claim %s: %s", unit_id, exc)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def wait(self, unit_id: str) -> None:
        """Block until no process holds ``unit_id`` (its holder finished or died)."""
        if fcntl is None or unit_id in self._held:
            return
        path = self._path(unit_id)
        if not path.exists():
            return
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def release_all(self) -> None:
        """Drop every claim this object holds (without marking the units done)."""
        for unit_id in list(self._held):
            self.release(unit_id)
