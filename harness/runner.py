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

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import __version__, selection, store
from harness.api import (
    Checkpoint,
    CheckpointContext,
    CheckpointRef,
    ConfigError,
    FieldUnavailable,
    HarnessError,
    Measurement,
    Metric,
    ModelFamily,
    PairContext,
    ParameterError,
    Scope,
    SuiteContext,
    TrajectoryContext,
)
from harness.progress import make_progress
from harness.provenance import config_hash, git_state, host_facts, package_versions, peak_rss_mb, stable_id
from harness.records import normalise
from harness.registry import metrics as metric_registry
from harness.registry import models as model_registry
from harness.registry import unknown_name_message

logger = logging.getLogger(__name__)

RESERVED_KEYS = ("_target_",)


# ---- building plugins from config -------------------------------------------------------


def _norm_target(target: str) -> str:
    return target.replace(":", ".")


def check_target(kind: str, name: str, target: str | None, trusted: Iterable[str]) -> None:
    """Refuse to instantiate anything but the registered plugin class or a trusted target."""
    registered = (model_registry() if kind == "model" else metric_registry()).target(name)
    if target is None or _norm_target(target) == _norm_target(registered):
        return
    if _norm_target(target) in {_norm_target(t) for t in trusted}:
        return
    raise ConfigError(
        f"{kind} '{name}': _target_ {target!r} is not the registered plugin class {registered!r}. "
        "Add it to `trusted_targets` if you really mean to instantiate it."
    )


def _params(node: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in RESERVED_KEYS}


def resolve_model_name(node: Mapping[str, Any], choice: str | None) -> str:
    """The family's registry name: the config group choice, else the class its _target_ names."""
    names = model_registry().names()
    if choice and choice in names:
        return choice
    target = node.get("_target_")
    for name, registered in model_registry().targets().items():
        if target and _norm_target(registered) == _norm_target(target):
            return name
    raise ConfigError(unknown_name_message("model", str(choice or target), names))


def build_family(node: Mapping[str, Any], name: str, data: Mapping[str, Any], workdir: Path,
                 trusted: Iterable[str]) -> ModelFamily:
    """Instantiate the family of the ``model`` node (its parameters validated against its declaration)."""
    check_target("model", name, node.get("_target_"), trusted)
    cls = model_registry().get(name)
    try:
        return cls(**_params(node), data=dict(data), workdir=str(workdir))
    except ParameterError as exc:
        raise exc.with_prefix("model") from None
    except TypeError as exc:
        raise ConfigError(f"model '{name}': {exc}") from None


def build_metrics(nodes: Mapping[str, Mapping[str, Any]], trusted: Iterable[str]) -> dict[str, Metric]:
    """Instantiate the selected metrics, in the order `order_metrics` gives."""
    out: dict[str, Metric] = {}
    registry = metric_registry()
    for name in nodes:
        if name not in registry:
            raise ConfigError(unknown_name_message("metric", name, registry.names()))
    for name in order_metrics(nodes):
        node = nodes[name]
        check_target("metric", name, node.get("_target_"), trusted)
        cls = registry.get(name)
        try:
            out[name] = cls(**_params(node))
        except ParameterError as exc:
            raise exc.with_prefix(f"metric.{name}") from None
        except TypeError as exc:
            raise ConfigError(f"metric '{name}': {exc}") from None
    return out


def order_metrics(nodes: Mapping[str, Any]) -> list[str]:
    """Metrics that others read (``Metric.reads``) run first; otherwise config order."""
    names = list(nodes)
    reads = {n: set(getattr(metric_registry().get(n), "reads", ())) for n in names}
    ordered: list[str] = []
    while names:
        ready = [n for n in names if not (reads[n] & set(names) - {n})] or names[:1]
        ordered.append(ready[0])
        names.remove(ready[0])
    return ordered


# ---- the run ----------------------------------------------------------------------------


