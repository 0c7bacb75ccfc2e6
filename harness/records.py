"""The record schema: one tidy row per family x size x checkpoint x metric x measure (x task, x layer).

Identity columns hash into a deterministic ``record_id``; every record also carries the
``unit_id`` of the piece of work that produced it (one metric at one checkpoint, pair,
trajectory or suite) and ``unit_n``, the number of records that unit wrote. A unit whose
records are all present is finished; a resumed run skips it and recomputes any other.
"""

from __future__ import annotations

import json
import math
from typing import Any

from harness.provenance import stable_id

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
