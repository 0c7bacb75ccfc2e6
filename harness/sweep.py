"""Sweeps across processes and machines: launcher checks, per-job status, one summary per sweep.

The harness has no scheduler of its own: Hydra launchers (joblib, submitit, ray) run the jobs
of ``python -m harness -m ...``. This module adds what a sweep needs on top of them:

* ``check_launcher``: ``hydra/launcher=ray`` without the launcher package installed fails at once
  with the package to install, instead of a Hydra stack trace after composing.
* (an unwritable or full results root fails before any work starts: `harness.app.check_composed`
  calls `harness.store.check_writable` on the composed ``results_dir``, the one check.)
* ``write_job_status``: each multirun job writes ``<job dir>/job_status.json`` (exit code,
  counts, message) instead of exiting the process, so one failing job never stops the sweep.
* ``SweepSummary``: a Hydra callback (added by ``python -m harness -m``) that, once every job has
  finished, consolidates the records of the whole sweep into one Parquet file, prints one line
  over all jobs and sets the process exit code (the largest of the jobs': 3 if a job's process
  died under the Ray launcher, 2 if a job had a user error, 1 if any record is an error, else 0).

Example::

    python -m harness -m hydra/launcher=joblib checkpoints.shard=0/4,1/4,2/4,3/4 \\
        'scopes=[checkpoint,pair]' run_name=big
    python -m harness 'scopes=[trajectory,suite]' run_name=big      # reads all records of big/
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from harness.api import HarnessError
from harness.atomic import atomic_write

logger = logging.getLogger(__name__)

#: appended to the command line of a multirun so the sweep ends with one summary and exit code
CALLBACK_OVERRIDE = "++hydra.callbacks.harness_sweep._target_=harness.sweep.SweepSummary"
JOB_STATUS = "job_status.json"
MIN_FREE_BYTES = 1 << 20

#: exit code of the last sweep run in this process (read by `harness.app.main`)
EXIT_CODE = 0


def is_multirun(argv: list[str]) -> bool:
    """Whether the command line asks for a multirun (``-m``/``--multirun``)."""
    return any(a in ("-m", "--multirun") for a in argv)


def _override_value(argv: list[str], key: str) -> str | None:
    value = None
    for arg in argv:
        name, sep, val = arg.partition("=")
        if sep and name.lstrip("+~") == key:
            value = val
    return value


def check_launcher(argv: list[str]) -> None:
    """Fail early when ``hydra/launcher=NAME`` names a shipped preset whose plugin is not installed."""
    name = _override_value(argv, "hydra/launcher")
    if not name:
        return
    try:
        text = (resources.files("harness.conf") / "hydra" / "launcher" / f"{name}.yaml").read_text()
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        return  # not one of ours: Hydra resolves (or rejects) it
    # a preset whose _target_ is the harness's own class names the plugin it needs in a
    # `# requires: MODULE (INSTALL)` line; otherwise the package is the _target_'s
    requires = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                     if line.startswith("# requires:")), None)
    target = next((line.split(":", 1)[1].strip().strip("'\"") for line in text.splitlines()
                   if line.strip().startswith("_target_:")), None)
    if not target and not requires:
        return
    install = None
    if requires:
        package, _, install = requires.partition(" ")
        install = install.strip("() ") or None
    else:
        package = ".".join(target.split(".")[:2])  # hydra_plugins.hydra_<x>_launcher
    try:
        found = importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        dist = package.split(".")[-1].replace("_", "-")
        raise HarnessError(
            f"hydra/launcher={name} needs the {dist} package, which is not installed: pip install {install or dist}"
        )


def add_checkout_plugins() -> None:
    """Let Hydra find this checkout's ``hydra_plugins/`` from any working directory.

    Hydra discovers plugins by walking the ``hydra_plugins`` namespace with pkgutil, which cannot
    see into an editable install's import hook: run from outside the checkout, the harness's own
    Hydra plugins (search path, Ray launcher) were missing. A regular install puts them in
    site-packages, where this is a no-op.
    """
    try:
        import hydra_plugins
    except ImportError:  # pragma: no cover (hydra-core always ships the namespace's plugins)
        return
    mine = str(Path(__file__).resolve().parent.parent / "hydra_plugins")
    if os.path.isdir(mine) and mine not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(mine)


def gpus_for(device: Any) -> int:
    """GPUs a job asks its launcher for: 1 for ``device=cuda`` / ``cuda:N``, else 0 (the ``ray`` preset)."""
    return 1 if str(device).startswith("cuda") else 0


try:  # ${harness.gpus:${device}} in conf/hydra/launcher/ray.yaml; omegaconf comes with the CLI
    from omegaconf import OmegaConf as _OmegaConf

    _OmegaConf.register_new_resolver("harness.gpus", gpus_for, replace=True)
except ImportError:  # pragma: no cover
    pass


def write_job_status(job_dir: Path, code: int, *, summary: Any = None, message: str | None = None) -> None:
    """Record how one multirun job ended (atomically; never raises)."""
    status = {"exit_code": code, "message": message, "finished_at": time.time(), "pid": os.getpid()}
    if summary is not None:
        status.update({k: getattr(summary, k) for k in ("ok", "skipped", "error", "units_run", "units_skipped")})
        status["errors"] = list(summary.errors[:5])
    try:
        atomic_write(job_dir / JOB_STATUS, json.dumps(status, default=str))
    except OSError as exc:  # the job's records are what counts; the status is a convenience
        logger.warning("cannot write job status in %s: %s", job_dir, exc)


def read_job_statuses(sweep_dir: Path, since: float = 0.0) -> list[dict[str, Any]]:
    """Statuses of the jobs of one sweep (files older than ``since`` belong to an earlier sweep)."""
    out = []
    for path in sorted(Path(sweep_dir).glob(f"*/{JOB_STATUS}")):
        try:
            if path.stat().st_mtime + 1 < since:
                continue
            out.append({"job": path.parent.name, **json.loads(path.read_text())})
        except (OSError, json.JSONDecodeError):
            continue
    return out


def sweep_line(statuses: list[dict[str, Any]], sweep_dir: Path) -> str:
    """The one-line summary of a whole sweep from its jobs' statuses."""
    n_err_jobs = sum(1 for s in statuses if s.get("exit_code") == 1)
    n_failed = sum(1 for s in statuses if s.get("exit_code", 0) not in (0, 1))
    counts = {k: sum(int(s.get(k) or 0) for s in statuses) for k in ("ok", "skipped", "error")}
    return (
        f"sweep of {len(statuses)} jobs ({n_err_jobs} with error records, {n_failed} failed): "
        f"{counts['ok']} ok, {counts['skipped']} skipped, {counts['error']} error records -> {sweep_dir}"
    )


