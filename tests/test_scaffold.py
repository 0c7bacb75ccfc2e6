"""`harness new metric|model NAME` writes a plugin package whose own tests pass as generated."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.api import ConfigError
from harness.scaffold import new_plugin


def test_scaffolded_packages_install_and_pass_their_tests(tmp_path):
    """Both kinds: the CLI writes them, pip installs them (non-editable, into a target dir),
    and pytest runs their conformance suite and their independent-truth test: all pass."""
    for kind, name in (("metric", "weight_norm"), ("model", "linreg")):
        res = subprocess.run([sys.executable, "-m", "harness.cli", "new", kind, name, "--dir", str(tmp_path)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
    metric_pkg, model_pkg = tmp_path / "harness-weight-norm", tmp_path / "harness-linreg"
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(metric_pkg), str(model_pkg)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(metric_pkg / "tests"), str(model_pkg / "tests")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "18 passed" in res.stdout and "failed" not in res.stdout
    # the generated metric runs through python -m harness like any plugin
    res = subprocess.run([sys.executable, "-m", "harness", "model.steps=20", "model.n_checkpoints=2",
                          "model.batch_size=32", "model.eval_batches=1", "model.temperature=[1e-2]",
                          "metric=weight_norm", f"results_dir={tmp_path / 'runs'}", "run_name=r", "report=false",
                          "print_config=false"], env={**env, "CI": "true"}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and " 0 error records" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]


def test_scaffold_refuses_bad_names_and_existing_dirs(tmp_path):
    with pytest.raises(ConfigError, match="not a plugin name"):
        new_plugin("metric", "Bad-Name", tmp_path)
    with pytest.raises(ConfigError, match="kind must be"):
        new_plugin("dataset", "x", tmp_path)
    new_plugin("metric", "dup", tmp_path)
    with pytest.raises(ConfigError, match="exists"):
        new_plugin("metric", "dup", tmp_path)
