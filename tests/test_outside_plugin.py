"""An outside plugin package registers exactly as first-party ones do, and installs don't need the repo."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_TOY, run_harness
from harness import store

FIXTURE = ROOT / "tests" / "fixtures" / "outside_plugin"


def test_outside_metric_runs_through_python_m_harness(tmp_path):
    """Entry points + a config shipped in the outside package (via the harness.conf group)."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURE, site, ignore=shutil.ignore_patterns("pyproject.toml", "__pycache__"))
    res = run_harness(*TINY_TOY, "metric=example_norm", "model.temperature=1e-2", f"results_dir={tmp_path}",
                      "run_name=op", env={"PYTHONPATH": str(site)})
    assert res.returncode == 0, res.stderr[-3000:]
    frame = store.load_results(tmp_path / "op")
    assert set(frame["metric"]) == {"example_norm"} and (frame["status"] == "ok").all()
    assert frame["plugin_dist"].iloc[0] == "harness-example-metric"
    # independent truth: the norms equal those of the family's own checkpoints
    from harness_plugins.models.toy_softmax import ToySoftmaxFamily

    fam = ToySoftmaxFamily(temperature=1e-2, steps=60, n_checkpoints=6, batch_size=128, eval_batches=1)
    expected = {r.step: float(torch.linalg.norm(fam.load(r).model.weight.detach())) for r in fam.checkpoints()}
    got = dict(zip(frame["step"], frame["value"]))
    assert got.keys() == expected.keys()
    assert all(abs(got[s] - expected[s]) <= 1e-5 * (1 + expected[s]) for s in got)
    # and without the package on the path, the name is unknown with a clear message
    res = run_harness("metric=example_norm", f"results_dir={tmp_path}")
    assert res.returncode == 2 and "Unknown metric 'example_norm'" in res.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git for a clean copy")
def test_non_editable_install_finds_conf(tmp_path):
    """`pip install .` (not editable) into a target dir: configs compose from any cwd."""
    target = tmp_path / "target"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                          "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (target / "harness" / "conf" / "config.yaml").exists()
    assert (target / "harness" / "conf" / "model" / "toy_softmax.yaml").exists()
    assert (target / "harness_plugins" / "models" / "toy_softmax" / "train.py").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import harness, harness_plugins, sys; "
        f"assert harness.__file__.startswith({str(target)!r}), harness.__file__; "
        "from hydra import compose, initialize_config_module; "
        "initialize_config_module('harness.conf', version_base='1.3'); "
        "cfg = compose('config', overrides=['metric=[loss,time_scaling]']); "
        "assert cfg.model._target_.endswith('ToySoftmaxFamily'); assert set(cfg.metric) == {'loss', 'time_scaling'}; "
        "print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_outside_package_passes_the_conformance_suite(tmp_path):
    """The fixture's tests/test_contract.py subclasses harness.testing.MetricContract: run it the
    way the package's author would, with the package (and its entry points) on the path."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURE, site, ignore=shutil.ignore_patterns("pyproject.toml", "__pycache__"))
    import os

    env = {**os.environ, "PYTHONPATH": str(site)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(site / "tests")],
                         cwd=site, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "passed" in res.stdout and "failed" not in res.stdout
