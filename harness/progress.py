"""Rich progress bars that switch themselves off where nobody watches (no TTY, CI, multirun)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class _NoProgress:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def advance(self, *a: Any, **k: Any) -> None:
        pass


def progress_enabled(mode: str | bool = "auto") -> bool:
    """Whether progress bars show: ``auto`` = on a TTY and not under CI."""
    if isinstance(mode, bool):
        return mode
    mode = str(mode).lower()
    if mode in ("on", "true", "always"):
        return True
    if mode in ("off", "false", "never"):
        return False
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def make_progress(mode: str | bool = "auto") -> Iterator[Any]:
    """A rich ``Progress`` (a no-op stand-in when bars are off), as a context manager."""
    if not progress_enabled(mode):
        yield _NoProgress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        yield progress