def _write_report(sweep_dir: Path) -> None:
    """The report of the whole sweep (jobs skip theirs so they never write the same files at once)."""
    from harness import report, store

    try:
        frame = store.load_results(sweep_dir)
        if hasattr(report, "write_run_report"):
            report.write_run_report(sweep_dir, frame)
    except Exception as exc:  # noqa: BLE001 (a report failure must not lose the sweep)
        logger.warning("sweep report failed: %s", exc)


try:  # hydra is a dependency of the CLI, not of `import harness`
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[misc,assignment]


class SweepSummary(_Callback):  # type: ignore[misc]
    """Hydra callback: after all jobs of a multirun, consolidate, summarise, set the exit code."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Note when the sweep started."""
        self.started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Consolidate the sweep's records, print its summary line and set the exit code."""
        global EXIT_CODE
        from harness import store

        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = read_job_statuses(sweep_dir, since=self.started)
        try:
            store.consolidate(sweep_dir)
        except Exception as exc:  # noqa: BLE001 (the JSONL files stay the source of truth)
            logger.warning("cannot consolidate the sweep's records: %s", exc)
        if config.get("report", True):
            _write_report(sweep_dir)
        codes = [int(s.get("exit_code") or 0) for s in statuses]
        EXIT_CODE = max(codes, default=0)
        from rich.console import Console

        console = Console(soft_wrap=True, highlight=False)
        for s in statuses:
            if s.get("exit_code") not in (0, None):
                console.print(f"[red]job {s['job']}[/red]: {s.get('message') or '; '.join(s.get('errors') or [])}")
        console.print(f"[bold]harness[/bold]: {sweep_line(statuses, sweep_dir)}")
