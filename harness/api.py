"""The plugin API: what a model family and a metric promise each other and the runner.

Flow, in one direction::

    config -> ModelFamily -> CheckpointRef... -> (load once) Checkpoint
           -> Metric.measure_<scope>(context) -> Measurement -> Record -> store -> tables

A family knows how to list and load checkpoints; a metric knows how to turn a context into
measurements. Neither knows the other: a metric only talks to the `Checkpoint` interface
(fields, evaluation batches, per-example loss) and to earlier records and artifacts.

This module is import-light on purpose (no torch): `harness ls` and `import harness` use it.

The contract in four lines:

* a metric implements one ``measure_<scope>`` method per scope it supports; its ``scopes``
  are derived from them, and the runner calls the method of each unit's scope;
* a plugin declares its parameters once, in a nested ``Params`` class (`harness.params`);
* a checkpoint that cannot offer something raises `FieldUnavailable` -> a ``skipped`` record;
  `Checkpoint.field_kinds` lists only kinds that yield;

Example (a metric plugin)::

    class NormMetric(Metric):
        '''Frobenius norm of every weight matrix.'''
        name = "norm"

        class Params(Params):
            power: float = param(2.0, "exponent p of the entrywise p-norm", gt=0)

        def measure_checkpoint(self, ctx: CheckpointContext) -> Iterator[Measurement]:
            for tensor_name, tensor in ctx.checkpoint.field("weights"):
                yield Measurement("norm", float(tensor.norm()), layer=tensor_name)
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.params import Params

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

__all__ = [
    "Checkpoint",
    "CheckpointContext",
    "CheckpointRef",
    "ConfigError",
    "FieldUnavailable",
    "HarnessError",
    "Measurement",
    "Metric",
    "ModelFamily",
    "PERFORMANCE_KINDS",
    "PairContext",
    "ParameterError",
    "Params",
    "Scope",
    "SuiteContext",
    "TrajectoryContext",
]


# ---- errors ---------------------------------------------------------------------------


class HarnessError(Exception):
    """A user-facing error: printed as one clear message, never as a traceback."""


class ConfigError(HarnessError):
    """The configuration cannot be used as given (unknown name, bad combination)."""


class ParameterError(ConfigError):
    """A plugin parameter has a value outside its allowed range.

    Plugins raise it with the bare key; the runner prefixes the config group so the user
    sees e.g. ``model.temperature=-1: must be > 0``.
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: allowed {allowed}")

    def with_prefix(self, prefix: str) -> ParameterError:
        """The same error with the config group in front of the key (``metric.loss.split``)."""
        return ParameterError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.allowed)


class UnknownParameterError(ParameterError):
    """A config key that the plugin does not declare; the message lists close matches."""

    def __init__(self, key: str, value: Any, known: Sequence[str], owner: str = ""):
        import difflib

        self.known, self.owner = list(known), owner
        close = difflib.get_close_matches(key.rpartition(".")[2], self.known, n=3, cutoff=0.6)
        self.key, self.value = key, value
        self.allowed = f"a declared parameter: {', '.join(self.known) or '(none)'}"
        prefix = key.rpartition(".")[0]
        msg = f"unknown parameter '{key}'" + (f" of {owner}" if owner else "")
        if close:
            msg += " (did you mean: " + ", ".join(f"{prefix}.{c}" if prefix else c for c in close) + "?)"
        msg += f"; allowed parameters: {', '.join(self.known) or '(none)'}"
        HarnessError.__init__(self, msg)

    def with_prefix(self, prefix: str) -> ParameterError:
        """The same error with the config group in front of the key."""
        return UnknownParameterError(f"{prefix}.{self.key}" if prefix else self.key, self.value, self.known,
                                     self.owner)


class FieldUnavailable(HarnessError, NotImplementedError):
    """This checkpoint cannot offer what was asked (a field kind, a split, a tokenizer, a model).

    Not a failure: the runner turns it into a ``skipped`` record carrying the message, whatever
    the family. Raise it from `Checkpoint` methods (and metrics) for a capability that is absent;
    raise anything else for input that is broken (an ``error`` record). It is also a
    `NotImplementedError`, so code written against the earlier contract keeps working.
    """


