"""Validation of the run's own settings: every top-level key of the composed config.

Plugins validate their parameters themselves; this module checks what the harness owns,
before anything is built, trained or loaded, and says which key is wrong and why::

    validate_run_config(plain)        # plain = OmegaConf.to_container(cfg, resolve=True)

* top-level keys are the ones `RUN_SETTINGS` declares, plus the config groups (a ``+seeed=3``
  gets "did you mean: seed");
* ``seed`` is an integer in [0, 2**32 - 1] (what numpy and torch seeding accept);
* ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` *and* available on this machine
  (torch is asked only for a non-cpu device, so ``import harness`` stays light);
* ``_target_`` is honoured only at ``model._target_`` and ``metric.<name>._target_``
  (checked against the registry by `harness.registry.check_target`); anywhere else it is refused;
* ``data`` keys are those of the shipped data presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from harness.api import ConfigError
from harness.registry import suggest

#: config groups: their nodes are checked by the plugins (model, metric) or below (data)
GROUP_KEYS = ("model", "metric", "data", "checkpoints", "hydra")
SEED_MAX = 2**32 - 1
PROGRESS_MODES = ("auto", "on", "off", True, False)


@dataclass(frozen=True)
class Setting:
    """One top-level run setting: the types it accepts and a one-line doc."""

    types: tuple[type, ...]
    doc: str
    nullable: bool = False


#: every top-level key of conf/config.yaml (a test keeps the two in step)
RUN_SETTINGS: dict[str, Setting] = {
    "results_dir": Setting((str,), "output root; each run is results_dir/run_name"),
    "run_name": Setting((str, int), "reuse a name to resume that run"),
    "seed": Setting((int,), "seed of every random choice the harness and plugins make"),
    "device": Setting((str,), "cpu | cuda | cuda:N | mps"),
    "progress": Setting((str, bool), "auto | on | off"),
    "print_config": Setting((bool,), "print the composed config tree at start"),
    "report": Setting((bool,), "write report tables at the end of the run"),
    "retry_errors": Setting((bool,), "on resume, re-run units that ended in error"),
    "cache_dir": Setting((str,), "built suites, graphs, downloads", nullable=True),
    "trusted_targets": Setting((list,), "extra _target_s allowed besides registered plugins"),
    "scopes": Setting((str, list), "all, or a subset of [checkpoint, pair, trajectory, suite]"),
    "check_finite": Setting((bool,), "a NaN/Inf in a tensor field becomes an error record"),
    "scores": Setting((str, list), "score file(s) joined as performance records", nullable=True),
    "claims": Setting((list,), "an experiment preset's paper claims (harness.report.claims)", nullable=True),
}


def validate_run_config(plain: Mapping[str, Any]) -> None:
    """Raise `ConfigError` naming the first wrong top-level key, value or misplaced ``_target_``."""
    _check_keys(plain)
    for key, setting in RUN_SETTINGS.items():
        if key not in plain:
            continue
        value = plain[key]
        if value is None and setting.nullable:
            continue
        if isinstance(value, bool) and bool not in setting.types:
            ok = False
        else:
            ok = isinstance(value, setting.types)
        if not ok:
            names = " or ".join(t.__name__ for t in setting.types)
            raise ConfigError(f"{key}={value!r}: expected {names} ({setting.doc})")
    seed = plain.get("seed", 0)
    if not 0 <= int(seed) <= SEED_MAX:
        raise ConfigError(f"seed={seed}: must be an integer in [0, {SEED_MAX}]")
    progress = plain.get("progress", "auto")
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"progress={progress!r}: expected auto, on or off")
    if "scopes" in plain:
        from harness.runner import parse_scopes

        parse_scopes(plain["scopes"])
    check_device(str(plain.get("device", "cpu")))
    check_nested_targets(plain)
    check_data_keys(plain.get("data") or {})


def _check_keys(plain: Mapping[str, Any]) -> None:
    known = set(RUN_SETTINGS) | set(GROUP_KEYS)
    for key in plain:
        if key in known:
            continue
        close = suggest(str(key), sorted(known))
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown top-level key '{key}'.{hint}\nRun settings: {', '.join(RUN_SETTINGS)}; "
            f"config groups: {', '.join(g for g in GROUP_KEYS if g != 'hydra')}"
        )


def available_devices() -> list[str]:
    """Devices torch offers on this machine (imports torch)."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + [f"cuda:{i}" for i in range(n)]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(device: str) -> None:
    """``device`` must name a torch device type this harness runs on, and exist on this machine."""
    if device == "cpu":
        return
    kind, _, index = device.partition(":")
    if kind not in ("cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise ConfigError(f"device={device!r}: expected cpu, cuda, cuda:N or mps")
    offered = available_devices()
    if device not in offered:
        raise ConfigError(
            f"device={device!r} is not available on this machine (torch offers: {', '.join(offered)}); "
            "use device=cpu"
        )


def check_nested_targets(plain: Mapping[str, Any]) -> None:
    """Refuse a ``_target_`` anywhere but a plugin's own node: the harness never instantiates it."""
    allowed = {("model", "_target_")}
    allowed |= {("metric", name, "_target_") for name in (plain.get("metric") or {})}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                here = (*path, str(k))
                if k == "_target_" and here not in allowed:
                    dotted = ".".join(here)
                    raise ConfigError(
                        f"{dotted}={v!r}: a _target_ is honoured only as a plugin's own class "
                        "(model._target_, metric.<name>._target_); nested nodes are plain values"
                    )
                walk(v, here)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, str(i)))

    walk({k: v for k, v in plain.items() if k != "hydra"}, ())


def data_keys() -> set[str]:
    """Every key some shipped data preset declares (``conf/data/*.yaml``)."""
    from omegaconf import OmegaConf

    keys: set[str] = set()
    try:
        root = resources.files("harness.conf") / "data"
        for p in root.iterdir():
            if p.name.endswith(".yaml"):
                keys |= {str(k) for k in OmegaConf.create(p.read_text()).keys()}
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        pass
    return keys


def check_data_keys(data: Mapping[str, Any]) -> None:
    """A ``data`` key no data preset declares is a typo (or an injection), not a setting."""
    known = data_keys()
    if not known:
        return
    for key in data:
        if key in known:
            continue
        close = suggest(str(key), sorted(known))
        hint = f" Did you mean: {', '.join('data.' + c for c in close)}?" if close else ""
        raise ConfigError(f"Unknown data key 'data.{key}'.{hint}\nData keys: {', '.join(sorted(known))}")
