"""Conformance suites for plugins: subclass one in your tests and the whole contract is checked.

In the spirit of Hydra's ``LauncherTestSuite``: a plugin author writes a few lines and pytest
runs every check of the contract against the plugin (names agree in the four places,
parameters validate against their declaration, the shipped YAML says the declared defaults,
listed field kinds yield, missing capabilities skip, records are deterministic, a resumed run
skips finished units, importing the plugin stays light)::

    # tests/test_contract.py of an outside package
    from harness.testing import MetricContract, ModelFamilyContract

    class TestNormMetric(MetricContract):
        name = "example_norm"                       # the entry-point name

    class TestMyFamily(ModelFamilyContract):
        name = "my_family"
        params = {"path": "tests/data/run"}          # a small instance to check

A metric is run through the real runner on a tiny in-process model family (``run_model``,
default: a few-step ``toy_softmax``); a family is checked on its first ``max_refs``
checkpoints and by running the generic ``loss`` metric over it. The project's own tests run
both suites over every registered plugin (``tests/test_conformance.py``).

Needs pytest (the ``test`` extra); imported only by tests, never by ``import harness``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness.api import (
    Checkpoint,
    CheckpointContext,
    CheckpointRef,
    FieldUnavailable,
    Metric,
    ModelFamily,
    PairContext,
    ParameterError,
    Scope,
    SuiteContext,
    TrajectoryContext,
    UnknownParameterError,
)
from harness.params import Params, _validate
from harness.registry import registry

__all__ = ["MetricContract", "ModelFamilyContract", "shipped_config", "bad_values"]

#: a model family small enough to run any metric on in a few seconds (CPU)
TINY_TOY: dict[str, Any] = {"temperature": [1e-2], "steps": 20, "n_checkpoints": 3, "batch_size": 32,
                            "eval_batches": 1}
#: modules a plugin must not import when its module is imported (they are imported where used)
HEAVY: tuple[str, ...] = ("matplotlib", "lm_eval", "ray")


def shipped_config(kind: str, name: str) -> tuple[str, dict[str, Any]] | None:
    """``(where, node)`` of the config file ``<group>/<name>.yaml`` that ships for a plugin.

    Searched in ``harness.conf`` and in every package registered under the ``harness.conf``
    entry-point group (how outside packages ship configs). The metric node is unwrapped.
    """
    from omegaconf import OmegaConf

    packages = ["harness.conf", *(ep.value for ep in entry_points(group="harness.conf"))]
    for package in packages:
        try:
            path = resources.files(package) / kind / f"{name}.yaml"
            if not path.is_file():
                continue
            node = OmegaConf.to_container(OmegaConf.create(path.read_text()))
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
        return f"{package}/{kind}/{name}.yaml", node
    return None


def bad_values(params: type[Params]) -> list[tuple[str, Any]]:
    """One value per declared bound or choice that the declaration must refuse."""
    out: list[tuple[str, Any]] = []
    for key, (_, spec) in params.__harness_fields__.items():
        if spec.choices is not None:
            out.append((key, "-not-a-choice-"))
        for bound, delta in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            b = getattr(spec, bound)
            if b is not None:
                out.append((key, b + delta if delta else b))
    return out


class _Contract:
    """What both suites share: the plugin kind, its class, its config and its parameters."""

    kind: ClassVar[str] = ""
    #: the entry-point name of the plugin under test (set by the subclass)
    name: ClassVar[str] = ""

    @pytest.fixture
    def plugin_class(self) -> type:
        """The class the registry returns for ``name``."""
        return registry(self.kind).get(self.name)

    # ---- names agree in four places --------------------------------------------------------
    def test_names_agree_in_four_places(self, plugin_class: type) -> None:
        """entry-point name = registry key = config file stem = the class's ``name``; the
        config's ``_target_`` is the registered class."""
        reg = registry(self.kind)
        assert self.name in reg.names(), f"no entry point {self.name!r} in group harness.{self.kind}s"
        assert plugin_class.name == self.name
        found = shipped_config(self.kind, self.name)
        assert found is not None, f"no config file {self.kind}/{self.name}.yaml ships (harness.conf entry points)"
        where, node = found
        if self.kind == "metric":
            assert list(node) == [self.name], f"{where} must hold one node named {self.name!r}"
            node = node[self.name]
        target = node.get("_target_", "")
        assert target.replace(":", ".") == reg.target(self.name).replace(":", "."), \
            f"{where}: _target_ {target!r} is not the registered {reg.target(self.name)!r}"

    # ---- parameters declared once ------------------------------------------------------------
    def test_parameters_are_declared(self, plugin_class: type) -> None:
        """A nested ``Params`` with a one-line doc per parameter."""
        declared = plugin_class.Params
        assert declared is not Params, f"{self.name} declares no Params (harness.params)"
        for key, (_, spec) in declared.__harness_fields__.items():
            assert spec.doc and "\n" not in spec.doc, f"{self.name}.{key}: needs a one-line doc"

    def test_shipped_config_says_the_declared_defaults(self, plugin_class: type) -> None:
        """Same keys (except ``in_config=False`` ones) and the same validated defaults."""
        found = shipped_config(self.kind, self.name)
        assert found is not None
        where, node = found
        node = dict(node[self.name] if self.kind == "metric" else node)
        node.pop("_target_", None)
        fields = plugin_class.Params.__harness_fields__
        defaults = plugin_class.Params.defaults()
        unknown = set(node) - set(fields)
        assert not unknown, f"{where}: keys not declared in {self.name}'s Params: {sorted(unknown)}"
        for key, value in node.items():
            assert _validate(key, value, *fields[key]) == defaults[key], \
                f"{where}: {key}={value!r}, the declaration says {defaults[key]!r}"
        missing = {k for k, (_, spec) in fields.items() if spec.in_config} - set(node)
        assert not missing, f"{where}: declared parameters missing from the config: {sorted(missing)}"

    def test_bad_values_and_unknown_keys_are_refused(self, plugin_class: type) -> None:
        """Every declared bound and choice refuses a value outside it, naming the key; an
        unknown key is refused with "did you mean"."""
        declared = plugin_class.Params
        for key, value in bad_values(declared):
            with pytest.raises(ParameterError) as err:
                declared.from_config({key: value})
            assert err.value.key == key
        names = declared.names()
        typo = next((n + "s" for n in names if n + "s" not in names), "x_typo")  # a plural slip
        with pytest.raises(UnknownParameterError, match="did you mean" if names else "unknown"):
            declared.from_config({typo: 1})

    # ---- import stays light ------------------------------------------------------------------
    def test_listing_and_import_stay_light(self) -> None:
        """Listing plugins imports none of them; importing this one imports no heavy optional
        library (``HEAVY``) and leaves ``import harness`` torch-free."""
        reg_target = registry(self.kind).target(self.name)
        module = reg_target.partition(":")[0]
        code = (
            "import sys, json\n"
            "import harness\n"
            "assert 'torch' not in sys.modules, 'import harness imported torch'\n"
            f"from harness.registry import registry\nregistry({self.kind!r}).info({self.name!r})\n"
            f"listed = {module!r} in sys.modules\n"
            f"import importlib; importlib.import_module({module!r})\n"
            f"print(json.dumps({{'listed': listed, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert not out["listed"], f"listing the {self.kind}s imported {module}"
        assert not out["heavy"], f"importing {module} imported {out['heavy']}: import them where they are used"


def _run(tmp_path: Path, run: str, model_name: str, model: dict[str, Any], metrics: dict[str, dict[str, Any]],
         data: dict[str, Any] | None = None) -> Any:
    from harness.runner import Runner, RunSpec

    spec = RunSpec(model_name=model_name, model=dict(model), metrics=metrics, data=dict(data or {}),
                   checkpoints={}, run_dir=tmp_path / run, run_root=tmp_path / run, progress="off", report=False,
                   cache_dir=tmp_path / "cache")
    return Runner(spec).run()


def _identity(root: Path) -> list[tuple[Any, ...]]:
    from harness import store

    rows = store.load_rows(root)
    return sorted((r["record_id"], r["status"], None if r["value"] is None else round(float(r["value"]), 9))
                  for r in rows)


class MetricContract(_Contract):
    """The contract of a metric plugin. Set ``name``; optionally ``params`` (the metric's
    config node for the runs), ``run_model``/``run_model_params`` (the family it runs on)."""

    kind = "metric"
    #: parameters of the metric for the runs (default: the declared defaults)
    params: ClassVar[dict[str, Any]] = {}
    #: the model family the runs use, and its parameters
    run_model: ClassVar[str] = "toy_softmax"
    run_model_params: ClassVar[dict[str, Any]] = TINY_TOY

    def _metrics(self, plugin_class: type) -> dict[str, dict[str, Any]]:
        """The metric's config node plus the nodes of the metrics it reads (they run first)."""
        nodes = {r: {} for r in getattr(plugin_class, "reads", ())}
        nodes[self.name] = dict(self.params)
        return nodes

    def test_scopes_are_the_implemented_methods(self, plugin_class: type) -> None:
        """``scopes`` is derived from the ``measure_<scope>`` methods, and there is one."""
        assert plugin_class.scopes, f"{self.name} implements no measure_<scope> method"
        for scope in Scope:
            implemented = getattr(plugin_class, f"measure_{scope.value}") is not getattr(Metric, f"measure_{scope.value}")
            assert (scope in plugin_class.scopes) == implemented, scope

    def test_missing_capabilities_skip(self, plugin_class: type, tmp_path: Path) -> None:
        """A checkpoint that offers nothing, and empty earlier records, give ``skipped``
        measurements or `FieldUnavailable` -- never an error or another exception."""
        metric = plugin_class(**self.params)
        bare = Checkpoint(CheckpointRef("bare", "bare/run", "s", 10))
        prev = CheckpointRef("bare", "bare/run", "s", 5)
        import pandas as pd

        from harness.records import RECORD_COLUMNS

        empty = pd.DataFrame(columns=list(RECORD_COLUMNS))
        common = {"metric_config": dict(self.params), "artifact_root": tmp_path, "seed": 0}
        contexts = {
            Scope.CHECKPOINT: lambda: CheckpointContext(**common, checkpoint=bare),
            Scope.PAIR: lambda: PairContext(**common, previous=prev, checkpoint=bare),
            Scope.TRAJECTORY: lambda: TrajectoryContext(**common, model_id="bare/run", refs=[bare.ref],
                                                        records=empty, history=None),
            Scope.SUITE: lambda: SuiteContext(**common, family="bare", refs=[bare.ref], records=empty),
        }
        for scope in plugin_class.scopes:
            try:
                out = list(metric.measure_at(scope, contexts[scope]()) or [])
            except FieldUnavailable:
                continue
            bad = [m for m in out if m.status != "skipped"]
            assert not bad, f"{scope.value}: a checkpoint without capabilities gave {[(m.measure, m.status) for m in bad]}"

    def test_records_are_deterministic_and_resume_skips_finished_units(self, plugin_class: type,
                                                                       tmp_path: Path) -> None:
        """Two fresh runs give the same records; a third run into the first root runs nothing."""
        nodes = self._metrics(plugin_class)
        first = _run(tmp_path, "a", self.run_model, self.run_model_params, nodes)
        assert first.error == 0, first.errors
        second = _run(tmp_path, "b", self.run_model, self.run_model_params, nodes)
        assert _identity(tmp_path / "a") == _identity(tmp_path / "b")
        again = _run(tmp_path, "a", self.run_model, self.run_model_params, nodes)
        assert again.units_run == 0 and again.units_skipped == first.units_run == second.units_run


class ModelFamilyContract(_Contract):
    """The contract of a model family. Set ``name`` and ``params`` (a small instance: a
    local directory, a tiny build) -- or override the ``family_params`` fixture when the
    instance needs files made at test time; optionally ``data`` and ``max_refs``."""

    kind = "model"
    #: parameters of a small instance of the family (its config node)
    params: ClassVar[dict[str, Any]] = {}
    #: the ``data`` node passed with them
    data: ClassVar[dict[str, Any]] = {}
    #: how many checkpoints (in step order, one run) the field checks load
    max_refs: ClassVar[int] = 2

    @pytest.fixture
    def family_params(self) -> dict[str, Any]:
        """The config node of the instance under test (override for files made at test time)."""
        return dict(self.params)

    @pytest.fixture
    def family(self, plugin_class: type, family_params: dict[str, Any], tmp_path: Path) -> ModelFamily:
        """A prepared instance built from ``family_params``."""
        fam = plugin_class(**family_params, data=dict(self.data), workdir=str(tmp_path / "work"))
        fam.prepare()
        return fam

    def _refs(self, family: ModelFamily) -> list[CheckpointRef]:
        refs = sorted(family.checkpoints(), key=lambda r: (r.model_id, r.step))
        assert refs, f"{self.name} lists no checkpoint"
        first = refs[0].model_id
        return [r for r in refs if r.model_id == first][: self.max_refs]

    def test_checkpoints_are_deterministic(self, family: ModelFamily, plugin_class: type,
                                           family_params: dict[str, Any], tmp_path: Path) -> None:
        """Listing twice, and listing from a second instance, give the same refs."""
        a = sorted(family.checkpoints(), key=lambda r: (r.model_id, r.step))
        assert a == sorted(family.checkpoints(), key=lambda r: (r.model_id, r.step))
        other = plugin_class(**family_params, data=dict(self.data), workdir=str(tmp_path / "work"))
        other.prepare()
        assert a == sorted(other.checkpoints(), key=lambda r: (r.model_id, r.step))
        assert {r.family for r in a} == {self.name}

    def test_listed_field_kinds_yield_and_missing_ones_are_unavailable(self, family: ModelFamily) -> None:
        """Every kind `field_kinds` lists yields (name, tensor) pairs; an unlisted kind raises
        `FieldUnavailable` (so a metric gets a skipped record, whatever the family)."""
        if not family.has_weights:
            pytest.skip(f"{self.name} has no weights (has_weights = False)")
        previous = None
        for ref in self._refs(family):
            ckpt = family.load(ref)
            ckpt.previous = previous  # as the runner does
            try:
                kinds = tuple(ckpt.field_kinds())
                for kind in kinds:
                    items = list(ckpt.field(kind))
                    assert items, f"{ref.label}: field {kind!r} is listed but yields nothing"
                    for tensor_name, tensor in items:
                        assert isinstance(tensor_name, str) and hasattr(tensor, "shape")
                for kind in ("delta", "gradient", "weights", "-no-such-kind-"):
                    if kind not in kinds:
                        with pytest.raises(FieldUnavailable):
                            list(ckpt.field(kind))
            finally:
                ckpt.close()
            previous = ref

    def test_records_are_deterministic_and_resume_skips_finished_units(self, family_params: dict[str, Any],
                                                                       tmp_path: Path) -> None:
        """The generic ``loss`` metric over the family: same records twice; resume runs nothing."""
        nodes: dict[str, dict[str, Any]] = {"loss": {}}
        first = _run(tmp_path, "a", self.name, family_params, nodes, self.data)
        assert first.error == 0, first.errors
        _run(tmp_path, "b", self.name, family_params, nodes, self.data)
        assert _identity(tmp_path / "a") == _identity(tmp_path / "b")
        again = _run(tmp_path, "a", self.name, family_params, nodes, self.data)
        assert again.units_run == 0 and again.units_skipped == first.units_run
