"""Plugin discovery: entry points, lazy loading, did-you-mean, one name in four places."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

import pytest

from harness.api import ConfigError, Metric, ModelFamily
from harness.registry import UnknownPluginError, metrics, models, suggest, unknown_name_message


def test_names_listed_without_importing_plugins():
    code = ("import sys, harness; from harness.registry import models, metrics; "
            "assert 'toy_softmax' in models().names() and 'loss' in metrics().names(); "
            "import harness.cli; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert not any(m.startswith('harness_plugins.') for m in sys.modules), 'plugin imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_name_did_you_mean():
    with pytest.raises(UnknownPluginError) as exc:
        models().get("toy_sofmax")
    text = str(exc.value)
    assert "Did you mean: toy_softmax?" in text
    assert "Available models:" in text and "toy_softmax" in text


def test_suggest_and_message():
    assert suggest("pythai", ["pythia", "pico", "toy_softmax"]) == ["pythia"]
    msg = unknown_name_message("metric", "zzz", ["loss"])
    assert "Did you mean" not in msg and "Available metrics: loss" in msg


@pytest.mark.parametrize("kind", ["model", "metric"])
def test_one_name_in_four_places(kind):
    """Entry-point name = registry key = config file stem = the class's `name`."""
    reg = models() if kind == "model" else metrics()
    stems = {p.name[:-5] for p in (resources.files("harness.conf") / kind).iterdir() if p.name.endswith(".yaml")}
    for name in reg.names():
        assert name in stems, f"conf/{kind}/{name}.yaml missing"
        cls = reg.get(name)
        assert cls.name == name
        assert issubclass(cls, ModelFamily if kind == "model" else Metric)
        assert reg.info(name).description, f"{name} has no one-line description (class docstring)"


def test_broken_plugin_is_not_a_typo(monkeypatch):
    reg = metrics()
    from importlib.metadata import EntryPoint

    monkeypatch.setitem(reg._eps, "broken", EntryPoint("broken", "no_such_module_xyz:Thing", "harness.metrics"))
    with pytest.raises(ConfigError, match="failed to import"):
        reg.get("broken")
