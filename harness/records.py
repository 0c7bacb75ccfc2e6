"""The record schema: one tidy row per family x size x checkpoint x metric x measure (x task, x layer).

Identity columns hash into a deterministic ``record_id``; every record also carries the
``unit_id`` of the piece of work that produced it (one metric at one checkpoint, pair,
trajectory or suite) and ``unit_n``, the number of records that unit wrote. A unit whose
records are all present is finished; a resumed run skips it and recomputes any other.

`measurement_rows` turns a unit's `harness.api.Measurement` list into schema rows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from harness.api import HarnessError
from harness.provenance import package_versions, peak_rss_mb, stable_id

SCHEMA_VERSION = 1

#: identity: these decide record_id (and so what "the same result" means across runs)
IDENTITY_COLUMNS = (
    "family",
    "model_id",
    "step",
    "pair_step",
    "metric",
    "scope",
    "measure",
    "task",
    "layer",
    "metric_config_hash",
    "model_config_hash",
    "seed",
)

RECORD_COLUMNS = (
    "schema_version",
    "record_id",
    "unit_id",
    "unit_n",
    "run_id",
    "job",
    # what was measured
    "family",
    "model_id",
    "size",
    "n_params",
    "checkpoint",
    "step",
    "pair_step",
    "tokens_seen",
    "learning_rate",
    "revision",
    "weights_sha",
    "metric",
    "metric_version",
    "scope",
    "measure",
    "task",
    "layer",
    # the result
    "value",
    "stderr",
    "n",
    "unit",
    "higher_is_better",
    "performance",
    "status",
    "message",
    "warning",
    # provenance
    "seed",
    "data_fingerprint",
    "metric_config_hash",
    "model_config_hash",
    "run_config_hash",
    "harness_version",
    "git_sha",
    "git_dirty",
    "plugin_dist",
    "plugin_version",
    "versions",
    "device",
    "hostname",
    "started_at",
    "wall_time_s",
    "load_time_s",
    "peak_mem_mb",
    "extra",
)

STATUSES = ("ok", "skipped", "error")


def record_id(row: dict[str, Any]) -> str:
    """The deterministic id of a record: a hash of its identity columns."""
    return stable_id(*(row.get(c) for c in IDENTITY_COLUMNS))


def _clean_float(x: Any) -> float | None:
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, arrays and paths JSON-able."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def dumps_extra(extra: Any) -> str | None:
    """A record's ``extra`` as sorted JSON (None when empty)."""
    if extra in (None, {}, []):
        return None
    return json.dumps(extra, sort_keys=True, default=_json_default, allow_nan=True)


def normalise(row: dict[str, Any]) -> dict[str, Any]:
    """Fill every schema column (None where absent), coerce numeric types, set record_id.

    A non-finite value with status ok is kept (NaN is an honest result of some fits) but
    gets a warning so tables can show it.
    """
    out = {c: row.get(c) for c in RECORD_COLUMNS}
    out["schema_version"] = SCHEMA_VERSION
    for c in ("value", "stderr", "learning_rate", "wall_time_s", "load_time_s", "peak_mem_mb"):
        out[c] = _clean_float(out[c])
    for c in ("n", "step", "pair_step", "tokens_seen", "n_params", "unit_n", "seed"):
        if out[c] is not None:
            out[c] = int(out[c])
    if out["status"] not in STATUSES:
        raise ValueError(f"record status must be one of {STATUSES}, got {out['status']!r}")
    if out["status"] == "ok" and out["value"] is not None and not math.isfinite(out["value"]):
        out["warning"] = out["warning"] or "non-finite value"
    for c in ("extra", "versions"):
        if not isinstance(out[c], (str, type(None))):
            out[c] = dumps_extra(out[c])
    out["record_id"] = record_id(out)
    return out


# ---- rows from measurements ---------------------------------------------------------------


@dataclass(frozen=True)
class RowSource:
    """What every record of one metric in one run shares: provenance, plugin and config facts."""

    provenance: Mapping[str, Any]  # run_id, job, seed, config hashes, versions, device, host
    family: str
    metric: str
    metric_version: Any
    metric_config_hash: str
    plugin_dist: str | None = None
    plugin_version: str | None = None
    #: the metric's ``performance_kind(measurement)``: which performance measure a row is, if any
    performance_kind: Callable[[Any], Any] | None = None