@dataclass
class Summary:
    """Counts of one job's records and units, and its first errors."""
    ok: int = 0
    skipped: int = 0
    error: int = 0
    units_run: int = 0
    units_skipped: int = 0
    run_dir: Path | None = None
    errors: list[str] = field(default_factory=list)
    #: one line per joined score source (matched/unmatched counts), shown after the summary
    notes: list[str] = field(default_factory=list)

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        """Count one unit's records."""
        for r in rows:
            setattr(self, r["status"], getattr(self, r["status"]) + 1)
            if r["status"] == "error" and len(self.errors) < 20:
                self.errors.append(f"{r['model_id']} step {r['step']} {r['metric']}: {r['message']}")

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        resumed = f", {self.units_skipped} units already done" if self.units_skipped else ""
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
    """Runs one job: plans the units, loads each checkpoint once, runs metrics by scope, resumes."""
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
        self.model_hash = config_hash({"name": spec.model_name, **spec.model, "data": spec.data})
        self.metric_hashes = {n: config_hash(p) for n, p in spec.metrics.items()}
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
        self.summary = Summary(run_dir=spec.run_root)
        self._known_rows: list[dict[str, Any]] | None = None  # see _records

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
    def _rows(self, measurements: list[Measurement], *, metric: str, scope: Scope, unit_id: str,
              ref: CheckpointRef | None, refs_by_size: Mapping[str, CheckpointRef] | None = None,
              pair_step: int | None = None, model_id: str | None = None, started: float,
              load_time: float | None = None, data_fingerprint: str | None = None) -> list[dict[str, Any]]:
        m = self.metrics[metric]
        ep = metric_registry().info(metric)
        wall = time.time() - started
        started_at = datetime.fromtimestamp(started, timezone.utc).isoformat()
        rows = []
        for meas in measurements:
            base_ref = ref
            if refs_by_size and meas.size in refs_by_size:
                base_ref = refs_by_size[meas.size]
            row = {
                **self.provenance,
                "unit_id": unit_id,
                "unit_n": len(measurements),
                "family": self.family.name,
                "model_id": base_ref.model_id if base_ref else model_id,
                "size": meas.size or (base_ref.size if base_ref else None),
                "n_params": base_ref.n_params if base_ref else None,
                "checkpoint": base_ref.label if base_ref and meas.step is None else (
                    f"step{meas.step}" if meas.step is not None else None),
                "step": meas.step if meas.step is not None else (base_ref.step if base_ref else None),
                "pair_step": pair_step,
                "tokens_seen": base_ref.tokens_seen if base_ref and meas.step is None else None,
                "learning_rate": base_ref.learning_rate if base_ref and meas.step is None else None,
                "revision": base_ref.revision if base_ref else None,
                "weights_sha": (base_ref.meta or {}).get("weights_sha") if base_ref else None,
                "metric": metric,
                "metric_version": m.version,
                "scope": scope.value,
                "measure": meas.measure,
                "task": meas.task,
                "layer": meas.layer,
                "value": meas.value,
                "stderr": meas.stderr,
                "n": meas.n,
                "unit": meas.unit,
                "higher_is_better": meas.higher_is_better,
                "performance": m.performance_kind(meas) if meas.status == "ok" else None,
                "status": meas.status,
                "message": meas.message,
                "warning": meas.warning or ((base_ref.meta or {}).get("warning") if base_ref else None),
                "data_fingerprint": data_fingerprint,
                "metric_config_hash": self.metric_hashes[metric],
                "plugin_dist": ep.dist,
                "plugin_version": ep.version,
                "versions": package_versions(),
                "started_at": started_at,
                "wall_time_s": wall,
                "load_time_s": load_time,
                "peak_mem_mb": peak_rss_mb(),
                "extra": meas.extra or None,
            }
            rows.append(normalise(row))
        ids = [r["record_id"] for r in rows]
        if len(set(ids)) != len(ids):
            dup = sorted({(r["measure"], r["task"], r["layer"], r["step"]) for r in rows
                          if ids.count(r["record_id"]) > 1}, key=str)
            raise HarnessError(
                f"metric '{metric}' produced measurements with the same identity {dup[:3]}: "
                "they must differ in measure, task, layer, step or size"
            )
        return rows

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
        """Append one unit's records, count them, and keep the in-memory view current."""
        writer.write_unit(rows)
        self.summary.add(rows)
        self.summary.units_run += 1
        if self._known_rows is not None:
            self._known_rows.extend(rows)

    def _records(self, column: str, value: Any):
        """Finished records of the run root where ``column == value``, for trajectory/suite scopes.

        The run root is read from disk once, at the first trajectory or suite unit (by then the
        inputs of a two-stage sweep exist), and kept current with what this job writes after.
        """
        if self._known_rows is None:
            self._known_rows = store.load_rows(self.spec.run_root)
        rows = [r for r in store.finished(self._known_rows) if r.get(column) == value]
        return store.to_frame(rows)

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
        self.family.prepare()
        all_refs = list(self.family.checkpoints())
        refs = selection.select(all_refs, self.spec.checkpoints)
        missing = selection.missing_steps(all_refs, self.spec.checkpoints)
        if missing:
            logger.warning("requested steps not offered by %s: %s", self.family.name, missing)
        if not refs:
            raise ConfigError(f"the checkpoint selection {self.spec.checkpoints} left no checkpoint of "
                              f"family '{self.family.name}' ({len(all_refs)} offered)")
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
        with store.RecordWriter(writer_path) as writer, make_progress(self.spec.progress) as progress:
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

    def _checkpoint_phase(self, writer: store.RecordWriter, ref: CheckpointRef, prev: CheckpointRef | None,
                          ckpt_metrics: list[str], pair_metrics: list[str], done: set[str]) -> None:
        todo = [(m, Scope.CHECKPOINT, None) for m in ckpt_metrics
                if self.unit_id(ref.model_id, ref.step, m, Scope.CHECKPOINT) not in done]
        if prev is not None:
            todo += [(m, Scope.PAIR, prev.step) for m in pair_metrics
                     if self.unit_id(ref.model_id, ref.step, m, Scope.PAIR, prev.step) not in done]
        self.summary.units_skipped += (len(ckpt_metrics) + (len(pair_metrics) if prev else 0)) - len(todo)
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
            guard_fields(ckpt)
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
            records = self._records("model_id", model_id)
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
            records = self._records("family", self.family.name)
            ctx = SuiteContext(**self._ctx_common(metric), family=self.family.name, refs=refs, records=records)
            self._run_unit(writer, metric, Scope.SUITE, ctx, unit_id=uid, ref=None, model_id=suite_id,
                           refs_by_size=refs_by_size)

    def _write_manifest(self, started: float, finished: float | None = None) -> None:
        manifest = {
            "run_id": self.run_id,
            "job": self.spec.job,
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "finished_at": datetime.fromtimestamp(finished, timezone.utc).isoformat() if finished else None,
            "config": self.spec.config,
            "family": {"name": self.family.name, **_safe_describe(self.family)},
            "plugins": {
                "model": vars(model_registry().info(self.spec.model_name)),
                "metrics": {n: vars(metric_registry().info(n)) for n in self.metrics},
            },
            "provenance": self.provenance,
            "versions": package_versions(),
            "host": host_facts(),
            "summary": {k: v for k, v in vars(self.summary).items() if k != "run_dir"} if finished else None,
        }
        path = self.spec.run_dir / "run.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, path)


