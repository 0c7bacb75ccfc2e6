"""The plugin contract as code: typed scopes, parameters declared once, FieldUnavailable -> skipped,
and record ids that stay stable for results roots written before the contract changed."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, run_harness
from harness.api import (
    CheckpointContext,
    FieldUnavailable,
    HarnessError,
    Measurement,
    Metric,
    ModelFamily,
    ParameterError,
    Scope,
    UnknownParameterError,
)
from harness.params import Params, _validate, param, parameter_table
from harness.registry import metrics, models

PLUGINS = [("model", n) for n in models().names()] + [("metric", n) for n in metrics().names()]


def _shipped_node(kind: str, name: str) -> dict:
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / kind / f"{name}.yaml"))
    if kind == "metric":
        assert list(node) == [name], "a metric config holds one node named like the file"
        node = node[name]
    node.pop("_target_", None)
    return node


# ---- parameters declared once --------------------------------------------------------------


@pytest.mark.parametrize("kind,name", PLUGINS)
def test_shipped_yaml_says_exactly_the_declared_defaults(kind, name):
    """The YAML is checked against the declaration: same keys, same (validated) defaults."""
    cls = (models() if kind == "model" else metrics()).get(name)
    assert cls.Params is not Params, f"{name} declares no Params"
    node = _shipped_node(kind, name)
    fields = cls.Params.__harness_fields__
    defaults = cls.Params.defaults()
    assert set(node) <= set(fields), f"{name}: YAML keys not declared: {set(node) - set(fields)}"
    for key, value in node.items():
        assert _validate(key, value, *fields[key]) == defaults[key], f"{name}.{key}: YAML {value!r} != {defaults[key]!r}"
    in_config = {k for k, (_, spec) in fields.items() if spec.in_config}
    assert in_config == set(node), f"{name}: declared but not in the YAML: {in_config - set(node)}"
    for key, (_, spec) in fields.items():
        assert spec.doc and "\n" not in spec.doc, f"{name}.{key} needs a one-line doc"
    # and the config instantiates the plugin with exactly its defaults
    kw = {"data": {}, "workdir": None} if kind == "model" else {}
    if kind == "model" and name in ("local_run", "loss_log"):
        return  # required paths: covered by their own tests
    plugin = cls(**node, **kw)
    assert plugin.params == defaults


@pytest.mark.parametrize("kind,name", PLUGINS)
def test_unknown_keys_get_did_you_mean(kind, name):
    cls = (models() if kind == "model" else metrics()).get(name)
    first = cls.Params.names()[0]
    with pytest.raises(UnknownParameterError) as err:
        cls.Params.from_config({first + "x": 1}, owner=f"{kind} '{name}'")
    assert err.value.key == first + "x" and f"did you mean: {first}?" in str(err.value)


def test_runner_prefixes_the_config_group():
    from harness.runner import build_metrics

    with pytest.raises(ParameterError) as err:
        build_metrics({"loss": {"splt": "val"}}, trusted=())
    assert "metric.loss.splt" in str(err.value) and "did you mean: metric.loss.split?" in str(err.value)
    with pytest.raises(ParameterError, match=r"metric.loss.max_batches=0: allowed null or an integer >= 1"):
        build_metrics({"loss": {"max_batches": 0}}, trusted=())


class _Demo(Params):
    n: int = param(3, "a count", ge=1)
    x: float | None = param(None, "a rate", gt=0, lt=1)
    on: bool = param(True, "a switch")
    kinds: list[str] = param(["a"], "names", item_choices=("a", "b"), min_len=1)
    mode: str = param("fast", "a mode", choices=("fast", "slow"))


def test_params_coerce_by_annotation_and_check_ranges():
    p = _Demo(n=4.0, x=0.5, kinds="b")
    assert (p.n, type(p.n), p.x, p.kinds) == (4, int, 0.5, ["b"])  # a single value is a one-item list
    for kw, key in [({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"n": True}, "n"), ({"x": 1.0}, "x"), ({"on": 1}, "on"),
                    ({"kinds": []}, "kinds"), ({"kinds": ["c"]}, "kinds"), ({"mode": "slo"}, "mode"),
                    ({"x": float("nan")}, "x")]:
        with pytest.raises(ParameterError) as err:
            _Demo(**kw)
        assert err.value.key == key, kw
    assert _Demo.defaults() == {"n": 3, "x": None, "on": True, "kinds": ["a"], "mode": "fast"}
    # mutable defaults are never shared between instances
    assert _Demo().kinds is not _Demo().kinds


def test_parameter_table_lists_default_allowed_and_doc():
    table = parameter_table(_Demo)
    assert "| `x` | `null` | null or a number > 0 and < 1 | a rate |" in table
    assert "| `mode` | `fast` | one of fast, slow | a mode |" in table


def test_a_parameter_may_not_hide_an_attribute():
    with pytest.raises(TypeError, match="would hide"):
        class Bad(Metric):  # noqa: F841
            name = "bad"

            class Params(Params):
                measure_at: int = param(1, "clashes with the method")

            def measure_checkpoint(self, ctx):
                return []


# ---- typed scopes ------------------------------------------------------------------------------


def test_scopes_are_derived_from_the_methods_a_metric_implements():
    class PairOnly(Metric):
        name = "pair_only"

        def measure_pair(self, ctx):
            yield Measurement("x", 1.0)

    assert PairOnly.scopes == (Scope.PAIR,)
    with pytest.raises(HarnessError, match="has no checkpoint scope"):
        PairOnly().measure_at(Scope.CHECKPOINT, None)
    assert [m.value for m in PairOnly().measure_at(Scope.PAIR, None)] == [1.0]
    expected = {"loss": {"checkpoint"}, "lm_eval": {"checkpoint"}, "interference": {"checkpoint", "pair"},
                "subspace": {"checkpoint", "pair"}, "transport": {"checkpoint", "suite"},
                "deceleration": {"trajectory"}, "time_scaling": {"trajectory"}}
    for name, scopes in expected.items():
        assert {s.value for s in metrics().get(name).scopes} == scopes, name


def test_the_old_measure_contract_still_runs_with_a_warning():
    with pytest.warns(DeprecationWarning, match="old metric contract"):
        class Old(Metric):
            name = "old"
            scopes = (Scope.TRAJECTORY,)

            def measure(self, ctx):
                yield Measurement("y", 2.0)

    assert Old.scopes == (Scope.TRAJECTORY,)
    assert [m.value for m in Old().measure_at(Scope.TRAJECTORY, None)] == [2.0]


def test_no_isinstance_on_contexts_in_the_code():
    pattern = re.compile(r"isinstance\([^)]*(Checkpoint|Pair|Trajectory|Suite)Context")
    offenders = [str(p.relative_to(ROOT)) for p in [*ROOT.joinpath("harness").rglob("*.py"),
                                                     *ROOT.joinpath("plugins").rglob("*.py")]
                 if pattern.search(p.read_text())]
    assert not offenders


# ---- FieldUnavailable: a missing capability is a skipped record, whatever the family ----------------


class DeltaNorm(Metric):
    """Norm of the delta field: unavailable at the first selected checkpoint of a run."""

    name = "delta_norm_contract"

    def measure_checkpoint(self, ctx: CheckpointContext):
        for tensor_name, t in ctx.checkpoint.field("delta"):
            yield Measurement("norm", float(t.norm()), layer=tensor_name)


def test_field_unavailable_is_a_skipped_record_with_its_reason(tmp_path):

    metrics().register(DeltaNorm.name, DeltaNorm)
    try:
        _run_delta_norm(tmp_path)
    finally:
        metrics()._extra.pop(DeltaNorm.name, None)  # registered for this test only


def _run_delta_norm(tmp_path):
    from harness import store
    from harness.runner import Runner, RunSpec

    model = {"steps": 20, "n_checkpoints": 3, "batch_size": 32, "eval_batches": 1, "temperature": 1e-2}
    spec = RunSpec(model_name="toy_softmax", model=model, metrics={DeltaNorm.name: {}}, data={}, checkpoints={},
                   run_dir=tmp_path / "r", run_root=tmp_path / "r", progress="off", report=False,
                   cache_dir=tmp_path / "cache")
    summary = Runner(spec).run()
    frame = store.load_results(tmp_path / "r")
    first = frame[frame["step"] == frame["step"].min()]
    assert summary.error == 0 and list(first["status"]) == ["skipped"]
    assert "is the first selected checkpoint of its run: no delta" in first["message"].iloc[0]
    rest = frame[frame["step"] > frame["step"].min()]
    assert len(rest) and (rest["status"] == "ok").all()


def test_field_kinds_are_honest_on_toy_softmax():
    from harness_plugins.models.toy_softmax import ToySoftmaxFamily

    fam = ToySoftmaxFamily(temperature=1e-2, steps=10, n_checkpoints=3, batch_size=16, eval_batches=1)
    refs = list(fam.checkpoints())
    ckpt = fam.load(refs[0])
    assert "delta" not in ckpt.field_kinds()
    with pytest.raises(FieldUnavailable):
        ckpt.field("delta")
    ckpt.previous = refs[0]
    later = fam.load(refs[1])
    later.previous = refs[0]
    for kind in later.field_kinds():
        assert list(later.field(kind)), kind  # every listed kind yields


def test_family_params_are_attributes():
    class Fam(ModelFamily):
        name = "fam_contract"

        class Params(Params):
            width: int = param(8, "a width", ge=1)

    fam = Fam(width=16, data={"seed": 1})
    assert fam.width == 16 and fam.params == {"width": 16} and fam.data == {"seed": 1}


# ---- results roots written before the contract still resume, with the same ids and numbers ---------

BEFORE = ROOT / "tests" / "fixtures" / "results_before_contract"


def _before_rows() -> list[dict]:
    with gzip.open(BEFORE / "records.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def _overrides(tmp_path: Path) -> list[str]:
    keep = [o for o in OmegaConf.load(BEFORE / "overrides.yaml")
            if not o.startswith(("results_dir=", "run_name=", "cache_dir="))]
    return [*keep, f"results_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}"]


#: metrics whose default procedure changed on purpose since the fixture was written: their
#: configuration hash differs, so their units run again (issue 15: deceleration's default became
#: the robust fit, and its loss_* keys were replaced by the shared ``curve`` selector)
CHANGED_DEFAULTS = {"deceleration"}


def _old_units(metrics: set[str] | None = None) -> int:
    return len({r["unit_id"] for r in _before_rows() if metrics is None or r["metric"] in metrics})


def test_results_root_written_before_the_contract_resumes(tmp_path):
    """Records written by the code before this contract (fixture, 43 units) count as done, except
    those of metrics whose defaults changed on purpose (they run again, under their new config)."""
    old = _before_rows()
    root = tmp_path / "old"
    root.mkdir()
    with open(root / "records-before.jsonl", "w") as f:
        for r in old:
            f.write(json.dumps(r) + "\n")
    res = run_harness(*_overrides(tmp_path), "run_name=old")
    assert res.returncode == 0, res.stderr[-3000:]
    rerun = _old_units(CHANGED_DEFAULTS)
    done = _old_units() - rerun
    assert done == 42 and rerun == 1
    assert f"({rerun} units run, {done} units already done)" in res.stdout + res.stderr
    from harness import store

    fresh = [r for r in store.load_rows(root) if r["unit_id"] not in
             {o["unit_id"] for o in _before_rows()}]
    assert {r["metric"] for r in fresh} == CHANGED_DEFAULTS


@pytest.mark.slow
def test_fresh_run_reproduces_the_ids_and_numbers_of_before(tmp_path):
    """The same config run now gives the same record ids and the same values as before."""
    res = run_harness(*_overrides(tmp_path), "run_name=new")
    assert res.returncode == 0, res.stderr[-3000:]
    from harness import store

    new = {r["record_id"]: r for r in store.load_rows(tmp_path / "new") if r["metric"] not in CHANGED_DEFAULTS}
    old = {r["record_id"]: r for r in _before_rows() if r["metric"] not in CHANGED_DEFAULTS}
    assert set(new) == set(old)
    for rid, r in old.items():
        a, b = r["value"], new[rid]["value"]
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-6, abs=1e-9)), r
        assert r["status"] == new[rid]["status"], r


def test_parameters_doc_is_generated_from_the_declarations():
    from harness.params import parameters_doc

    assert (ROOT / "docs" / "parameters.md").read_text() == parameters_doc(), \
        "regenerate with: python -m harness.params > docs/parameters.md"
