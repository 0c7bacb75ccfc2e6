"""Scores from outside the run joined to its checkpoints as performance records.

Two sources, one path:

* a family's *published* scores (`ModelFamily.scores`), e.g. the lm-eval results EleutherAI
  published for the Pythia suite: records with metric ``published``;
* a *score file* the user names (``scores=path.csv``): CSV or JSON lines with columns
  ``model`` (or ``size``), ``step``, ``task``, ``metric``, ``value`` and optionally ``stderr``
  and ``higher_is_better``; a Weights & Biases CSV export (``Step``, ``<run> - <key>`` columns)
  is read too. Records with metric ``scores``.

Either way the numbers become ordinary checkpoint-scope records whose ``performance`` column is
set, so tables relate observables to them; their metric name says where they came from, so a
published number is never confused with a score computed in the run::

    >>> table = read_score_file("evals.csv")                 # a ScoreTable, label "scores"
    >>> matched, report = match(table, refs, offered)         # rows joined to checkpoint refs
    >>> report.line()
    'scores: 54 rows matched, 0 outside the selection, 0 unmatched'

The core names no family and no metric here: a family hands a `ScoreTable` over, the runner
writes what `match` returns with `score_rows`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import PERFORMANCE_KINDS, ConfigError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from harness.api import CheckpointRef

logger = logging.getLogger(__name__)

#: the columns of a score table after reading (``model_id`` or ``size`` may be empty)
COLUMNS = ("model_id", "size", "step", "task", "measure", "value", "stderr", "higher_is_better", "performance")
_WANDB = re.compile(r"^(?P<run>.+?) - (?P<key>.+)$")


@dataclass
class ScoreTable:
    """Scores keyed by (model_id or size, step, task, measure) and where they come from.

    ``label`` becomes the records' metric (``published``, ``scores``); ``fingerprint`` goes
    into their config hash (a changed file is a new result, never a silent overwrite);
    ``source`` is a human-readable origin kept in every record's ``extra``.
    """

    label: str
    frame: pd.DataFrame
    source: str
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MatchReport:
    """What a join did: matched rows, rows of offered-but-unselected checkpoints, unmatched rows."""

    label: str
    matched: int = 0
    outside_selection: int = 0
    unmatched: int = 0
    examples: list[str] = field(default_factory=list)  # the first unmatched rows, for the message

    def line(self) -> str:
        """One summary line, e.g. ``published: 216 rows matched, 0 outside the selection, 0 unmatched``."""
        return (f"{self.label}: {self.matched} rows matched, {self.outside_selection} outside the selection, "
                f"{self.unmatched} unmatched")


# ---- reading a score file ----------------------------------------------------------------


def read_score_file(path: str | Path, *, label: str = "scores", performance: str = "score") -> ScoreTable:
    """Read a CSV/TSV or JSON-lines score file (or a W&B CSV export) into a `ScoreTable`.

    Raises `ConfigError` naming the file and the missing columns when it cannot be used.
    """
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        raise ParameterError("scores", str(path), "a CSV or JSONL score file (no such file)")
    if performance not in PERFORMANCE_KINDS:
        raise ParameterError("scores_performance", performance, "one of " + ", ".join(PERFORMANCE_KINDS))
    name = path.name.lower()
    try:
        if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
            raw = pd.read_json(path, lines=True)
        else:
            raw = pd.read_csv(path, sep="\t" if name.endswith((".tsv", ".tsv.gz")) else ",")
    except Exception as exc:  # noqa: BLE001 (any parse failure is a bad file)
        raise ConfigError(f"scores file {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    frame = tidy_scores(raw, where=str(path), performance=performance)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return ScoreTable(label, frame, source=str(path), fingerprint=sha[:16], extra={"file_sha256": sha})


def tidy_scores(raw: pd.DataFrame, *, where: str, performance: str = "score") -> pd.DataFrame:
    """Normalise a raw score frame to `COLUMNS` (tidy or W&B-export layout)."""
    import pandas as pd

    cols = {c.lower(): c for c in raw.columns}
    if "step" in cols and "value" not in cols and any(_WANDB.match(str(c)) for c in raw.columns):
        raw = _from_wandb(raw, cols["step"])
        cols = {c.lower(): c for c in raw.columns}
    need = ["step", "metric", "value"]
    missing = [c for c in need if c not in cols]
    if "model" not in cols and "model_id" not in cols and "size" not in cols:
        missing.insert(0, "model (or size)")
    if missing:
        raise ConfigError(f"scores file {where}: missing column(s) {', '.join(missing)}; have "
                          f"{', '.join(map(str, raw.columns))} (expected model or size, step, task, metric, value"
                          ", optional stderr)")
    model_col = cols.get("model", cols.get("model_id"))
    out = pd.DataFrame({
        "model_id": raw[model_col].astype(str) if model_col else None,
        "size": raw[cols["size"]].astype(str) if "size" in cols else None,
        "step": pd.to_numeric(raw[cols["step"]], errors="coerce"),
        "task": raw[cols["task"]].fillna("").astype(str) if "task" in cols else "",
        "measure": raw[cols["metric"]].astype(str),
        "value": pd.to_numeric(raw[cols["value"]], errors="coerce"),
        "stderr": pd.to_numeric(raw[cols["stderr"]], errors="coerce") if "stderr" in cols else float("nan"),
        "higher_is_better": raw[cols["higher_is_better"]] if "higher_is_better" in cols else None,
        "performance": performance,
    })
    bad = out["step"].isna() | out["value"].isna()
    if bad.all():
        raise ConfigError(f"scores file {where}: no row has a numeric step and value")
    if bad.any():
        logger.warning("scores file %s: %d rows without a numeric step or value dropped", where, int(bad.sum()))
    out = out[~bad].copy()
    out["step"] = out["step"].astype(int)
    if out["higher_is_better"].isna().all():
        out["higher_is_better"] = [_guess_hib(m) for m in out["measure"]]
    return out.reset_index(drop=True)


def _from_wandb(raw: pd.DataFrame, step_col: str) -> pd.DataFrame:
    """A W&B chart export (``Step``, ``<run> - <key>``, ``... __MIN/__MAX``) to tidy rows:
    model = the run name, task/metric from the key (``lambada/acc`` -> task lambada, metric acc)."""
    import pandas as pd

    parts = []
    for col in raw.columns:
        m = _WANDB.match(str(col))
        if not m or str(col).endswith(("__MIN", "__MAX")):
            continue
        key = m["key"]
        task, _, metric = key.rpartition("/")
        parts.append(pd.DataFrame({"model": m["run"], "step": raw[step_col], "task": task, "metric": metric,
                                   "value": raw[col]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["model", "step", "metric", "value"])


def _guess_hib(measure: str) -> bool | None:
    """Direction from the measure's name when the file does not say: losses and perplexities
    are lower-is-better, accuracies and F1 higher; anything else unknown (no arrow)."""
    m = measure.lower()
    if any(k in m for k in ("loss", "ppl", "perplexity", "bpb", "bits_per", "error")):
        return False
    if any(k in m for k in ("acc", "f1", "exact_match", "em", "mcc", "bleu", "rouge")):
        return True
    return None


# ---- matching to checkpoints ---------------------------------------------------------------


def match(table: ScoreTable, refs: Sequence[CheckpointRef], offered: Sequence[CheckpointRef] | None = None
          ) -> tuple[list[tuple[CheckpointRef, dict[str, Any]]], MatchReport]:
    """Join score rows to the selected ``refs`` by (model_id or size, step).

    A row's ``model_id`` matches a ref's model_id or its last path part (``pythia-160m`` matches
    ``EleutherAI/pythia-160m``); a row with only ``size`` matches every run of that size. Rows of
    checkpoints the family offers but the selection left out are counted, not joined; rows that
    match no offered checkpoint are unmatched. Raises `ConfigError` when nothing matches, naming
    the first unmatched rows and what the run has.
    """
    offered = list(offered) if offered is not None else list(refs)
    selected = {(r.model_id, r.step) for r in refs}

    def keys_of(r: CheckpointRef) -> set[str]:
        return {r.model_id, r.model_id.rsplit("/", 1)[-1]}

    by_model: dict[tuple[str, int], list[CheckpointRef]] = {}
    by_size: dict[tuple[str, int], list[CheckpointRef]] = {}
    for r in offered:
        for k in keys_of(r):
            by_model.setdefault((k, r.step), []).append(r)
        by_size.setdefault((str(r.size), r.step), []).append(r)
    report = MatchReport(table.label)
    out: list[tuple[CheckpointRef, dict[str, Any]]] = []
    for row in table.frame.to_dict("records"):
        model = row.get("model_id")
        size = row.get("size")
        step = int(row["step"])
        if _present(model):
            hits = by_model.get((str(model), step), [])
        elif _present(size):
            hits = by_size.get((str(size), step), [])
        else:
            hits = []
        if not hits:
            report.unmatched += 1
            if len(report.examples) < 5:
                who = f"model={model}" if _present(model) else f"size={size}"
                report.examples.append(f"{who} step={step} {row.get('task') or ''}/{row['measure']}")
            continue
        chosen = [h for h in {(h.model_id, h.step): h for h in hits}.values() if (h.model_id, h.step) in selected]
        if not chosen:
            report.outside_selection += 1
            continue
        for h in chosen:
            out.append((h, row))
        report.matched += 1
    if report.unmatched and not report.matched:
        have = sorted({r.model_id for r in offered})[:6]
        steps = sorted({r.step for r in offered})
        raise ConfigError(
            f"{table.label} ({table.source}): no row matches a checkpoint of this run; unmatched rows "
            f"e.g. {'; '.join(report.examples)}. The run has models {', '.join(have)} and steps "
            f"{steps[:6]}{' ...' if len(steps) > 6 else ''}")
    if report.unmatched:
        logger.warning("%s (%s): %d rows match no checkpoint this family offers, e.g. %s", table.label,
                       table.source, report.unmatched, "; ".join(report.examples))
    return out, report


def _present(v: Any) -> bool:
    return v is not None and v == v and str(v) not in ("", "None", "nan")


# ---- records -----------------------------------------------------------------------------------


def score_rows(table: ScoreTable, joined: Sequence[tuple[CheckpointRef, Mapping[str, Any]]], *,
               base: Mapping[str, Any], unit_id_of) -> list[list[dict[str, Any]]]:
    """Records of the joined scores, one unit per checkpoint (list of record lists).

    ``base`` holds the run's provenance columns (run_id, model_config_hash, seed, ...);
    ``unit_id_of(ref)`` gives the unit id of (label, ref) so a resumed run skips them.
    """
    from harness.provenance import config_hash
    from harness.records import normalise

    metric_hash = config_hash({"label": table.label, "source": table.source, "fingerprint": table.fingerprint})
    units: dict[tuple[str, int], list[tuple[CheckpointRef, Mapping[str, Any]]]] = {}
    for ref, row in joined:
        units.setdefault((ref.model_id, ref.step), []).append((ref, row))
    out = []
    for items in units.values():
        ref = items[0][0]
        seen: dict[tuple[str, str], Mapping[str, Any]] = {}
        for _, row in items:  # a file listing one score twice: the last one wins, as in the store
            seen[(str(row.get("task") or ""), str(row["measure"]))] = row
        rows = []
        uid = unit_id_of(ref)
        for (task, measure), row in sorted(seen.items()):
            se = row.get("stderr")
            hib = row.get("higher_is_better")
            rows.append(normalise({
                **base,
                "unit_id": uid,
                "unit_n": len(seen),
                "family": ref.family,
                "model_id": ref.model_id,
                "size": ref.size,
                "n_params": ref.n_params,
                "checkpoint": ref.label,
                "step": ref.step,
                "tokens_seen": ref.tokens_seen,
                "learning_rate": ref.learning_rate,
                "revision": ref.revision,
                "metric": table.label,
                "metric_version": "1",
                "scope": "checkpoint",
                "measure": measure,
                "task": task or None,
                "value": float(row["value"]),
                "stderr": float(se) if se is not None and not (isinstance(se, float) and math.isnan(se)) else None,
                "higher_is_better": None if hib is None or hib != hib else bool(hib),
                "performance": row.get("performance") or "score",
                "status": "ok",
                "metric_config_hash": metric_hash,
                "plugin_dist": None,
                "extra": {"source": table.source, **table.extra, **(row.get("extra") or {})},
            }))
        out.append(rows)
    return out