def check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise `ParameterError` unless ``low <= value <= high`` (bounds optional)."""
    lo_op, hi_op = (">=" if low_inclusive else ">"), ("<=" if high_inclusive else "<")
    parts = []
    if low is not None:
        parts.append(f"{lo_op} {low:g}")
    if high is not None:
        parts.append(f"{hi_op} {high:g}")
    allowed = " and ".join(parts) or "a finite number"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(key, value, f"a number {allowed}") from None
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        raise ParameterError(key, value, allowed)


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise `ParameterError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ParameterError(key, value, "one of " + ", ".join(map(str, choices)))


# ---- scopes and checkpoints ------------------------------------------------------------


class Scope(str, enum.Enum):
    """When the runner calls a metric, and with what context."""

    CHECKPOINT = "checkpoint"  # once per loaded checkpoint            -> CheckpointContext
    PAIR = "pair"  # consecutive selected checkpoints of one model     -> PairContext
    TRAJECTORY = "trajectory"  # once per model after all its checkpoints -> TrajectoryContext
    SUITE = "suite"  # once per family: all sizes at aligned steps     -> SuiteContext


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint a family can load: cheap to create, carries identity and schedule facts.

    ``model_id`` identifies one training run (one trajectory); ``size`` groups runs for
    suite-scope metrics; ``step`` orders checkpoints within a run.
    """

    family: str
    model_id: str
    size: str
    step: int
    tokens_seen: int | None = None
    learning_rate: float | None = None
    revision: str | None = None
    n_params: int | None = None
    #: family-specific facts; a family may set ``meta["weights_sha"]`` and ``meta["warning"]``
    #: (e.g. "identical weights to step1000") when loading, and the runner copies both into records
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        """The revision name when the family has one, else ``step<N>``."""
        return self.revision or f"step{self.step}"


