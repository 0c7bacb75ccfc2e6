"""Safety: weights-only loading, no remote code, allow-listed `_target_`s, offline means offline."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_TOY, run_harness
from harness import store
from harness.api import ConfigError
from harness.runner import build_metrics, check_target

SOURCE_DIRS = [ROOT / "harness", ROOT / "plugins"]


def _python_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in d.rglob("*.py"))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def test_every_torch_load_is_weights_only():
    found, bad = 0, []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree):
            if _name(call.func) == "torch.load":
                found += 1
                kw = {k.arg: k.value for k in call.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert found >= 2  # the scan does see the real calls (learning_dynamics, local_run)
    assert not bad, f"torch.load without weights_only=True at {bad}"


def test_scan_would_catch_an_unsafe_torch_load():
    tree = ast.parse("import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=False)\n")
    unsafe = [c for c in _calls(tree) if _name(c.func) == "torch.load"
              and not any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in c.keywords)]
    assert len(unsafe) == 2


def test_trust_remote_code_is_never_enabled():
    bad = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree):
            for kw in call.keywords:
                if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
        for node in ast.walk(tree):  # dict literals such as {"trust_remote_code": True}
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not (
                            isinstance(v, ast.Constant) and v.value is False):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"trust_remote_code enabled or configurable at {bad}"
    for yaml in (ROOT / "conf").rglob("*.yaml"):
        for line in yaml.read_text().splitlines():
            if line.split("#")[0].strip().startswith("trust_remote_code"):
                assert line.split(":", 1)[1].split("#")[0].strip().lower() in ("false", "null"), f"{yaml}: {line}"


# ---- _target_ allow list --------------------------------------------------------------------


@pytest.mark.parametrize("kind,name,registered", [
    ("model", "toy_softmax", "harness_plugins.models.toy_softmax:ToySoftmaxFamily"),
    ("metric", "loss", "harness_plugins.metrics.loss:LossMetric"),
])
def test_check_target_allows_only_registered_or_trusted(kind, name, registered):
    check_target(kind, name, None, [])
    check_target(kind, name, registered, [])
    check_target(kind, name, registered.replace(":", "."), [])  # Hydra's dotted spelling
    for hostile in ("os.system", "subprocess.Popen", "builtins.eval", "harness_plugins.metrics.lm_eval.LmEvalMetric"):
        with pytest.raises(ConfigError, match=rf"{kind} '{name}': _target_ '{hostile}' is not the registered"):
            check_target(kind, name, hostile, [])
    check_target(kind, name, "my_lab.plugins:Custom", ["my_lab.plugins.Custom"])  # trusted: allowed


def test_hostile_metric_target_is_refused_before_instantiation(monkeypatch):
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(ConfigError, match="not the registered plugin class"):
        build_metrics({"loss": {"_target_": "os.system", "command": "echo pwned"}}, trusted=[])
    assert not called


@pytest.mark.parametrize("override", ["model._target_=os.system", "++metric.loss._target_=builtins.exec",
                                      "metric.loss._target_=subprocess.Popen"])
def test_cli_refuses_foreign_targets(tmp_path, override):
    res = run_harness(*TINY_TOY, f"results_dir={tmp_path}", "run_name=x", "metric=loss", override)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "is not the registered plugin class" in res.stderr and "trusted_targets" in res.stderr
    assert "Traceback" not in res.stderr
    assert not list((tmp_path / "x").glob("records*.jsonl"))  # nothing ran


# ---- offline means no network ---------------------------------------------------------------

OFFLINE_DRIVER = """
import socket, sys
log = open(sys.argv.pop(1), "a")
def refuse(name):
    def f(*a, **k):
        log.write(name + " " + repr(a[:2]) + "\\n"); log.flush()
        raise OSError("network access attempted in an offline test: " + name)
    return f
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
socket.getaddrinfo = refuse("getaddrinfo")
socket.create_connection = refuse("create_connection")
from harness.app import main
main()
"""


def test_hf_hub_offline_never_touches_the_network(tmp_path):
    driver = tmp_path / "offline.py"
    driver.write_text(OFFLINE_DRIVER)
    attempts = tmp_path / "attempts.log"
    env = {**os.environ, "CI": "true", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(driver), str(attempts), "model=pythia", "model.source=hub",
                          "model.size=70m", "checkpoints=list", "checkpoints.steps=[0,1000]", "metric=loss",
                          f"results_dir={tmp_path}", "run_name=hub", "report=false", "print_config=false"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert not attempts.exists() or attempts.read_text() == "", attempts.read_text()
    assert res.returncode in (1, 2), res.stderr[-3000:]
    if res.returncode == 1:  # error records that say why, one per checkpoint unit
        frame = store.load_results(tmp_path / "hub")
        # the published scores of step 0/1000 come from the file the package ships, not the Hub
        published = frame[frame["metric"] == "published"]
        assert (published["status"] == "ok").all()
        frame = frame[frame["metric"] != "published"]
        assert (frame["status"] == "error").all() and len(frame) == 2
        assert frame["message"].str.contains("offline|HF_HUB_OFFLINE|cache", case=False).all(), frame["message"]
    else:  # or the family refuses up front, naming the offline mode
        assert "offline" in res.stderr.lower() and "Traceback" not in res.stderr
