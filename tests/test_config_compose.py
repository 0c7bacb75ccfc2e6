"""Every config that ships composes, through the same Hydra compose API the app uses."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from harness.registry import metrics, models
from harness.runner import _norm_target

GROUPS = ("model", "metric", "data", "checkpoints", "experiment")


def _options(group: str) -> list[str]:
    root = resources.files("harness.conf") / group
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")) if root.is_dir() else []


def _compose(overrides: list[str]):
    with initialize_config_module("harness.conf", version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_default_config_composes():
    cfg = _compose([])
    assert cfg.model._target_.endswith("ToySoftmaxFamily")
    assert set(cfg.metric) == {"loss", "time_scaling"}
    assert cfg.checkpoints.select == "all" and cfg.data.name == "default"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    OmegaConf.to_container(cfg, resolve=False)  # interpolations stay well-formed
    if group == "model":
        assert _norm_target(cfg.model._target_) == _norm_target(models().target(option))
    if group == "metric":
        node = cfg.metric[option]
        assert _norm_target(node._target_) == _norm_target(metrics().target(option))
        params = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
        metrics().get(option)(**params)  # the shipped defaults are valid parameters


def test_metric_scalar_and_list_and_none():
    assert set(_compose(["metric=loss"]).metric) == {"loss"}
    assert set(_compose(["metric=[loss,time_scaling]"]).metric) == {"loss", "time_scaling"}
    assert "metric" not in _compose(["metric=[]"])


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_launcher_presets_compose(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_
