"""Every public definition of harness/ has a docstring (ruff's pydocstyle rules D100-D104, D106)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

#: missing docstrings in public modules, classes, methods, functions, packages, nested classes;
#: magic methods and __init__ are documented by their class
RULES = "D100,D101,D102,D103,D104,D106"


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe:
        return [exe]
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.skip("ruff is not installed (pip install -c constraints.txt -e .[test])")
    return [sys.executable, "-m", "ruff"]


def test_public_definitions_of_harness_have_docstrings():
    res = subprocess.run([*_ruff(), "check", "--select", RULES, "--output-format", "concise", "harness"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, "public definitions without a docstring:\n" + res.stdout[-4000:]


def test_plugin_base_classes_are_documented():
    from harness.api import Checkpoint, Metric, ModelFamily
    from harness.params import Params

    for cls in (Checkpoint, Metric, ModelFamily, Params):
        assert cls.__doc__
        for name, member in vars(cls).items():
            if callable(member) and not name.startswith("_"):
                assert getattr(member, "__doc__", None), f"{cls.__name__}.{name} has no docstring"
