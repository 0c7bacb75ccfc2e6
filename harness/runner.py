"""The runner: plans a sweep, loads each checkpoint once, runs metrics by scope, resumes.

Order of work for one job::

    family.prepare(); refs = select(family.checkpoints())
    for each model, in step order:  load once -> checkpoint-scope and pair-scope units
    for each model:                 trajectory-scope units (read the records so far)
    once:                           suite-scope units (all sizes)
    consolidate records to Parquet; write the report; print one summary line

Every (metric, scope, checkpoint) is one *unit*. A unit's records are appended together; a
resumed run (same ``run_name``) skips finished units. A unit that raises becomes an ``error``
record carrying the cause, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__, selection, store
from harness.api import (
    CheckpointContext,
    CheckpointRef,
    ConfigError,
    FieldUnavailable,
    HarnessError,
    Measurement,
    ModelFamily,
    PairContext,
    ParameterError,
    Scope,
    SuiteContext,
    TrajectoryContext,
)
from harness.guards import FiniteFields, NonFiniteFieldError, guard_fields  # noqa: F401 (re-exported)
from harness.progress import make_progress
from harness.params import hashed_values
from harness.provenance import config_hash, git_state, package_versions, stable_id
from harness.unit_claims import CLAIMS_DIR, Claims
from harness.records import MixedConfigurationError, RowSource, measurement_rows, one_configuration
from harness.registry import (  # noqa: F401 (re-exported: building plugins moved to the registry)
    _norm_target,
    build_family,
    build_metrics,
    check_target,
    order_metrics,
    resolve_model_name,
)
from harness.registry import metrics as metric_registry
from harness.registry import models as model_registry

logger = logging.getLogger(__name__)

# ---- the run ----------------------------------------------------------------------------


@dataclass
class Summary:
    """Counts of one job: records by status, units run / already done / left to another process."""

    ok: int = 0
    skipped: int = 0
    error: int = 0
    units_run: int = 0
    units_skipped: int = 0
    #: units left to another live process on the same run_name (see `harness.unit_claims`)
    units_claimed: int = 0
    run_dir: Path | None = None
    errors: list[str] = field(default_factory=list)
    #: distinct record warnings (e.g. dropped rows of a loss log), one per model x metric
    warnings: list[str] = field(default_factory=list)
    #: one line per joined score source (matched/unmatched counts), shown after the summary
    notes: list[str] = field(default_factory=list)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Count one unit's records."""
        for r in rows:
            setattr(self, r["status"], getattr(self, r["status"]) + 1)
            if r["status"] == "error" and len(self.errors) < 20:
                self.errors.append(f"{r['model_id']} step {r['step']} {r['metric']}: {r['message']}")
            if r.get("warning") and len(self.warnings) < 20:
                w = f"{r['model_id']} {r['metric']}: {r['warning']}"
                if w not in self.warnings:
                    self.warnings.append(w)

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        resumed = f", {self.units_skipped} units already done" if self.units_skipped else ""
        if self.units_claimed:
            resumed += f", {self.units_claimed} units claimed by another process"
        return (
            f"{self.ok} ok, {self.skipped} skipped, {self.error} error records "
            f"({self.units_run} units run{resumed}) -> {self.run_dir}"
        ) + "".join(f"; {n}" for n in self.notes)


@dataclass
class RunSpec:
    """Everything the runner needs, already resolved to plain Python values."""

    model_name: str
    model: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    data: dict[str, Any]
    checkpoints: dict[str, Any]
    run_dir: Path
    run_root: Path
    seed: int = 0
    device: str = "cpu"
    progress: str = "auto"
    trusted_targets: list[str] = field(default_factory=list)
    retry_errors: bool = False
    cache_dir: Path | None = None
    job: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    report: bool = True
    #: which scopes this job runs (None = all). A two-stage sweep runs checkpoint/pair scopes
    #: in many jobs, then trajectory/suite scopes in one job that reads all their records.
    scopes: list[str] | None = None
    #: raise on NaN/Inf in any tensor a metric reads through ``Checkpoint.field``
    check_finite: bool = True
    #: score files (CSV/JSONL, W&B export) joined to the checkpoints as performance records
    scores: list[str] = field(default_factory=list)