def measurement_rows(
    measurements: Sequence[Any],
    source: RowSource,
    *,
    scope: str,
    unit_id: str,
    ref: Any = None,
    refs_by_size: Mapping[str, Any] | None = None,
    pair_step: int | None = None,
    model_id: str | None = None,
    started: float,
    load_time: float | None = None,
    data_fingerprint: str | None = None,
) -> list[dict[str, Any]]:
    """The schema rows of one unit: one per `harness.api.Measurement`, normalised.

    ``ref`` is the checkpoint the unit ran at (the last one for a trajectory); a suite unit
    passes ``refs_by_size`` so each measurement of a size carries that size's checkpoint facts.
    Raises `HarnessError` when two measurements would get the same record id.
    """
    wall = time.time() - started
    started_at = datetime.fromtimestamp(started, timezone.utc).isoformat()
    rows = []
    for meas in measurements:
        base = ref
        if refs_by_size and meas.size in refs_by_size:
            base = refs_by_size[meas.size]
        meta = (base.meta or {}) if base is not None else {}
        own_step = meas.step is None  # the measurement is about the checkpoint itself
        row = {
            **source.provenance,
            "unit_id": unit_id,
            "unit_n": len(measurements),
            "family": source.family,
            "model_id": base.model_id if base else model_id,
            "size": meas.size or (base.size if base else None),
            "n_params": base.n_params if base else None,
            "checkpoint": base.label if base and own_step else (f"step{meas.step}" if not own_step else None),
            "step": meas.step if not own_step else (base.step if base else None),
            "pair_step": pair_step,
            "tokens_seen": base.tokens_seen if base and own_step else None,
            "learning_rate": base.learning_rate if base and own_step else None,
            "revision": base.revision if base else None,
            "weights_sha": meta.get("weights_sha") if base else None,
            "metric": source.metric,
            "metric_version": source.metric_version,
            "scope": scope,
            "measure": meas.measure,
            "task": meas.task,
            "layer": meas.layer,
            "value": meas.value,
            "stderr": meas.stderr,
            "n": meas.n,
            "unit": meas.unit,
            "higher_is_better": meas.higher_is_better,
            "performance": (source.performance_kind(meas) if source.performance_kind and meas.status == "ok"
                            else None),
            "status": meas.status,
            "message": meas.message,
            "warning": meas.warning or (meta.get("warning") if base else None),
            "data_fingerprint": data_fingerprint,
            "metric_config_hash": source.metric_config_hash,
            "plugin_dist": source.plugin_dist,
            "plugin_version": source.plugin_version,
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
            f"metric '{source.metric}' produced measurements with the same identity {dup[:3]}: "
            "they must differ in measure, task, layer, step or size"
        )
    return rows


# ---- which records a trajectory or suite unit may read ------------------------------------


def one_configuration(rows: Sequence[Mapping[str, Any]], *, model_config_hash: str,
                      metric_config_hashes: Mapping[str, str], seed: Any) -> tuple[list[Mapping[str, Any]], int]:
    """The rows a unit of this configuration may read, and how many it must ignore.

    Rows are grouped by (model_id, metric). A group written under one configuration (model
    config hash, metric config hash, seed) is read as it is, even when that configuration is not
    this job's (a two-stage sweep: one job per size, then one job over all sizes). A group that
    mixes configurations (a ``run_name`` reused with other settings) is never averaged: the
    rows of this job's own configuration are kept and the others ignored; when none of them is
    this job's, `MixedConfigurationError` says which model and metric are mixed.
    """
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("model_id"), r.get("metric")), []).append(r)
    kept: list[Mapping[str, Any]] = []
    ignored = 0
    for (model_id, metric), group in groups.items():
        configs = {(r.get("model_config_hash"), r.get("metric_config_hash"), r.get("seed")) for r in group}
        if len(configs) == 1:
            kept.extend(group)
            continue
        want_metric = metric_config_hashes.get(metric)
        own = [r for r in group if r.get("model_config_hash") == model_config_hash and r.get("seed") == seed
               and (want_metric is None or r.get("metric_config_hash") == want_metric)]
        own_configs = {(r.get("model_config_hash"), r.get("metric_config_hash")) for r in own}
        if not own or len(own_configs) > 1:
            raise MixedConfigurationError(
                f"the records of {model_id} / {metric} under this run root come from {len(configs)} "
                f"configurations (model config {', '.join(sorted(str(c[0]) for c in configs))}); refusing to "
                "mix them. Was the run_name reused with other settings? Use a new run_name."
            )
        kept.extend(own)
        ignored += len(group) - len(own)
    return kept, ignored


class MixedConfigurationError(HarnessError):
    """Records of one model and metric from several configurations: not averaged, refused."""
