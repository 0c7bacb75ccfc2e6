"""The Hydra entry point: ``python -m harness [overrides]``.

Before Hydra composes anything, group choices on the command line (``model=``, ``metric=``,
``checkpoints=``, ``data=``, ``experiment=``) are checked against the installed plugins and
shipped configs, so a typo exits with "did you mean" instead of a stack trace.
"""

from __future__ import annotations

import logging
import sys
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

from harness import sweep
from harness.api import HarnessError
from harness.registry import metrics, models, suggest, unknown_name_message

logger = logging.getLogger("harness")

# NOTE: our launcher presets (conf/hydra/launcher/joblib.yaml, submitit_*.yaml) keep the plugin's
# option names, so Hydra 1.3 validates them against the plugin's schema of the same name and
# warns that this matching is deprecated. The validation is wanted (typos in a preset fail);
# the presets list every field, so they keep working once Hydra drops the matching.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name")

CHECKED_GROUPS = ("model", "metric", "checkpoints", "data", "experiment")
EXIT_USER_ERROR = 2
EXIT_RECORD_ERRORS = 1


def _config_options(group: str) -> list[str]:
    """Option names of a config group: shipped YAML files plus plugin-provided ones."""
    names: set[str] = set()
    try:
        root = resources.files("harness.conf") / group
        names |= {p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml")}
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        pass
    from importlib.metadata import entry_points

    for ep in entry_points(group="harness.conf"):
        try:
            extra = resources.files(ep.value) / group
            if extra.is_dir():
                names |= {p.name[:-5] for p in extra.iterdir() if p.name.endswith(".yaml")}
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
    if group == "model":
        names |= set(models().names())
    elif group == "metric":
        names |= set(metrics().names())
    return sorted(names)


def _values(override: Any) -> list[str]:
    if override.is_sweep_override():
        out: list[str] = []
        for v in override.sweep_string_iterator():
            out += [x.strip() for x in v.strip("[]").split(",") if x.strip()]
        return out
    value = override.value()
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def check_group_choices(argv: list[str]) -> None:
    """Raise a did-you-mean error for an unknown group option given on the command line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 (Hydra reports malformed overrides itself)
        return
    for ov in parsed:
        group = ov.key_or_group
        if group not in CHECKED_GROUPS or ov.is_delete() or ov.package:
            continue
        available = _config_options(group)
        for name in _values(ov):
            if name not in available and name != "null":
                kind = {"checkpoints": "checkpoint preset"}.get(group, group)
                raise HarnessError(unknown_name_message(kind, name, available))
    _check_parameter_keys(parsed)


def _option_keys(group: str, name: str) -> set[str] | None:
    """Top-level keys of a shipped option's YAML (None when it is not a shipped file)."""
    from omegaconf import OmegaConf

    try:
        text = (resources.files("harness.conf") / group / f"{name}.yaml").read_text()
    except (FileNotFoundError, NotADirectoryError, ModuleNotFoundError):
        return None
    node = OmegaConf.create(text)
    if group == "metric":
        node = node.get(name) or {}
    return {str(k) for k in node.keys()}


def _check_parameter_keys(parsed: list[Any]) -> None:
    """``model.temprature=1`` -> "unknown parameter model.temprature; did you mean temperature?".

    Only plain overrides of the chosen (shipped) model and metric options are checked; ``+key``
    adds a key on purpose, and an experiment preset may reshape the config, so both are left to Hydra.
    """
    choices: dict[str, list[str]] = {"model": [], "metric": []}
    for ov in parsed:
        if ov.key_or_group == "experiment":
            return
        if ov.key_or_group in choices and not ov.package and not ov.is_delete():
            choices[ov.key_or_group] = _values(ov)
    model = (choices["model"] or ["toy_softmax"])[0]
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_add() or ov.is_force_add() or ov.is_delete() or "." not in key:
            continue
        parts = key.split(".")
        if parts[0] == "model" and len(parts) >= 2:
            group, name, param = "model", model, parts[1]
        elif parts[0] == "metric" and len(parts) >= 3:
            group, name, param = "metric", parts[1], parts[2]
        else:
            continue
        keys = _option_keys(group, name)
        if keys is None or param in keys:
            continue
        prefix = f"{group}." if group == "model" else f"metric.{name}."
        known = sorted(k for k in keys if k != "_target_")
        close = suggest(param, known)
        msg = f"Unknown parameter '{prefix}{param}' for {group} '{name}'."
        if close:
            msg += f" Did you mean: {', '.join(prefix + c for c in close)}?"
        msg += f"\nParameters of {group} '{name}': {', '.join(known)}"
        raise HarnessError(msg + f"\n(to add a new key on purpose, write +{key}=...)")


def print_error(message: str) -> None:
    """One clear line (or a few) on stderr, never wrapped or highlighted, never a traceback."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {message}")


def run_from_config(cfg: Any) -> int:
    """Resolve the composed config and run one job; returns the process exit code."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from harness.config_tree import print_config_tree
    from harness.runner import RunSpec, Runner, resolve_model_name

    from harness import store

    hydra_cfg = HydraConfig.get()
    plain = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    run_root = Path(hydra_cfg.sweep.dir) if multirun else run_dir
    store.check_writable(run_dir)  # before anything is built, trained or loaded
    choices = dict(hydra_cfg.runtime.choices)
    print_config_tree(cfg, run_dir / "config_tree.txt", show=plain.get("print_config", True) and not multirun)
    model_name = resolve_model_name(plain["model"], choices.get("model"))
    spec = RunSpec(
        model_name=model_name,
        model=plain["model"],
        metrics=plain.get("metric") or {},
        data=plain.get("data") or {},
        checkpoints=plain.get("checkpoints") or {},
        run_dir=run_dir,
        run_root=run_root,
        seed=int(plain.get("seed", 0)),
        device=str(plain.get("device", "cpu")),
        progress="off" if multirun else plain.get("progress", "auto"),
        trusted_targets=list(plain.get("trusted_targets") or []),
        retry_errors=bool(plain.get("retry_errors", False)),
        cache_dir=Path(plain["cache_dir"]) if plain.get("cache_dir") else None,
        job=str(hydra_cfg.job.num) if multirun else None,
        config=plain,
        # a multirun's jobs share one run root: the sweep writes its report once, at the end
        report=bool(plain.get("report", True)) and not multirun,
        scopes=plain.get("scopes"),
        check_finite=bool(plain.get("check_finite", True)),
        scores=_as_paths(plain.get("scores")),
    )
    if not spec.metrics:
        raise HarnessError("no metric selected: choose one with metric=NAME or 'metric=[a,b]'")
    runner = Runner(spec)
    summary = runner.run()
    from harness.summary import finish_run

    finish_run(spec, summary)
    code = EXIT_RECORD_ERRORS if summary.error else 0
    if multirun:
        sweep.write_job_status(run_dir, code, summary=summary)
    return code


def _as_paths(value: Any) -> list[str]:
    """The ``scores`` key: null, one path, or a list of paths."""
    if value in (None, "", []):
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def main() -> None:
    """``python -m harness``: checks, then hands the command line to Hydra.

    Under ``-m`` (multirun) a job never exits the process: a job with error records or a
    user error writes its status, the other jobs go on, and at the end of the sweep
    `harness.sweep.SweepSummary` prints one line over all jobs and sets the exit code.
    """
    argv = sys.argv[1:]
    try:
        check_group_choices(argv)
        sweep.check_launcher(argv)
        sweep.check_results_root(argv)
    except HarnessError as exc:
        print_error(str(exc))
        sys.exit(EXIT_USER_ERROR)
    if sweep.is_multirun(argv):
        sys.argv.append(sweep.CALLBACK_OVERRIDE)
    sweep.add_checkout_plugins()
    _hydra_entry()
    if sweep.EXIT_CODE:
        sys.exit(sweep.EXIT_CODE)


def _task(cfg: Any) -> None:
    from hydra.core.hydra_config import HydraConfig

    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        code = run_from_config(cfg)
    except HarnessError as exc:
        print_error(str(exc))
        if not multirun:
            sys.exit(EXIT_USER_ERROR)
        sweep.write_job_status(Path(HydraConfig.get().runtime.output_dir), EXIT_USER_ERROR, message=str(exc))
        return
    if code and not multirun:
        sys.exit(code)


def _hydra_entry() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="pkg://harness.conf", config_name="config")(_task)()
