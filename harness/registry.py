"""Plugin discovery through entry points, lazy loading and did-you-mean errors.

First-party and outside plugins register the same way, in their ``pyproject.toml``::

    [project.entry-points."harness.models"]
    toy_softmax = "harness_plugins.models.toy_softmax:ToySoftmaxFamily"

    [project.entry-points."harness.metrics"]
    loss = "harness_plugins.metrics.loss:LossMetric"

Nothing is imported until a plugin is asked for, so listing names stays cheap::

    >>> from harness.registry import models
    >>> models().names()              # no torch imported
    >>> models().get("toy_softmax")   # imports the class now
    >>> models().get("toy_sofmax")    # UnknownPluginError: did you mean: toy_softmax?
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from harness.api import ConfigError, ParameterError

GROUPS = {"model": "harness.models", "metric": "harness.metrics"}


class UnknownPluginError(ConfigError):
    """A plugin name that no installed package provides."""


def suggest(name: str, available: list[str]) -> list[str]:
    """Names close to ``name`` (typos, missing separators)."""
    return difflib.get_close_matches(name, available, n=3, cutoff=0.6)


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """"Unknown <kind> 'x'. Did you mean: ...? Available <kind>s: ..." for a name no plugin has."""
    msg = f"Unknown {kind} '{name}'."
    close = suggest(name, available)
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += f"\nAvailable {kind}s: {', '.join(sorted(available)) or '(none installed)'}"
    return msg


@dataclass(frozen=True)
class PluginInfo:
    """An entry point as listed by ``harness ls``: name, target, distribution, one-liner."""

    name: str
    target: str
    dist: str | None
    version: str | None
    description: str


def _docstring_first_line(target: str, _depth: int = 0) -> str:
    """Read a class's docstring from source without importing its module (keeps ``ls`` light).

    Follows ``from x import Name`` re-exports (a plugin package's ``__init__``) a few levels.
    """
    module, _, qualname = target.partition(":")
    name = qualname.split(".")[-1]
    origin = _module_source(module)
    if origin is None:
        return ""
    try:
        tree = ast.parse(origin.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            doc = (ast.get_docstring(node) or "").strip()
            return " ".join(doc.split("\n\n")[0].split()) if doc else ""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and _depth < 3:
            if any(alias.name == name for alias in node.names):
                source = node.module
                if node.level:  # relative import
                    package = module if origin.name == "__init__.py" else module.rpartition(".")[0]
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    source = f"{base}.{node.module}"
                return _docstring_first_line(f"{source}:{name}", _depth + 1)
    return ""


def _module_source(module: str) -> Path | None:
    """The source file of a module, found WITHOUT importing it or its parent packages
    (``find_spec('a.b')`` would execute ``a/__init__.py``, which may import torch)."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or []:
        base = Path(location).joinpath(*rest.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


class Registry:
    """Name -> plugin class, filled lazily from one entry-point group."""

    def __init__(self, kind: str, group: str):
        self.kind, self.group = kind, group
        self._eps: dict[str, EntryPoint] = {}
        self._loaded: dict[str, type] = {}
        self._extra: dict[str, type] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read entry points (after installing a plugin package in the same process)."""
        self._eps = {ep.name: ep for ep in entry_points(group=self.group)}
        self._loaded.clear()

    def register(self, name: str, cls: type) -> None:
        """Register a class directly (tests, notebooks). Entry points are the normal path."""
        self._extra[name] = cls

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(set(self._eps) | set(self._extra))

    def __contains__(self, name: str) -> bool:
        return name in self._eps or name in self._extra

    def target(self, name: str) -> str:
        """The ``module:Class`` string of a plugin (what a Hydra ``_target_`` must match)."""
        if name in self._extra:
            cls = self._extra[name]
            return f"{cls.__module__}:{cls.__qualname__}"
        return self._require(name).value

    def targets(self) -> dict[str, str]:
        """name -> ``module:Class`` of every registered plugin."""
        return {n: self.target(n) for n in self.names()}

    def _require(self, name: str) -> EntryPoint:
        if name not in self._eps:
            raise UnknownPluginError(unknown_name_message(self.kind, name, self.names()))
        return self._eps[name]

    def get(self, name: str) -> type:
        """The plugin class of ``name``, imported now; its ``name`` must equal the entry-point name."""
        if name in self._extra:
            return self._extra[name]
        if name not in self._loaded:
            ep = self._require(name)
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not look like a typo
                raise ConfigError(f"{self.kind} plugin '{name}' ({ep.value}) failed to import: {exc}") from exc
            declared = getattr(cls, "name", None)
            if declared != name:
                raise ConfigError(
                    f"{self.kind} plugin '{name}' ({ep.value}) declares name={declared!r}; "
                    "the entry-point name, registry key, config file stem and `name` must agree"
                )
            self._loaded[name] = cls
        return self._loaded[name]

    def info(self, name: str) -> PluginInfo:
        """What ``harness ls`` shows about ``name``, read without importing the plugin."""
        if name in self._extra:
            cls = self._extra[name]
            doc = (cls.__doc__ or "").strip().splitlines()
            return PluginInfo(name, self.target(name), None, None, doc[0] if doc else "")
        ep = self._require(name)
        dist = getattr(ep, "dist", None)
        return PluginInfo(
            name,
            ep.value,
            dist.name if dist else None,
            dist.version if dist else None,
            _docstring_first_line(ep.value),
        )


@cache
def models() -> Registry:
    """The registry of model families (``harness.models`` entry points)."""
    return Registry("model", GROUPS["model"])


@cache
def metrics() -> Registry:
    """The registry of metrics (``harness.metrics`` entry points)."""
    return Registry("metric", GROUPS["metric"])


def registry(kind: str) -> Registry:
    """The registry of one plugin kind (``model`` or ``metric``)."""
    if kind not in GROUPS:
        raise ConfigError(unknown_name_message("plugin kind", kind, list(GROUPS)))
    return models() if kind == "model" else metrics()


def import_target(target: str) -> Any:
    """Import ``module:attr`` or ``module.attr``."""
    module, sep, attr = target.partition(":")
    if not sep:
        module, _, attr = target.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# ---- building plugins from a resolved config ---------------------------------------------

#: config keys that are instructions to Hydra/the harness, never plugin parameters
RESERVED_KEYS = ("_target_",)


def _norm_target(target: str) -> str:
    return target.replace(":", ".")


def check_target(kind: str, name: str, target: str | None, trusted: Iterable[str]) -> None:
    """Refuse to instantiate anything but the registered plugin class or a trusted target."""
    registered = registry(kind).target(name)
    if target is None or _norm_target(target) == _norm_target(registered):
        return
    if _norm_target(target) in {_norm_target(t) for t in trusted}:
        return
    raise ConfigError(
        f"{kind} '{name}': _target_ {target!r} is not the registered plugin class {registered!r}. "
        "Add it to `trusted_targets` if you really mean to instantiate it."
    )


def plugin_params(node: Mapping[str, Any]) -> dict[str, Any]:
    """A plugin's constructor keywords: its config node without the reserved keys."""
    return {k: v for k, v in node.items() if k not in RESERVED_KEYS}


def resolve_model_name(node: Mapping[str, Any], choice: str | None) -> str:
    """The family's registry name: the config group choice, else the class its _target_ names."""
    names = models().names()
    if choice and choice in names:
        return choice
    target = node.get("_target_")
    for name, registered in models().targets().items():
        if target and _norm_target(registered) == _norm_target(target):
            return name
    raise ConfigError(unknown_name_message("model", str(choice or target), names))


def build_family(node: Mapping[str, Any], name: str, data: Mapping[str, Any], workdir: Path,
                 trusted: Iterable[str]) -> Any:
    """Construct the model family ``name`` from its config node (after the `_target_` check)."""
    check_target("model", name, node.get("_target_"), trusted)
    cls = models().get(name)
    try:
        return cls(**plugin_params(node), data=dict(data), workdir=str(workdir))
    except ParameterError as exc:
        raise exc.with_prefix("model") from None
    except TypeError as exc:
        raise ConfigError(f"model '{name}': {exc}") from None


def build_metrics(nodes: Mapping[str, Mapping[str, Any]], trusted: Iterable[str]) -> dict[str, Any]:
    """Construct every selected metric, in dependency order (see `order_metrics`)."""
    out: dict[str, Any] = {}
    reg = metrics()
    for name in nodes:
        if name not in reg:
            raise ConfigError(unknown_name_message("metric", name, reg.names()))
    for name in order_metrics(nodes):
        node = nodes[name]
        check_target("metric", name, node.get("_target_"), trusted)
        cls = reg.get(name)
        try:
            out[name] = cls(**plugin_params(node))
        except ParameterError as exc:
            raise exc.with_prefix(f"metric.{name}") from None
        except TypeError as exc:
            raise ConfigError(f"metric '{name}': {exc}") from None
    return out


def order_metrics(nodes: Mapping[str, Any]) -> list[str]:
    """Metrics that others read (``Metric.reads``) run first; otherwise config order."""
    names = list(nodes)
    reads = {n: set(getattr(metrics().get(n), "reads", ())) for n in names}
    ordered: list[str] = []
    while names:
        ready = [n for n in names if not (reads[n] & set(names) - {n})] or names[:1]
        ordered.append(ready[0])
        names.remove(ready[0])
    return ordered
