"""The Hydra entry point: ``python -m harness [overrides]``.

Before Hydra runs anything, group choices on the command line (``model=``, ``metric=``,
``checkpoints=``, ``data=``, ``experiment=``) are checked against the installed plugins and
shipped configs, then the config is composed with Hydra's compose API (experiment presets
included) and its keys and run settings are validated, so a typo or a bad value exits with one
clear line ("did you mean") before a run directory exists, instead of a stack trace.
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


def _variants(parsed: list[Any], multirun: bool) -> list[list[str]]:
    """Override lists to compose: the command line itself, or under ``-m`` one list per value
    of each sweep (the others at their first value), so every value is checked once."""
    def line(ov: Any, value: str | None = None) -> str:
        if value is None:
            return ov.input_line
        return f"{ov.input_line.split('=', 1)[0]}={value}"

    sweeps = [ov for ov in parsed if ov.is_sweep_override()] if multirun else []
    if not sweeps:
        return [[ov.input_line for ov in parsed]]
    try:
        values = {id(ov): list(ov.sweep_string_iterator()) for ov in sweeps}
    except Exception:  # noqa: BLE001 (a glob or an exotic sweep: Hydra expands and checks it)
        return []
    base = [line(ov, values[id(ov)][0]) if id(ov) in values else line(ov) for ov in parsed]
    out = [base]
    for i, ov in enumerate(parsed):
        for v in values.get(id(ov), [])[1:]:
            out.append([*base[:i], line(ov, v), *base[i + 1:]])
    return out


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


#: Hydra flags that print and exit without running a job
INSPECT_FLAGS = frozenset({"--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help", "--shell-completion", "-sc"})


def check_composed(argv: list[str]) -> None:
    """Compose the config exactly as Hydra will (its compose API, experiment presets included)
    and check it before Hydra creates any run directory:

    * an unknown parameter key gets "did you mean" (``model.temprature=1``);
    * every top-level run setting is validated (`harness.validate.validate_run_config`);
    * the results directory is judged writable (`harness.store.check_writable`, the one check).

    What Hydra itself rejects for other reasons is left to Hydra's own message.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, HydraException
    from omegaconf import OmegaConf

    from harness import store
    from harness.validate import validate_run_config

    if any(a in INSPECT_FLAGS or a.startswith("--cfg=") for a in argv):
        return  # Hydra only prints (config, help, info): nothing runs, so nothing is refused
    lines = [a for a in argv if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception:  # noqa: BLE001 (Hydra reports malformed overrides itself)
        return
    parsed = [ov for ov in parsed if not ov.key_or_group.startswith("hydra")]
    for overrides in _variants(parsed, sweep.is_multirun(argv)):
        try:
            cfg = _compose(overrides)
        except ConfigCompositionException as exc:
            raise HarnessError(_composition_message(exc, overrides)) from None
        except HydraException:
            return
        try:
            plain = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # noqa: BLE001 (an interpolation only the job can resolve: checked there)
            continue
        validate_run_config(plain)
        store.check_writable(Path(str(plain.get("results_dir") or "results")), sweep.MIN_FREE_BYTES, create=False)


def _composition_message(exc: Exception, overrides: list[str]) -> str:
    """Hydra's composition error as one clear message; unknown keys get "did you mean"."""
    import re

    from omegaconf import OmegaConf

    text = str(exc).strip()
    m = re.match(r"Could not override '([^']+)'", text)
    if not m:
        return text.splitlines()[0] if text else type(exc).__name__
    key = m.group(1)
    parent, _, param = key.rpartition(".")
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("~+") != key]
    try:
        node = OmegaConf.select(_compose(rest), parent) if parent else None
    except Exception:  # noqa: BLE001
        node = None
    if node is None or not hasattr(node, "keys"):
        return text.splitlines()[0]
    known = sorted(str(k) for k in node.keys() if k != "_target_")
    close = suggest(param, known)
    owner = parent.split(".")
    if owner[0] == "model":
        what = f"model '{_choice(overrides, 'model') or 'toy_softmax'}'"
    elif owner[0] == "metric" and len(owner) > 1:
        what = f"metric '{owner[1]}'"
    else:
        what = f"'{parent}'"
    msg = f"Unknown parameter '{key}' for {what}."
    if close:
        msg += f" Did you mean: {', '.join(f'{parent}.{c}' for c in close)}?"
    msg += f"\nParameters of {what}: {', '.join(known)}"
    return msg + f"\n(to add a new key on purpose, write +{key}=...)"


def _choice(overrides: list[str], group: str) -> str | None:
    for o in overrides:
        k, _, v = o.partition("=")
        if k == group:
            return v
    return None


def print_error(message: str) -> None:
    """One clear line (or a few) on stderr, never wrapped or highlighted, never a traceback."""
    from rich.console import Console
    from rich.markup import escape

    # escaped: a message naming `harness[ray]` or `metric=[a,b]` must not be read as rich markup
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")


def run_from_config(cfg: Any) -> int:
    """Resolve the composed config and run one job; returns the process exit code."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from harness.config_tree import print_config_tree
    from harness.runner import RunSpec, Runner, resolve_model_name
    from harness.validate import validate_run_config

    hydra_cfg = HydraConfig.get()
    plain = OmegaConf.to_container(cfg, resolve=True)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode.name == "MULTIRUN"
    run_root = Path(hydra_cfg.sweep.dir) if multirun else run_dir
    validate_run_config({k: v for k, v in plain.items()})  # again: a sweep's jobs may differ
    choices = dict(hydra_cfg.runtime.choices)
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
    runner = Runner(spec)  # checks the run directory is writable before anything is built or loaded
    print_config_tree(cfg, run_dir / "config_tree.txt", show=plain.get("print_config", True) and not multirun)
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
    sweep.add_checkout_plugins()  # before composing: the search-path and launcher plugins must be visible
    try:
        check_group_choices(argv)
        sweep.check_launcher(argv)
        check_composed(argv)
    except HarnessError as exc:
        print_error(str(exc))
        sys.exit(EXIT_USER_ERROR)
    if sweep.is_multirun(argv):
        sys.argv.append(sweep.CALLBACK_OVERRIDE)
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
            remove_unstarted_run_dir(Path(HydraConfig.get().runtime.output_dir))
            sys.exit(EXIT_USER_ERROR)
        sweep.write_job_status(Path(HydraConfig.get().runtime.output_dir), EXIT_USER_ERROR, message=str(exc))
        return
    if code and not multirun:
        sys.exit(code)


#: what a run directory holds before any unit ran: Hydra's files, our log, tree and manifest
_UNSTARTED = frozenset({".hydra", "config_tree.txt", "harness.log", "run.json", ".claims"})


def remove_unstarted_run_dir(run_dir: Path) -> bool:
    """Delete ``run_dir`` when a refused run leaves nothing in it but start-up files.

    A directory holding anything else (records, artifacts, a report, files of an earlier run)
    is kept as it is. Returns whether it was removed.
    """
    import shutil

    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return False
    if any(p.name not in _UNSTARTED for p in entries):
        return False
    if (run_dir / ".claims").is_dir() and any((run_dir / ".claims").iterdir()):
        return False
    logging.shutdown()  # close our log file in it first
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def _hydra_entry() -> None:
    import hydra

    hydra.main(version_base="1.3", config_path="pkg://harness.conf", config_name="config")(_task)()