class Checkpoint:
    """A loaded checkpoint: the model plus lazily produced tensor fields and evaluation data.

    Families subclass this. Every method has a default that raises `FieldUnavailable` saying
    what is missing, so a metric that needs an unsupported capability produces a ``skipped``
    record. `field_kinds` is a promise: every kind it lists yields for this checkpoint (a kind
    that depends on the previous checkpoint, like ``delta``, is listed only when there is one).

    Field kinds (see design.md "Fields"): ``weights``, ``delta`` (to the previous selected
    checkpoint, streamed tensor by tensor), ``gradient`` (raw gradients, stored or computed on
    a fixed probe batch). A family may offer more kinds (e.g. Pico's ``train_gradients``).
    """

    def __init__(self, ref: CheckpointRef):
        self.ref = ref
        #: the previous *selected* checkpoint of the same model (set by the runner before any
        #: metric runs; None for the first): what the ``delta`` field is taken against
        self.previous: CheckpointRef | None = None

    # -- model and evaluation -----------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The model (a ``torch.nn.Module``) this checkpoint evaluates."""
        raise FieldUnavailable(f"family {self.ref.family!r} exposes no model object")

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (a transformers ``PreTrainedTokenizerFast``) for text-level metrics."""
        raise FieldUnavailable(f"family {self.ref.family!r} has no tokenizer")

    def eval_batches(self, split: str = "val") -> list[Any]:
        """Fixed, seeded evaluation batches (identical for every checkpoint of the run)."""
        raise FieldUnavailable(f"family {self.ref.family!r} has no evaluation data")

    def per_example_loss(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Unreduced loss on ``batch``: shape (B,) for classifiers, (B, S-1) per token for LMs.

        ``model`` defaults to this checkpoint's model; metrics pass a copy they have updated
        (one optimiser step) or a functional wrapper.
        """
        raise FieldUnavailable(f"family {self.ref.family!r} defines no per-example loss")

    def logits(self, batch: Any, model: torch.nn.Module | None = None) -> torch.Tensor:
        """Raw output logits for ``batch`` (last dimension = classes / vocabulary)."""
        raise FieldUnavailable(f"family {self.ref.family!r} exposes no logits")

    @property
    def data_fingerprint(self) -> str | None:
        """Hash of the evaluation data (dataset, split, example ids, length): provenance."""
        return None

    # -- tensor fields ----------------------------------------------------------------
    def field_kinds(self) -> tuple[str, ...]:
        """The field kinds `field` yields for this checkpoint (honest: no kind that would raise)."""
        return ()

    def field(self, kind: str, modules: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(tensor_name, tensor)`` of field ``kind``, one tensor at a time.

        ``modules`` are glob patterns on tensor names; None means the family's default set.
        A kind this checkpoint cannot offer raises `FieldUnavailable`.
        """
        raise FieldUnavailable(f"family {self.ref.family!r} offers no field {kind!r}")

    def performance(self) -> Mapping[str, float]:
        """Evaluation numbers the family stored with this checkpoint, as ``{task: perplexity}``
        (e.g. Pico's ``eval_results``); the ``loss`` metric turns them into records."""
        return {}

    def optimizer_state(self) -> Mapping[str, Any] | None:
        """The optimiser state stored with the checkpoint, when the family has it."""
        return None

    def close(self) -> None:
        """Release memory held by the loaded checkpoint."""


class ModelFamily:
    """A model family: lists checkpoints (sizes x steps) and loads them lazily.

    Subclasses set ``name`` (the entry-point name) and declare their parameters once, in a
    nested ``Params`` class (`harness.params.Params`); the runner passes the Hydra node ``model``
    as keyword arguments, they are validated before any work starts and each is available as
    an attribute (``self.<name>``). Work that needs more than one parameter goes in an
    ``__init__`` that calls ``super().__init__(**kw)`` first.
    """

    name: ClassVar[str] = ""
    #: False for families that only have logs (no weights to load): checkpoint- and pair-scope
    #: metrics then get ``skipped`` records instead of load errors
    has_weights: ClassVar[bool] = True
    #: the parameter declaration; a family that declares none takes no parameters
    Params: ClassVar[type[Params]] = Params

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _check_param_names(cls)

    def __init__(self, *, data: Mapping[str, Any] | None = None, workdir: str | None = None, **params: Any):
        self.data = dict(data or {})
        self.workdir = Path(workdir) if workdir else None
        self.params = _bind_params(self, params, f"model '{self.name}'")

    @property
    def cache_root(self) -> Path | None:
        """The harness cache this family's ``workdir`` lives in (the runner passes
        ``<cache>/families/<name>``): where shared things go, e.g. suites built by
        ``python -m harness.build``, so a suite built there is found and reused by a run."""
        if self.workdir is None:
            return None
        w = self.workdir
        return w.parent.parent if w.parent.name == "families" else w

    def prepare(self) -> None:
        """Do one-time work before checkpoints are listed (build, train, download index)."""

    def checkpoints(self) -> Iterable[CheckpointRef]:
        """Every checkpoint this family can offer, in any order; the runner selects and shards."""
        raise NotImplementedError

    def load(self, ref: CheckpointRef) -> Checkpoint:
        """Load one checkpoint. Raise on broken input: the runner records the error and goes on."""
        raise NotImplementedError

    def scores(self, refs: Sequence[CheckpointRef]) -> Any:
        """Published downstream scores for these checkpoints, as a `harness.scores.ScoreTable`
        (its ``label`` becomes the records' metric, e.g. ``published``), or None. The runner joins
        them as performance records before any metric runs."""
        return None

    def history(self, model_id: str) -> pd.DataFrame | None:
        """The training log of one run (columns: step, loss, and when known learning_rate,
        tokens_seen, plus family-specific columns), or None when there is none."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for provenance (model ids, sources, weights hashes)."""
        return {}


# ---- metrics --------------------------------------------------------------------------

#: kinds of performance measure, in the order the leaderboard prefers them for its default
#: ranking: ``primary`` (the headline score a source marks), ``score`` (a downstream task score),
#: ``loss`` (held-out loss or perplexity)
PERFORMANCE_KINDS = ("primary", "score", "loss")


@dataclass
class Measurement:
    """One number a metric produced, or the reason it could not.

    ``measure`` is a snake_case name (``alpha``, ``acc``, ``D``); ``task`` and ``layer``
    (and for suite/trajectory scopes ``step`` and ``size``) refine the identity: two
    measurements of one unit must differ in one of them. ``extra`` holds small JSON-able
    detail (fit window, inputs) and is NOT part of the identity.
    """

    measure: str
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    unit: str | None = None
    higher_is_better: bool | None = None
    task: str | None = None
    layer: str | None = None
    #: suite/trajectory scopes only: the step (and size) this number is about; by default
    #: a trajectory record sits at the run's last step and a suite record at no step/size
    step: int | None = None
    size: str | None = None
    status: str = "ok"  # ok | skipped | error
    message: str | None = None
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: this number is a *performance measure* (what relation tables relate observables to and
    #: the leaderboard ranks by): one of `PERFORMANCE_KINDS`, or None. Left None, the metric's
    #: ``performance`` declaration decides (see `Metric.performance_kind`)
    performance: str | None = None

    @classmethod
    def skipped(cls, measure: str, reason: str, **kw: Any) -> Measurement:
        """A measurement that could not be made for a reason that is not a failure."""
        return cls(measure, None, status="skipped", message=reason, **kw)

    @classmethod
    def error(cls, measure: str, reason: str, **kw: Any) -> Measurement:
        """A measurement that failed, with the reason."""
        return cls(measure, None, status="error", message=reason, **kw)


@dataclass
class _Context:
    metric_config: Mapping[str, Any]
    artifact_root: Path
    seed: int

    def artifact_dir(self, *parts: str) -> Path:
        """A directory for this metric's cached artifacts (created on demand)."""
        path = self.artifact_root.joinpath(*[str(p).replace("/", "__") for p in parts])
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class CheckpointContext(_Context):
    """One loaded checkpoint (checkpoint scope)."""
    checkpoint: Checkpoint


@dataclass
class PairContext(_Context):
    """Consecutive selected checkpoints of one model. Only ``current`` is loaded: the
    previous one is a reference (its artifacts are on disk, its delta is a field of current)."""

    previous: CheckpointRef
    checkpoint: Checkpoint


@dataclass
class TrajectoryContext(_Context):
    """All earlier records of one model (``records``: a DataFrame in the record schema) and
    the family's training log for it (``history``, may be None)."""

    model_id: str
    refs: list[CheckpointRef]
    records: pd.DataFrame
    history: pd.DataFrame | None


@dataclass
class SuiteContext(_Context):
    """All sizes of one family: the records of the run root and the refs by size."""

    family: str
    refs: list[CheckpointRef]
    records: pd.DataFrame


class Metric:
    """A metric plugin: one ``measure_<scope>`` method per scope it supports.

    Subclasses set ``name`` (the entry-point name), ``version`` (bump when numbers change),
    declare their parameters in a nested ``Params`` class (`harness.params.Params`; each
    validated value is also an attribute, ``self.<name>``) and implement any of
    `measure_checkpoint`, `measure_pair`, `measure_trajectory`, `measure_suite`. The scopes a
    metric runs at are exactly the methods it implements (``scopes`` is derived, never
    declared), and the runner calls the one of each unit's scope with that scope's context.

    A ``measure_*`` method yields `Measurement` objects; raising `FieldUnavailable` makes the
    whole unit one ``skipped`` record with that reason, any other exception an ``error`` record.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: derived from the ``measure_<scope>`` methods a subclass implements
    scopes: ClassVar[tuple[Scope, ...]] = ()
    #: metrics whose records this one reads (trajectory/suite scope); the runner orders by it
    reads: ClassVar[tuple[str, ...]] = ()
    #: which of this metric's measures are performance measures: ``{measure glob: kind}`` with
    #: kind in `PERFORMANCE_KINDS` (e.g. ``{"loss": "loss"}``, ``{"*": "score"}``); carried into
    #: every record's ``performance`` column, so reports never name a metric to find them
    performance: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def performance_kind(cls, measurement: Measurement) -> str | None:
        """The performance kind of one measurement: its own ``performance`` field if set, else
        the first matching glob of the class declaration, else None (an observable)."""
        if measurement.performance is not None:
            return measurement.performance
        import fnmatch

        for pattern, kind in cls.performance.items():
            if fnmatch.fnmatchcase(measurement.measure, pattern):
                return kind
        return None

    #: the parameter declaration; a metric that declares none takes no parameters
    Params: ClassVar[type[Params]] = Params

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        implemented = tuple(s for s in Scope if getattr(cls, f"measure_{s.value}") is not getattr(Metric, f"measure_{s.value}"))
        if implemented:
            cls.scopes = implemented
        elif "measure" in vars(cls) and "scopes" in vars(cls):
            # the contract before typed scopes: one `measure(ctx)` and a declared `scopes`
            warnings.warn(f"{cls.__qualname__}: `measure` + `scopes` is the old metric contract; implement "
                          "measure_checkpoint/measure_pair/measure_trajectory/measure_suite instead",
                          DeprecationWarning, stacklevel=2)
        _check_param_names(cls)

    def __init__(self, **params: Any):
        self.params = _bind_params(self, params, f"metric '{self.name}'")

    # -- one method per scope ----------------------------------------------------------
    def measure_checkpoint(self, ctx: CheckpointContext) -> Iterable[Measurement]:
        """Measure one loaded checkpoint (checkpoint scope)."""
        raise NotImplementedError

    def measure_pair(self, ctx: PairContext) -> Iterable[Measurement]:
        """Measure a checkpoint against the previous selected one of its run (pair scope)."""
        raise NotImplementedError

    def measure_trajectory(self, ctx: TrajectoryContext) -> Iterable[Measurement]:
        """Measure one run from its earlier records and training log (trajectory scope)."""
        raise NotImplementedError

    def measure_suite(self, ctx: SuiteContext) -> Iterable[Measurement]:
        """Measure a family across sizes from the run root's records (suite scope)."""
        raise NotImplementedError

    def measure_at(self, scope: Scope, ctx: Any) -> Iterable[Measurement]:
        """Call the method of ``scope`` (what the runner does for every unit)."""
        if scope not in self.scopes:
            raise ConfigError(f"metric '{self.name}' has no {Scope(scope).value} scope (it has: "
                              f"{', '.join(s.value for s in self.scopes) or 'none'})")
        if getattr(type(self), f"measure_{Scope(scope).value}") is getattr(Metric, f"measure_{Scope(scope).value}"):
            return self.measure(ctx)  # type: ignore[attr-defined]  # the old contract (see __init_subclass__)
        return getattr(self, f"measure_{Scope(scope).value}")(ctx)

    @classmethod
    def plots(cls, records: pd.DataFrame, out_dir: Path) -> list[Path]:
        """Optional: draw this metric's figures from its records; return the files.

        A pure function of records: the report calls it on the class, never on an instance built
        with (default) parameters, so a figure can only show what the records say.
        """
        return []


# ---- binding declared parameters -----------------------------------------------------------


def _check_param_names(cls: type) -> None:
    """A parameter becomes an attribute: it must not hide a method or class attribute."""
    declared = cls.__dict__.get("Params")
    if declared is None or declared is Params:
        return
    if not (isinstance(declared, type) and issubclass(declared, Params)):
        raise TypeError(f"{cls.__qualname__}.Params must subclass harness.params.Params")
    for name in declared.names():
        if name in ("params", "data", "workdir") or any(name in vars(k) for k in cls.__mro__ if k is not object):
            raise TypeError(f"{cls.__qualname__}: parameter {name!r} would hide the attribute of that name")


def _bind_params(obj: Any, values: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Validate ``values`` against the plugin's declaration; set each as an attribute.

    A plugin that declares no ``Params`` keeps the earlier contract: its values are stored
    as given (it validated them itself).
    """
    declared = type(obj).Params
    if declared is Params:
        return dict(values)
    bound = declared.from_config(values, owner=owner)
    for name in declared.names():
        setattr(obj, name, getattr(bound, name))
    obj.p = bound
    return bound.as_dict()