class FamilyUnavailable(HarnessError):
    """The family cannot offer its checkpoints at all (nothing to run)."""


#: exception class names of hub clients meaning "offline and not cached"
OFFLINE_ERRORS = frozenset({"OfflineModeIsEnabled", "LocalEntryNotFoundError"})

SCOPE_NAMES = tuple(s.value for s in Scope)


def parse_scopes(value: Any) -> list[str] | None:
    """Validate the ``scopes`` config key: None/"all" = every scope, else a subset of them."""
    if value is None or value == "all":
        return None
    items = [value] if isinstance(value, str) else list(value)
    allowed = "a list drawn from " + ", ".join(SCOPE_NAMES) + " (or all)"
    if not items or any(str(v) not in SCOPE_NAMES for v in items):
        raise ParameterError("scopes", value, allowed)
    return [str(v) for v in items]


class Runner:
    """Executes one job of a sweep: plans its units, runs each once, writes records as it goes.

    Built from a `RunSpec` (plain values). The runner's own job is execution: which units are
    due (resume skips finished ones), loading each checkpoint once for all its checkpoint and
    pair units, handing trajectory and suite units the records they read, and turning a unit
    that raises into an ``error`` record while the sweep goes on. The other jobs live with
    their data: plugins are built by `harness.registry`, rows by `harness.records`, the
    manifest and record files by `harness.store`, NaN/Inf guards by `harness.guards`.

    >>> summary = Runner(spec).run()      # doctest: +SKIP
    >>> summary.line()                    # '12 ok, 0 skipped, 0 error records (...) -> results/x'
    """

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.run_id = spec.run_root.name
        store.check_writable(spec.run_dir)
        self.scopes = {Scope(s) for s in (parse_scopes(spec.scopes) or SCOPE_NAMES)}
        self.cache_dir = spec.cache_dir or Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
        self.family = build_family(
            spec.model, spec.model_name, spec.data, self.cache_dir / "families" / spec.model_name,
            spec.trusted_targets,
        )
        self.metrics = build_metrics(spec.metrics, spec.trusted_targets)
        selection.validate(spec.checkpoints)
        self.model_hash = config_hash({"name": spec.model_name, **hashed_values(type(self.family).Params, spec.model),
                                       "data": spec.data})
        self.metric_hashes = {n: config_hash(hashed_values(type(self.metrics[n]).Params, p)) if n in self.metrics
                              else config_hash(p) for n, p in spec.metrics.items()}
        self.artifact_root = spec.run_root / "artifacts"
        sha, dirty = git_state()
        self.provenance = {
            "run_id": self.run_id,
            "job": spec.job,
            "seed": spec.seed,
            "model_config_hash": self.model_hash,
            "run_config_hash": config_hash(spec.config),
            "harness_version": __version__,
            "git_sha": sha,
            "git_dirty": dirty,
            "device": spec.device,
            "hostname": socket.gethostname(),
        }
        self.row_sources = {
            name: RowSource(
                provenance=self.provenance, family=self.family.name, metric=name, metric_version=m.version,
                metric_config_hash=self.metric_hashes[name], plugin_dist=metric_registry().info(name).dist,
                plugin_version=metric_registry().info(name).version, performance_kind=m.performance_kind,
            )
            for name, m in self.metrics.items()
        }
        self.summary = Summary(run_dir=spec.run_root)
        self._known_rows: list[dict[str, Any]] | None = None  # see _records
        self.claims = Claims(spec.run_root / CLAIMS_DIR)
        self._claimed_elsewhere: list[str] = []  # units another live process was computing

    # -- planning ----------------------------------------------------------------------
    def unit_id(self, ref_model: str, step: int | None, metric: str, scope: Scope, pair_step: int | None = None) -> str:
        """The stable id of one unit (what a resumed run recognises as done)."""
        return stable_id(
            self.family.name, self.model_hash, ref_model, step, pair_step, metric, scope.value,
            self.metric_hashes[metric], self.spec.seed,
        )

    def _done(self) -> set[str]:
        rows = store.load_rows(self.spec.run_root)
        if self.spec.retry_errors:
            failed = {r["unit_id"] for r in rows if r["status"] == "error"}
            return {r["unit_id"] for r in rows} - failed
        return {r["unit_id"] for r in rows}

    def metrics_with(self, scope: Scope) -> list[str]:
        """The selected metrics that run at ``scope`` in this job."""
        if scope not in self.scopes:
            return []
        return [n for n, m in self.metrics.items() if scope in m.scopes]

    # -- records ------------------------------------------------------------------------
    def _rows(self, measurements: list[Measurement], *, metric: str, scope: Scope, **kw: Any) -> list[dict[str, Any]]:
        return measurement_rows(measurements, self.row_sources[metric], scope=scope.value, **kw)

    def _run_unit(self, writer: store.RecordWriter, metric: str, scope: Scope, ctx: Any, *,
                  unit_id: str, ref: CheckpointRef | None, **kw: Any) -> None:
        started = time.time()
        try:
            measurements = list(self.metrics[metric].measure_at(scope, ctx) or [])
            if not measurements:
                measurements = [Measurement.skipped("*", f"metric '{metric}' returned no measurements at {scope.value} scope")]
            rows = self._rows(measurements, metric=metric, scope=scope, unit_id=unit_id, ref=ref,
                              started=started, **kw)
        except (KeyboardInterrupt, SystemExit, store.StoreError):
            raise
        except FieldUnavailable as exc:  # the checkpoint cannot offer what the metric needs: skipped
            kw.pop("refs_by_size", None)
            rows = self._rows([Measurement.skipped("*", str(exc))], metric=metric, scope=scope, unit_id=unit_id,
                              ref=ref, started=started, **kw)
        except Exception as exc:  # a failing metric must not stop the sweep
            logger.debug("unit %s failed", unit_id, exc_info=True)
            logger.warning("%s %s at %s: %s", metric, scope.value, ref.label if ref else kw.get("model_id"), exc)
            err = Measurement.error("*", _describe(exc), extra={"traceback": traceback.format_exc(limit=6)})
            kw.pop("refs_by_size", None)
            rows = self._rows([err], metric=metric, scope=scope, unit_id=unit_id, ref=ref, started=started, **kw)
        self._emit(writer, rows)

    def _emit(self, writer: store.RecordWriter, rows: list[dict[str, Any]]) -> None:
        """Append one unit's records, count them, keep the in-memory view current, drop its claim."""
        writer.write_unit(rows)
        self.summary.add(rows)
        self.summary.units_run += 1
        if self._known_rows is not None:
            self._known_rows.extend(rows)
        if rows:
            self.claims.release(rows[0]["unit_id"], done=True)

    def _due(self, unit_id: str, done: set[str]) -> bool:
        """Whether this job computes ``unit_id`` now: not finished, and claimed by this process."""
        if unit_id in done:
            return False
        if self.claims.claim(unit_id):
            return True
        self._claimed_elsewhere.append(unit_id)
        self.summary.units_claimed += 1
        return False

    def _wait_for_others(self) -> None:
        """Before reading records for a trajectory/suite unit: let other processes finish the
        units this job left to them, then read the run root afresh (their records included)."""
        if not self._claimed_elsewhere:
            return
        logger.info("waiting for %d units claimed by another process", len(self._claimed_elsewhere))
        for unit_id in self._claimed_elsewhere:
            self.claims.wait(unit_id)
        self._claimed_elsewhere.clear()
        self._known_rows = None

    def _records(self, column: str, value: Any):
        """Finished records of the run root where ``column == value``, for trajectory/suite scopes.

        The run root is read from disk once, at the first trajectory or suite unit (by then the
        inputs of a two-stage sweep exist), and kept current with what this job writes after.
        """
        self._wait_for_others()
        if self._known_rows is None:
            self._known_rows = store.load_rows(self.spec.run_root)
        rows = [r for r in store.finished(self._known_rows) if r.get(column) == value]
        rows, ignored = one_configuration(rows, model_config_hash=self.model_hash,
                                          metric_config_hashes=self.metric_hashes, seed=self.spec.seed)
        if ignored:
            logger.warning("ignored %d records of other configurations under %s (%s=%s): a reused run_name?",
                           ignored, self.spec.run_root, column, value)
        return store.to_frame(rows)

    def _records_or_error(self, writer: store.RecordWriter, column: str, value: Any, *, metric: str,
                          scope: Scope, unit_id: str, **kw: Any):
        """`_records`, or None after writing the unit's ``error`` record when the records mix configurations."""
        try:
            return self._records(column, value)
        except MixedConfigurationError as exc:
            logger.warning("%s %s: %s", metric, scope.value, exc)
            self._emit(writer, self._rows([Measurement.error("*", str(exc))], metric=metric, scope=scope,
                                          unit_id=unit_id, started=time.time(), **kw))
            return None

    def _ctx_common(self, metric: str) -> dict[str, Any]:
        return {
            "metric_config": self.spec.metrics[metric],
            "artifact_root": self.artifact_root / metric,
            "seed": self.spec.seed,
        }

    # -- phases -------------------------------------------------------------------------
    def run(self) -> Summary:
        """Run every unit not yet done, consolidate the records and write the manifest."""
        t0 = time.time()
        self._write_manifest(started=t0)
        self._prepare_metrics()
        all_refs = self._offered_checkpoints()
        refs = selection.select(all_refs, self.spec.checkpoints)
        missing = selection.missing_steps(all_refs, self.spec.checkpoints)
        if missing:
            logger.warning("requested steps not offered by %s: %s", self.family.name, missing)
        if not refs:
            raise ConfigError(f"the checkpoint selection {self.spec.checkpoints} left no checkpoint of "
                              f"family '{self.family.name}' ({len(all_refs)} offered)")
        self.claims.since = time.time()
        done = self._done()
        by_model: dict[str, list[CheckpointRef]] = {}
        for ref in refs:
            by_model.setdefault(ref.model_id, []).append(ref)
        # previous selected checkpoint of each model (before sharding: pairs cross shard borders)
        full = selection.select(all_refs, {**self.spec.checkpoints, "shard": None})
        previous: dict[tuple[str, int], CheckpointRef] = {}
        for a, b in zip(full, full[1:]):
            if a.model_id == b.model_id:
                previous[(b.model_id, b.step)] = a

        ckpt_metrics, pair_metrics = self.metrics_with(Scope.CHECKPOINT), self.metrics_with(Scope.PAIR)
        traj_metrics, suite_metrics = self.metrics_with(Scope.TRAJECTORY), self.metrics_with(Scope.SUITE)
        if selection.parse_shard(self.spec.checkpoints.get("shard")) and (traj_metrics or suite_metrics):
            logger.warning(
                "checkpoints.shard is set and this job runs %s scope on its shard only; for a sharded "
                "sweep run scopes=[checkpoint,pair] in the shards, then one job with scopes=[trajectory,suite]",
                "/".join(s.value for s in (Scope.TRAJECTORY, Scope.SUITE) if self.metrics_with(s)))
        if not any((ckpt_metrics, pair_metrics, traj_metrics, suite_metrics)):
            logger.warning("no selected metric runs at scopes %s", sorted(s.value for s in self.scopes))
        writer_path = self.spec.run_dir / f"records-{socket.gethostname()}-{os.getpid()}.jsonl"
        n_tasks = (len(refs) if ckpt_metrics or pair_metrics else 0) + len(by_model) * bool(traj_metrics) + bool(
            suite_metrics)
        with store.RecordWriter(writer_path) as writer, make_progress(self.spec.progress) as progress, \
                contextlib.closing(_ReleaseAll(self.claims)):
            self._score_phase(writer, refs, all_refs, done)
            task = progress.add_task(f"{self.family.name}", total=max(n_tasks, 1))
            for model_id, model_refs in by_model.items():
                for ref in model_refs:
                    if ckpt_metrics or pair_metrics:
                        progress.update(task, description=f"{model_id} {ref.label}")
                        self._checkpoint_phase(writer, ref, previous.get((model_id, ref.step)), ckpt_metrics,
                                               pair_metrics, done)
                        progress.advance(task)
            for model_id, model_refs in by_model.items():
                if traj_metrics:
                    progress.update(task, description=f"{model_id} trajectory")
                    self._trajectory_phase(writer, model_id, model_refs, traj_metrics, done)
                    progress.advance(task)
            if suite_metrics:
                progress.update(task, description=f"{self.family.name} suite")
                self._suite_phase(writer, refs, suite_metrics, done)
                progress.advance(task)
        store.consolidate(self.spec.run_root)
        self._write_manifest(started=t0, finished=time.time())
        return self.summary

    def _prepare_metrics(self) -> None:
        """Let each metric of this job check what needs no checkpoint (its optional ``prepare()``,
        e.g. lm_eval's task names) before anything is loaded: a bad setting stops the run here."""
        due = {n for s in self.scopes for n in self.metrics_with(s)}
        for name in due:
            prepare = getattr(self.metrics[name], "prepare", None)
            if callable(prepare):
                prepare()

    def _offered_checkpoints(self) -> list[CheckpointRef]:
        """The family's checkpoints; a family that cannot list them (a missing local path, a Hub
        repository while offline) stops the run here, before any work, with one clear line."""
        try:
            self.family.prepare()
            return list(self.family.checkpoints())
        except (KeyboardInterrupt, SystemExit, HarnessError):
            raise
        except Exception as exc:  # noqa: BLE001 (named in the message; nothing has run yet)
            hint = ""
            if type(exc).__name__ in OFFLINE_ERRORS or os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
                hint = (" (offline: HF_HUB_OFFLINE is set and this is not in the local Hugging Face cache; "
                        "download it once online, or use a local source)")
            raise FamilyUnavailable(f"model '{self.family.name}' cannot list its checkpoints: "
                                    f"{_describe(exc)}{hint}") from exc

    def _checkpoint_phase(self, writer: store.RecordWriter, ref: CheckpointRef, prev: CheckpointRef | None,
                          ckpt_metrics: list[str], pair_metrics: list[str], done: set[str]) -> None:
        todo = [(m, Scope.CHECKPOINT, None) for m in ckpt_metrics
                if self._due(self.unit_id(ref.model_id, ref.step, m, Scope.CHECKPOINT), done)]
        if prev is not None:
            todo += [(m, Scope.PAIR, prev.step) for m in pair_metrics
                     if self._due(self.unit_id(ref.model_id, ref.step, m, Scope.PAIR, prev.step), done)]
        ids = [self.unit_id(ref.model_id, ref.step, m, Scope.CHECKPOINT) for m in ckpt_metrics]
        if prev is not None:
            ids += [self.unit_id(ref.model_id, ref.step, m, Scope.PAIR, prev.step) for m in pair_metrics]
        self.summary.units_skipped += sum(1 for uid in ids if uid in done)
        if not todo:
            return
        started = time.time()
        if not self.family.has_weights:
            for metric, scope, pair_step in todo:
                uid = self.unit_id(ref.model_id, ref.step, metric, scope, pair_step)
                reason = f"family '{self.family.name}' has no weights to load; {metric} needs a checkpoint"
                rows = self._rows([Measurement.skipped("*", reason)], metric=metric, scope=scope, unit_id=uid,
                                  ref=ref, pair_step=pair_step, started=started)
                self._emit(writer, rows)
            return
        try:
            ckpt = self.family.load(ref)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a broken checkpoint becomes error records; the sweep goes on
            logger.warning("cannot load %s %s: %s", ref.model_id, ref.label, exc)
            for metric, scope, pair_step in todo:
                uid = self.unit_id(ref.model_id, ref.step, metric, scope, pair_step)
                rows = self._rows([Measurement.error("*", f"checkpoint could not be loaded: {_describe(exc)}")],
                                  metric=metric, scope=scope, unit_id=uid, ref=ref, pair_step=pair_step,
                                  started=started)
                self._emit(writer, rows)
            return
        load_time = time.time() - started
        ckpt.previous = prev
        if self.spec.check_finite:
            ckpt = FiniteFields(ckpt)
        try:
            fingerprint = ckpt.data_fingerprint
        except Exception:  # noqa: BLE001 (provenance must not fail a unit)
            fingerprint = None
        try:
            for metric, scope, pair_step in todo:
                uid = self.unit_id(ref.model_id, ref.step, metric, scope, pair_step)
                if scope is Scope.CHECKPOINT:
                    ctx: Any = CheckpointContext(**self._ctx_common(metric), checkpoint=ckpt)
                else:
                    ctx = PairContext(**self._ctx_common(metric), previous=prev, checkpoint=ckpt)
                self._run_unit(writer, metric, scope, ctx, unit_id=uid, ref=ref, pair_step=pair_step,
                               load_time=load_time, data_fingerprint=fingerprint)
        finally:
            ckpt.close()

    def _score_phase(self, writer: store.RecordWriter, refs: list[CheckpointRef], offered: list[CheckpointRef],
                     done: set[str]) -> None:
        """Published scores of the family and the user's score files -> performance records."""
        from harness import scores

        tables = []
        published = self.family.scores(refs)
        if published is not None:
            tables.append(published)
        tables += [scores.read_score_file(p) for p in self.spec.scores]
        for table in tables:
            joined, report = scores.match(table, refs, offered)
            self.summary.notes.append(report.line())
            base = {**self.provenance, "plugin_version": None, "versions": package_versions()}

            def uid(ref: CheckpointRef, label: str = table.label, fp: str = table.fingerprint) -> str:
                return stable_id(self.family.name, self.model_hash, ref.model_id, ref.step, label, fp, self.spec.seed)

            for rows in scores.score_rows(table, joined, base=base, unit_id_of=uid):
                if rows[0]["unit_id"] in done:
                    self.summary.units_skipped += 1
                    continue
                self._emit(writer, rows)

    def _trajectory_phase(self, writer: store.RecordWriter, model_id: str, refs: list[CheckpointRef],
                          metrics: list[str], done: set[str]) -> None:
        last = refs[-1]
        history = None
        for metric in metrics:
            uid = self.unit_id(model_id, last.step, metric, Scope.TRAJECTORY)
            if uid in done:
                self.summary.units_skipped += 1
                continue
            if not self._due(uid, done):
                continue
            records = self._records_or_error(writer, "model_id", model_id, metric=metric, scope=Scope.TRAJECTORY,
                                             unit_id=uid, ref=last)
            if records is None:
                continue
            if history is None:
                history = self.family.history(model_id)
            ctx = TrajectoryContext(**self._ctx_common(metric), model_id=model_id, refs=refs, records=records,
                                    history=history)
            self._run_unit(writer, metric, Scope.TRAJECTORY, ctx, unit_id=uid, ref=last)

    def _suite_phase(self, writer: store.RecordWriter, refs: list[CheckpointRef], metrics: list[str],
                     done: set[str]) -> None:
        suite_id = f"{self.family.name}:suite"
        refs_by_size: dict[str, CheckpointRef] = {}
        for r in refs:
            refs_by_size.setdefault(r.size, r)
        for metric in metrics:
            uid = self.unit_id(suite_id, None, metric, Scope.SUITE)
            if uid in done:
                self.summary.units_skipped += 1
                continue
            if not self._due(uid, done):
                continue
            records = self._records_or_error(writer, "family", self.family.name, metric=metric, scope=Scope.SUITE,
                                             unit_id=uid, ref=None, model_id=suite_id)
            if records is None:
                continue
            ctx = SuiteContext(**self._ctx_common(metric), family=self.family.name, refs=refs, records=records)
            self._run_unit(writer, metric, Scope.SUITE, ctx, unit_id=uid, ref=None, model_id=suite_id,
                           refs_by_size=refs_by_size)

    def _write_manifest(self, started: float, finished: float | None = None) -> None:
        store.write_manifest(
            self.spec.run_dir, run_id=self.run_id, job=self.spec.job, started=started, finished=finished,
            config=self.spec.config, family={"name": self.family.name, **_safe_describe(self.family)},
            plugins={
                "model": vars(model_registry().info(self.spec.model_name)),
                "metrics": {n: vars(metric_registry().info(n)) for n in self.metrics},
            },
            provenance=self.provenance,
            summary={k: v for k, v in vars(self.summary).items() if k != "run_dir"} if finished else None,
        )


class _ReleaseAll:
    """``contextlib.closing`` target: drop this job's remaining claims however the run ends."""

    def __init__(self, claims: Claims):
        self.claims = claims

    def close(self) -> None:
        self.claims.release_all()


def _safe_describe(family: ModelFamily) -> dict[str, Any]:
    try:
        return dict(family.describe() or {})
    except Exception as exc:  # noqa: BLE001
        return {"describe_error": str(exc)}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if not isinstance(exc, HarnessError) else text
