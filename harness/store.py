"""The result store: append-only JSONL per job, atomic Parquet consolidation, loading many runs.

Layout of a run::

    results/<run>/records-<host>-<pid>.jsonl   one file per writing process (multirun: <run>/<job>/)
    results/<run>/records.parquet        consolidated: finished units only, one row per record_id
    results/<run>/run.json               manifest (argv, config, plugins, environment, times)
    results/<run>/artifacts/...          cached metric artifacts

Writes are crash-safe: each unit of work is appended with a single ``write`` and fsynced; a
partial trailing line (a kill mid-write) is cut off before the next append, and units whose
records are not all present are ignored and recomputed on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import HarnessError
from harness.atomic import atomic_path, atomic_write, host_tag
from harness.records import RECORD_COLUMNS, _json_default

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

RECORDS_GLOB = "records*.jsonl"  # one file per writing process: concurrent jobs never share one
RECORDS_PARQUET = "records.parquet"
MANIFEST = "run.json"


class StoreError(HarnessError):
    """The results root cannot be written (permissions, full disk)."""


def check_writable(directory: Path, need_bytes: int = 1 << 20, *, create: bool = True) -> None:
    """Fail early with a clear message when results cannot be written under ``directory``.

    The one check of a results location: ``create=True`` (the runner) makes the directory and
    writes a probe file; ``create=False`` (before Hydra starts) creates nothing and judges the
    nearest existing parent, so a refused run leaves no folder behind.
    """
    directory = Path(directory).expanduser().absolute()
    if not create:
        probe = directory
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise StoreError(f"results directory {directory} cannot be created: {probe} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StoreError(f"results directory {directory} is not writable ({probe}: permission denied)")
        _check_free(directory, probe, need_bytes)
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-") as fh:
            fh.write(b"x")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise StoreError(f"results directory {directory} is not writable: {exc.strerror or exc}") from exc
    _check_free(directory, directory, need_bytes)


def _check_free(directory: Path, probe: Path, need_bytes: int) -> None:
    free = _free_bytes(probe)
    if free is not None and free < need_bytes:
        raise StoreError(f"results directory {directory} has only {free} bytes free (need {need_bytes})")


def _free_bytes(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class RecordWriter:
    """Appends records to one job's JSONL file, a unit at a time.

    Each unit is one unbuffered ``write`` followed by ``fsync``. If a write fails (full disk,
    quota, I/O error) the file is cut back to where the unit started, so a failed write never
    leaves a torn line behind, and the error is raised as `StoreError` naming the file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _cut_partial_tail(self.path)
        # NOTE: unbuffered, so a failed write cannot leave bytes in a buffer that a later
        # flush (at close) would append after the error was reported
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open for the run)

    def write_unit(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append one unit's rows (all or nothing: one write and flush)."""
        payload = "".join(
            json.dumps(r, default=_json_default, allow_nan=True, separators=(",", ":")) + "\n" for r in rows
        ).encode("utf-8")
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(payload)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            try:  # no half-written unit left behind: earlier units stay exactly as they were
                os.ftruncate(fd, start)
            except OSError:  # pragma: no cover (the torn tail is cut at the next open anyway)
                pass
            raise StoreError(f"cannot write results to {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the JSONL file."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_partial_tail(path: Path) -> None:
    """Drop an incomplete last line left by a killed writer, so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return
        # scan back to the last newline (records are small; read the tail in blocks)
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                fh.truncate(start + idx + 1)
                return
            pos = start
        fh.truncate(0)


def write_manifest(run_dir: Path, *, run_id: str, job: str | None, started: float, finished: float | None,
                   config: Mapping[str, Any], family: Mapping[str, Any], plugins: Mapping[str, Any],
                   provenance: Mapping[str, Any], summary: Mapping[str, Any] | None) -> Path:
    """Write ``run.json`` (atomically): what ran, with which plugins, where, when, and how it ended.

    Written at the start (``finished`` None) and again at the end with the summary counts.
    """
    from harness.provenance import host_facts, package_versions

    def iso(t: float | None) -> str | None:
        return datetime.fromtimestamp(t, timezone.utc).isoformat() if t else None

    manifest = {
        "run_id": run_id,
        "job": job,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "config": dict(config),
        "family": dict(family),
        "plugins": dict(plugins),
        "provenance": dict(provenance),
        "versions": package_versions(),
        "host": host_facts(),
        "summary": dict(summary) if summary is not None else None,
    }
    return atomic_write(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=2, default=str))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSONL file; unparseable lines (a torn write) are skipped."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def jsonl_files(root: Path) -> list[Path]:
    """Every records JSONL file under a run root (all jobs), sorted."""
    root = Path(root)
    if root.is_file():
        return [root] if root.suffix == ".jsonl" else []
    return sorted(root.rglob(RECORDS_GLOB))


def finished(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of finished units only, one per (run_id, record_id).

    A unit may have been written more than once (a retried error, a unit that a killed job
    had half-written): its latest complete attempt wins, so nothing is lost or duplicated.
    The run id is part of a unit's identity: two runs of one config (same unit ids) loaded
    together stay two runs.
    """
    attempts: dict[tuple[Any, str], dict[str, dict[str, dict[str, Any]]]] = {}
    for row in rows:
        unit = (row.get("run_id"), row.get("unit_id") or row["record_id"])
        attempt = str(row.get("started_at"))
        attempts.setdefault(unit, {}).setdefault(attempt, {})[row["record_id"]] = row
    out: list[dict[str, Any]] = []
    for by_attempt in attempts.values():
        for attempt in sorted(by_attempt, reverse=True):
            unit_rows = by_attempt[attempt]
            expected = next(iter(unit_rows.values())).get("unit_n") or len(unit_rows)
            if len(unit_rows) >= expected:
                out.extend(unit_rows.values())
                break
    return out


def load_rows(root: Path) -> list[dict[str, Any]]:
    """The finished rows of every job of a run root (see `finished`)."""
    rows: list[dict[str, Any]] = []
    for path in jsonl_files(root):
        rows.extend(read_jsonl(path))
    return finished(rows)


def finished_units(root: Path) -> set[str]:
    """The ids of the units already finished under a run root (what a resumed run skips)."""
    return {r["unit_id"] for r in load_rows(root) if r.get("unit_id")}


def to_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame in the record schema, deterministically sorted."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(RECORD_COLUMNS))
    return sort_records(frame)


def sort_records(frame: pd.DataFrame) -> pd.DataFrame:
    """Deterministic order so tables and files diff cleanly."""
    keys = ["family", "model_id", "step", "pair_step", "metric", "measure", "task", "layer", "record_id"]
    keys = [k for k in keys if k in frame.columns]
    return frame.sort_values(keys, na_position="first", kind="mergesort").reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, path: Path) -> Path:
    """Write atomically: a temporary file in the same directory, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def consolidate(root: Path) -> Path | None:
    """Write ``records.parquet`` for a run root from its JSONL files (all jobs below it).

    Temporary Parquet files left by a writer that was killed mid-write are removed first.
    """
    remove_stale_temporaries(Path(root))
    rows = load_rows(root)
    if not rows:
        return None
    return write_parquet(to_frame(rows), Path(root) / RECORDS_PARQUET)


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete ``.<name>.tmp-<host>-<pid>`` temporaries (`harness.atomic`) whose writer is gone.

    Only files of this host are judged (a pid means nothing on another node of a cluster);
    files of live processes (a concurrent job consolidating right now) are left alone.
    """
    removed = []
    prefix = f".tmp-{_host()}-"
    for tmp in Path(root).rglob(".*.tmp-*"):
        head, _, pid = tmp.name.rpartition("-")
        if not (head + "-").endswith(prefix) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
        except OSError:
            continue
    return removed


def _host() -> str:
    return host_tag()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_results(paths: str | Path | Sequence[str | Path]) -> pd.DataFrame:
    """All finished records under one or more run directories (or results roots), as one frame.

    Identity across roots is (run_id, record_id): ``record_id`` says *what* was measured (the
    same for two runs of one config), ``run_id`` *which run* measured it.

    JSONL is the source of truth (it also holds records written since the last
    consolidation); Parquet files are read only where no JSONL exists (e.g. copied results).
    """
    import pandas as pd

    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    frames = []
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"no results at {p}")
        found = jsonl_files(p)
        if found:
            for f in found:
                rows.extend(read_jsonl(f))
        else:
            parquet = [p] if p.suffix == ".parquet" else sorted(p.rglob(RECORDS_PARQUET))
            frames += [pd.read_parquet(f) for f in parquet]
    if rows:
        frames.append(to_frame(finished(rows)))
    if not frames:
        raise HarnessError(f"no records found under {', '.join(map(str, paths))}")
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    # the same run reached twice (a root and its sub-directory, its JSONL and its Parquet copy)
    # is one run; two runs of one config are two runs
    frame = frame.drop_duplicates(["run_id", "record_id"], keep="last")
    return sort_records(frame)
