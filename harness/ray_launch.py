"""Run the jobs of a sweep as Ray tasks (``hydra/launcher=ray``), safely on a real cluster.

`hydra_plugins.harness_ray_launcher.HarnessRayLauncher` (the ``ray`` preset's ``_target_``)
calls `launch`. It reuses hydra-ray-launcher's job runner and adds what that plugin lacks for
a sweep whose jobs write into one run root:

* **connecting to a running cluster works**: hydra-ray-launcher 1.2.2 always passes
  ``object_store_memory`` to ``ray.init``, which Ray refuses when ``address`` names an existing
  cluster; here it is only set when ``address`` is null (a private local instance);
* **one run root, absolute**: a Ray worker's working directory is wherever ``ray start`` ran,
  not the driver's, so a relative ``results_dir`` would scatter records over the nodes. Every
  job gets the driver's absolute sweep directory and runs in the driver's working directory
  (when that directory exists on its node);
* **shared storage is checked before any work**: a probe file written in the run root must be
  visible and writable from every alive node, else the sweep stops with exit code 2 and names
  the nodes (no job starts, no file lands elsewhere). The cache root gets the same probe; a
  node that cannot see it only gets a warning (each node would build its own copies);
* **a dead worker is a failed job, not a crashed sweep**: if a job's worker process dies
  (SIGKILL, OOM killer, lost node) ``ray.get`` raises; the job's ``job_status.json`` then says
  so (exit code `EXIT_JOB_DIED`) and the other jobs finish, so the sweep ends with its summary
  line. Rerunning the same command resumes that job (finished units are skipped).

Ray is contacted on the addresses it is given only; the launcher turns Ray's usage statistics
off unless the user set ``RAY_USAGE_STATS_ENABLED``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Sequence

from harness.api import HarnessError

logger = logging.getLogger(__name__)

#: job_status.json exit code of a job whose process died before it could write its own status
EXIT_JOB_DIED = 3
#: object store of a private local instance (what hydra-ray-launcher sets, for small machines)
LOCAL_OBJECT_STORE_BYTES = 78_643_200
PROBE_TIMEOUT_S = 120.0


def _run_job(cwd: str, hydra_context: Any, sweep_config: Any, task_function: Any, singleton_state: Any) -> Any:
    """Worker side: run one Hydra job in the driver's working directory (if this node has it)."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import _run_job as run_hydra_job

    previous = os.getcwd()
    if os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        return run_hydra_job(hydra_context, sweep_config, task_function, singleton_state)
    finally:
        os.chdir(previous)


def _probe(paths: list[str], tokens: list[str]) -> dict[str, Any]:
    """Worker side: which of the driver's probe files this node sees, and whether it can write there."""
    seen = []
    for path, token in zip(paths, tokens):
        p = Path(path)
        try:
            ok = p.read_text() == token and os.access(p.parent, os.W_OK | os.X_OK)
        except OSError:
            ok = False
        seen.append(ok)
    return {"host": socket.gethostname(), "seen": seen}


def _start_ray(init_cfg: dict[str, Any]) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    kwargs = dict(init_cfg)
    if kwargs.get("address") in (None, "", "local"):
        kwargs.setdefault("object_store_memory", LOCAL_OBJECT_STORE_BYTES)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise HarnessError(f"hydra.launcher.ray.init: cannot start or reach Ray with {kwargs}: {exc}") from exc


def check_shared_storage(run_root: Path, cache_root: Path | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse to start unless every alive Ray node sees the run root (cache: warn).

    The driver writes a probe file with a random token into each root; a zero-CPU task pinned to
    each node reads it back. Raises `HarnessError` naming the nodes that cannot see the run root.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    roots = [run_root] + ([cache_root] if cache_root is not None else [])
    paths, tokens = [], []
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        path = root / f".harness-probe-{token}"
        path.write_text(token)
        paths.append(str(path))
        tokens.append(token)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(paths, tokens) for n in nodes]
        try:
            answers = ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError as exc:
            raise HarnessError(f"the Ray nodes did not answer the shared-storage probe within {timeout:.0f} s "
                               f"({len(nodes)} alive nodes); no job was started") from exc
    finally:
        for path in paths:
            Path(path).unlink(missing_ok=True)
    where = [f"{a['host']} ({n['NodeManagerAddress']})" for a, n in zip(answers, nodes)]
    blind = [w for w, a in zip(where, answers) if not a["seen"][0]]
    if blind:
        raise HarnessError(
            f"results root {run_root} is not shared with every Ray node: {', '.join(blind)} cannot see or write "
            f"it. Put results_dir on a filesystem that every node mounts at the same path (see docs/scaling.md); "
            f"no job was started")
    if cache_root is not None:
        blind = [w for w, a in zip(where, answers) if not a["seen"][1]]
        if blind:
            logger.warning("cache %s is not shared with Ray node(s) %s: each node builds and downloads its own "
                           "copies (set HARNESS_CACHE and HF_HOME to a shared filesystem)", cache_root, ", ".join(blind))


def _cache_root(config: Any) -> Path:
    value = config.get("cache_dir") if hasattr(config, "get") else None
    base = value or os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness"
    return Path(str(base)).expanduser().absolute()


def _job_dir(sweep_config: Any, sweep_dir: Path, idx: int) -> Path:
    from omegaconf import OmegaConf

    try:
        sub = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    except Exception:  # noqa: BLE001 (an unresolvable subdir: fall back to the job number)
        sub = str(idx)
    return sweep_dir / sub


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """Submit every job as a Ray task, wait for all, turn dead workers into failed-job statuses.

    A cluster that cannot be reached or that does not share the run root is a user error: one
    line on stderr and exit code 2, before any job starts.
    """
    try:
        return _launch(launcher, job_overrides, initial_job_idx)
    except HarnessError as exc:
        from harness.app import EXIT_USER_ERROR, print_error

        print_error(str(exc))
        raise SystemExit(EXIT_USER_ERROR) from None


def _launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    import ray
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
    from omegaconf import OmegaConf, open_dict

    from harness import sweep

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    init_cfg = OmegaConf.to_container(launcher.ray_cfg.init, resolve=True) or {}
    remote_cfg = OmegaConf.to_container(launcher.ray_cfg.remote, resolve=True) or {}
    _start_ray(init_cfg)
    check_shared_storage(sweep_dir, _cache_root(config))
    logger.info("Ray launcher: %d jobs, %s each, into %s", len(job_overrides), remote_cfg, sweep_dir)
    run = ray.remote(**remote_cfg)(_run_job) if remote_cfg else ray.remote(_run_job)
    cwd = os.getcwd()
    submitted = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        logger.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"ray_job_{idx}"
            sweep_config.hydra.job.num = idx
            sweep_config.hydra.sweep.dir = str(sweep_dir)
        ref = run.remote(cwd, launcher.hydra_context, sweep_config, launcher.task_function, Singleton.get_state())
        submitted.append((idx, overrides, sweep_config, ref))
    results = []
    for idx, overrides, sweep_config, ref in submitted:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"the Ray worker running this job died ({type(exc).__name__}: {first}); rerun the sweep to resume it"
            logger.error("job %d (%s): %s", idx, " ".join(overrides), message)
            sweep.write_job_status(_job_dir(sweep_config, sweep_dir, idx), EXIT_JOB_DIED, message=message)
            # COMPLETED with no value: the harness's own job_status.json carries the failure, so
            # Hydra's sweeper does not re-raise it and the sweep still ends with its summary line
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.return_value = None
            results.append(ret)
    return results