class NonFiniteFieldError(HarnessError):
    """A tensor field holds NaN or Inf: the checkpoint (or the family's field code) is broken."""


def guard_fields(ckpt: Checkpoint) -> Checkpoint:
    """Make ``ckpt.field`` raise `NonFiniteFieldError` on the first tensor with NaN or Inf.

    Generic over families: the check wraps whatever generator the family returns, one tensor
    at a time (no extra copies; one reduction pass per tensor), so a metric never turns a
    corrupt checkpoint into plausible-looking numbers. The runner turns the error into an
    ``error`` record naming the field kind, the tensor and the counts.
    """
    inner = ckpt.field

    def field(kind: str, modules: Any = None) -> Iterator[tuple[str, Any]]:
        for name, tensor in inner(kind, modules):
            _check_finite(ckpt.ref, kind, name, tensor)
            yield name, tensor

    ckpt.field = field  # type: ignore[method-assign]
    return ckpt


def _check_finite(ref: CheckpointRef, kind: str, name: str, tensor: Any) -> None:
    import torch  # NOTE: lazy, `import harness` stays torch-free

    if not torch.is_tensor(tensor):
        import numpy as np

        tensor = torch.from_numpy(np.asarray(tensor))
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return
    if bool(torch.isfinite(tensor).all()):
        return
    n_nan = int(torch.isnan(tensor).sum())
    n_inf = int(torch.isinf(tensor).sum())
    raise NonFiniteFieldError(
        f"field '{kind}' tensor '{name}' of {ref.model_id} {ref.label} has {n_nan} NaN and {n_inf} Inf "
        f"of {tensor.numel()} values"
    )


def _safe_describe(family: ModelFamily) -> dict[str, Any]:
    try:
        return dict(family.describe() or {})
    except Exception as exc:  # noqa: BLE001
        return {"describe_error": str(exc)}


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if not isinstance(exc, HarnessError) else text
