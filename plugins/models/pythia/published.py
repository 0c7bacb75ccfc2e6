"""The lm-eval results EleutherAI published for the Pythia v1 suite, shipped with the plugin.

``data/pythia_v1_evals.csv.gz`` (see ``data/README.md``: the ``evals/pythia-v1`` JSON files of
github.com/EleutherAI/pythia at commit a19eecb, Apache-2.0, numbers unchanged): one row per
model x shots x step x task x metric. Two uses:

* joined to Hub (or mirrored) checkpoints of the *standard* (non-deduplicated) models whose
  (size, step) has published numbers, as performance records with metric ``published``;
* ``source=published``: the published steps served as weightless checkpoints, so reports,
  relation tables and forecasts run on real Pythia data offline.

    >>> frame = zero_shot()                        # tidy rows, shots == 0
    >>> series_model("1b")                         # the 1b series is published as bf16 only
    ('pythia-1b-bf16', 'bf16')
    >>> sorted(published_steps("160m"))[-1]
    143000
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from harness.api import CheckpointRef
    from harness.scores import ScoreTable

DATA = Path(__file__).with_name("data") / "pythia_v1_evals.csv.gz"
SOURCE = "EleutherAI/pythia evals/pythia-v1 (commit a19eecb, Apache-2.0)"
#: sizes with a zero-shot series over training (1b only as the bf16 re-run)
SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
#: tasks joined by default: the suite's headline zero-shot tasks (MMLU's 57 subjects and the
#: crows_pairs bias probes are left out unless asked for: they would swamp the tables)
DEFAULT_TASKS = ("lambada_openai", "piqa", "winogrande", "wsc", "arc_easy", "arc_challenge", "sciq", "logiqa")
DEFAULT_PRIMARY = "lambada_openai/acc"
_LOWER_IS_BETTER = ("ppl", "likelihood_difference", "pct_stereotype")


@functools.lru_cache(maxsize=1)
def _all() -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(DATA, dtype={"size": str, "model": str, "variant": str, "task": str, "metric": str})


@functools.lru_cache(maxsize=1)
def zero_shot() -> pd.DataFrame:
    """Every zero-shot row (8 sizes x 27 steps x tasks)."""
    f = _all()
    return f[f["shots"] == 0].reset_index(drop=True)


def series_model(size: str) -> tuple[str, str]:
    """(model name in the table, variant) of the zero-shot series of ``size``."""
    return (f"pythia-{size}-bf16", "bf16") if size == "1b" else (f"pythia-{size}", "standard")


def published_steps(size: str) -> list[int]:
    """Steps with published zero-shot numbers for ``size`` (empty for sizes without a series)."""
    f = zero_shot()
    return sorted(int(s) for s in f.loc[f["model"] == series_model(size)[0], "step"].unique())


def standard_model(model_id: str) -> str | None:
    """The size of a standard (non-deduplicated, not bf16) ``EleutherAI/pythia-<size>`` model id
    with a published series, else None: only those checkpoints ARE the published models."""
    name = model_id.rsplit("/", 1)[-1]
    for size in SIZES:
        if name == f"pythia-{size}" and series_model(size)[1] == "standard":
            return size
    return None


def select_tasks(frame: pd.DataFrame, tasks: Sequence[str] | str | None) -> pd.DataFrame:
    """Rows of the chosen tasks (``all`` or None = every task; globs allowed)."""
    import fnmatch

    if tasks is None or tasks == "all":
        return frame
    pats = [tasks] if isinstance(tasks, str) else list(tasks)
    keep = frame["task"].map(lambda t: any(fnmatch.fnmatchcase(t, p) for p in pats))
    return frame[keep]


def score_table(refs: Sequence[CheckpointRef], *, tasks: Sequence[str] | str | None = DEFAULT_TASKS,
                primary: str | None = DEFAULT_PRIMARY, series_of: Mapping[str, str] | None = None) -> ScoreTable | None:
    """The published numbers of these checkpoints as a `ScoreTable` (label ``published``).

    ``series_of`` maps a ref's model_id to the table's model name; by default only standard
    ``EleutherAI/pythia-<size>`` ids get numbers (a deduped, bf16 or locally built model is a
    different model and gets none). Returns None when no ref has published numbers.
    """
    import pandas as pd

    from harness.scores import ScoreTable

    f = select_tasks(zero_shot(), tasks)
    wanted: dict[str, str] = {}
    for r in refs:
        name = (series_of or {}).get(r.model_id)
        if name is None:
            size = standard_model(r.model_id)
            name = series_model(size)[0] if size else None
        if name is not None:
            wanted[r.model_id] = name
    if not wanted:
        return None
    parts = []
    for model_id, name in wanted.items():
        g = f[f["model"] == name]
        if g.empty:
            continue
        parts.append(pd.DataFrame({
            "model_id": model_id, "size": g["size"].to_numpy(), "step": g["step"].to_numpy(),
            "task": g["task"].to_numpy(), "measure": g["metric"].to_numpy(), "value": g["value"].to_numpy(),
            "stderr": g["stderr"].to_numpy(),
            "higher_is_better": [m not in _LOWER_IS_BETTER for m in g["metric"]],
            "performance": ["primary" if f"{t}/{m}" == primary else "score" for t, m in zip(g["task"], g["metric"])],
        }))
    if not parts:
        return None
    frame = pd.concat(parts, ignore_index=True)
    frame["extra"] = [{"variant": series_model(s)[1], "shots": 0} for s in frame["size"]]
    fingerprint = f"{DATA.stat().st_size}:{tasks if isinstance(tasks, str) else ','.join(tasks or ['all'])}:{primary}"
    return ScoreTable("published", frame, source=SOURCE, fingerprint=fingerprint)


def history(model_name: str, tasks: Sequence[str] | str | None = DEFAULT_TASKS) -> pd.DataFrame:
    """The published series of one model as a wide log: ``step`` and one column per
    ``<task>/<metric>`` (e.g. ``lambada_openai/ppl``), for trajectory metrics' curve selector."""
    f = select_tasks(zero_shot(), tasks)
    g = f[f["model"] == model_name]
    wide = g.pivot_table(index="step", columns=["task", "metric"], values="value", aggfunc="last")
    wide.columns = [f"{t}/{m}" for t, m in wide.columns]
    return wide.reset_index().sort_values("step").reset_index(drop=True)


def describe() -> dict[str, Any]:
    """Provenance of the shipped table."""
    return {"file": DATA.name, "bytes": DATA.stat().st_size, "source": SOURCE}
