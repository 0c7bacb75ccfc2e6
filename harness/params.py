"""Plugin parameters, declared once: default, allowed values and a one-line doc per parameter.

A plugin (model family or metric) declares a nested ``Params`` class; everything else is
derived from it -- validation with errors that name the key, "did you mean" for unknown keys,
the check that the shipped YAML config has the same keys and defaults (a test), and the
parameter tables of the docs (``python -m harness.params``)::

    from harness.api import Metric
    from harness.params import Params, param

    class NormMetric(Metric):
        '''Frobenius norm of every weight matrix.'''
        name = "norm"

        class Params(Params):
            power: float = param(2.0, "exponent p of the entrywise p-norm", gt=0)
            modules: list[str] | None = param(None, "glob patterns on tensor names; null = all")

        def measure_checkpoint(self, ctx):
            ...   # self.power, self.modules hold the validated values

A subclass of `Params` becomes a frozen, keyword-only dataclass. Values are coerced by the
annotation (``int``, ``float``, ``bool``, ``str``, ``list[...]``, ``X | None``, ``dict``) and then
checked against the declared range or choices; ``convert`` handles a parameter whose shape the
annotation cannot say, and `Params.check` holds checks across parameters. Import-light (no torch).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

__all__ = ["Params", "param", "ParamSpec", "hashed_values", "parameter_table"]

_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """What a parameter allows, as declared with `param` (kept in the dataclass field's metadata)."""

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    item_choices: tuple[Any, ...] | None = None
    min_len: int | None = None
    convert: Callable[[Any], Any] | None = None
    allowed: str | None = None
    in_config: bool = True
    hash_default: bool = True

    def describe(self, annotation: Any) -> str:
        """The allowed values in words (also the docs' "allowed" column)."""
        if self.allowed:
            return self.allowed
        base, optional = _unwrap_optional(annotation)
        if self.choices is not None:
            text = "one of " + ", ".join(_show(c) for c in self.choices)
        else:
            text = _type_words(base)
            bounds = []
            if self.ge is not None:
                bounds.append(f">= {self.ge:g}")
            if self.gt is not None:
                bounds.append(f"> {self.gt:g}")
            if self.le is not None:
                bounds.append(f"<= {self.le:g}")
            if self.lt is not None:
                bounds.append(f"< {self.lt:g}")
            if bounds:
                text += " " + " and ".join(bounds)
            if self.item_choices is not None:
                text += " drawn from " + ", ".join(_show(c) for c in self.item_choices)
            if self.min_len:
                text = f"{text} (at least {self.min_len})"
        return f"null or {text}" if optional and self.choices is None else text


def param(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    item_choices: Sequence[Any] | None = None,
    min_len: int | None = None,
    convert: Callable[[Any], Any] | None = None,
    allowed: str | None = None,
    in_config: bool = True,
    hash_default: bool = True,
) -> Any:
    """Declare one parameter: its default, a one-line doc, and what values it allows.

    ``ge``/``gt``/``le``/``lt`` bound numbers (of a list's items too); ``choices`` lists the
    allowed values, ``item_choices`` those of a list's items; ``min_len`` a list's length.
    ``convert(value)`` runs before the annotation-driven coercion (normalise a shorthand, or
    raise `ValueError`/`TypeError` for a bad value); ``allowed`` words the allowed values for
    errors and docs. ``in_config=False`` marks a parameter the shipped YAML does not spell out
    (adding a key to a shipped config would change the config hash, so the record ids, of
    existing results); the YAML check skips it. ``hash_default=False`` marks a parameter added
    after results existed: while it has its default it is left out of the config hash (see
    `hashed_values`), so results roots written before it existed still resume.
    """
    spec = ParamSpec(doc, ge, gt, le, lt, tuple(choices) if choices is not None else None,
                     tuple(item_choices) if item_choices is not None else None, min_len, convert, allowed,
                     in_config, hash_default)
    meta = {"harness": spec}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Params:
    """Base of a plugin's parameter declaration (see the module docstring)."""

    #: set on every subclass: name -> (annotation, ParamSpec)
    __harness_fields__: ClassVar[dict[str, tuple[Any, ParamSpec]]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        hints = typing.get_type_hints(cls)
        fields: dict[str, tuple[Any, ParamSpec]] = {}
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("harness")
            if spec is None:
                raise TypeError(f"{cls.__qualname__}.{f.name}: declare it with harness.params.param(default, doc, ...)")
            fields[f.name] = (hints.get(f.name, Any), spec)
        cls.__harness_fields__ = fields

    def __post_init__(self) -> None:
        for name, (annotation, spec) in type(self).__harness_fields__.items():
            object.__setattr__(self, name, _validate(name, getattr(self, name), annotation, spec))
        self.check()

    def check(self) -> None:
        """Checks across parameters (override; raise `ParameterError` naming one key)."""

    # -- construction from a config node ------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        """The declared parameter names, in declaration order."""
        return list(cls.__harness_fields__)

    @classmethod
    def from_config(cls, values: Mapping[str, Any], *, owner: str = "") -> Params:
        """Validate a config node: unknown keys get "did you mean", bad values name the key."""
        from harness.api import UnknownParameterError  # NOTE: lazy, harness.api imports this module

        known = cls.names()
        for key in values:
            if key not in known:
                raise UnknownParameterError(str(key), values[key], known, owner)
        return cls(**dict(values))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The validated default of every parameter (what the shipped YAML must say).

        Cross-parameter checks are not run: a required parameter (default null) is allowed here.
        """
        out = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = f.default_factory() if f.default is _MISSING else f.default  # type: ignore[misc]
            annotation, spec = cls.__harness_fields__[f.name]
            out[f.name] = _copy(_validate(f.name, default, annotation, spec))
        return out

    def as_dict(self) -> dict[str, Any]:
        """The validated values as plain Python (JSON-able for JSON-able inputs)."""
        return {n: _copy(getattr(self, n)) for n in type(self).names()}


def hashed_values(params: type[Params], values: Mapping[str, Any]) -> dict[str, Any]:
    """The config values that identify a configuration: ``values`` less the parameters declared
    ``hash_default=False`` that sit at their default (the input of the config hash)."""
    if not isinstance(params, type) or not issubclass(params, Params) or params is Params:
        return dict(values)
    defaults = params.defaults()
    out = {}
    for key, value in values.items():
        spec = params.__harness_fields__.get(key, (None, None))[1]
        if spec is not None and not spec.hash_default:
            try:
                if _copy(_validate(key, value, params.__harness_fields__[key][0], spec)) == defaults[key]:
                    continue
            except Exception:  # an invalid value is refused elsewhere; hash it as given
                pass
        out[key] = value
    return out


def parameter_table(params: type[Params]) -> str:
    """A Markdown table of a plugin's parameters: name, default, allowed, doc."""
    lines = ["| parameter | default | allowed | meaning |", "|---|---|---|---|"]
    defaults = params.defaults()
    for name, (annotation, spec) in params.__harness_fields__.items():
        cells = [f"`{name}`", f"`{_show(defaults[name])}`", spec.describe(annotation), spec.doc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ---- coercion and checks -------------------------------------------------------------------


def _validate(name: str, value: Any, annotation: Any, spec: ParamSpec) -> Any:
    from harness.api import ParameterError  # NOTE: lazy, harness.api imports this module

    raw = value

    def fail() -> ParameterError:
        return ParameterError(name, raw, spec.describe(annotation))

    try:
        if spec.convert is not None:
            value = spec.convert(value)
        value = _coerce(value, annotation)
    except ParameterError:
        raise
    except (TypeError, ValueError):
        raise fail() from None
    if value is None:
        return value
    if spec.choices is not None and not any(_same(value, c) for c in spec.choices):
        raise fail()
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not _in_range(float(v), spec):
                raise fail()
        if spec.item_choices is not None and isinstance(value, list) and not any(_same(v, c) for c in spec.item_choices):
            raise fail()
    if spec.min_len is not None and isinstance(value, (list, dict)) and len(value) < spec.min_len:
        raise fail()
    return value


def _in_range(v: float, spec: ParamSpec) -> bool:
    if not math.isfinite(v):
        return False
    return not ((spec.ge is not None and v < spec.ge) or (spec.gt is not None and v <= spec.gt)
                or (spec.le is not None and v > spec.le) or (spec.lt is not None and v >= spec.lt))


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True and 1 apart (``1 in (True, False)`` is True in Python)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _coerce(value: Any, annotation: Any) -> Any:
    base, optional = _unwrap_optional(annotation)
    if value is None:
        if optional or base is Any:
            return None
        raise ValueError("null not allowed")
    if base is Any:
        return _copy(value)
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("not a bool")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise TypeError("not an integer")
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("not a number")
        return float(value)
    if base is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError("not a string")
        return str(value)
    if origin in (list, tuple, Sequence) or base in (list, tuple):
        (item,) = typing.get_args(base) or (Any,)
        seq = [value] if isinstance(value, (str, int, float, bool)) else list(value)
        return [_coerce(v, item) for v in seq]
    if origin in (dict, Mapping) or base in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise TypeError("not a mapping")
        return {str(k): _copy(v) for k, v in value.items()}
    return _copy(value)  # a union of several types: the plugin's convert/check decides


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = tuple(a for a in args if a is not type(None))
        optional = len(rest) < len(args)
        if len(rest) == 1:
            return rest[0], optional
        return Any, optional
    return annotation, False


def _type_words(base: Any) -> str:
    origin = typing.get_origin(base)
    if base is bool:
        return "true or false"
    if base is int:
        return "an integer"
    if base is float:
        return "a number"
    if base is str:
        return "a string"
    if origin in (list, tuple, Sequence):
        (item,) = typing.get_args(base) or (Any,)
        words = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(item, "values")
        return f"a list of {words}"
    if origin in (dict, Mapping) or base in (dict, Mapping):
        return "a mapping"
    return "a value"


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    return str(v)


def _copy(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_copy(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    return v


def parameters_doc(package: str = "harness_plugins") -> str:
    """docs/parameters.md: one table per plugin of ``package``, generated from the declarations."""
    from harness.registry import metrics, models

    out = ["# Plugin parameters", "",
           "Generated from each plugin's `Params` declaration by `python -m harness.params > docs/parameters.md`",
           "(a test checks this file is current). Set any of them on the command line, e.g.",
           "`python -m harness model.steps=500 metric=loss metric.loss.split=train`.", ""]
    for kind, reg, prefix in (("Model families", models(), "model."), ("Metrics", metrics(), "metric.")):
        out += [f"## {kind}", ""]
        for name in reg.names():
            if not reg.target(name).startswith(package):
                continue
            cls = reg.get(name)
            declared = getattr(cls, "Params", Params)
            doc = (cls.__doc__ or "").strip().splitlines()
            out += [f"### `{name}`", "", doc[0] if doc else "", ""]
            if declared is Params:
                out += ["(declares no parameters)", ""]
                continue
            key = prefix if kind == "Model families" else f"{prefix}{name}."
            out += [f"Keys: `{key}<parameter>`.", "", parameter_table(declared), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # python -m harness.params > docs/parameters.md
    import sys

    sys.stdout.write(parameters_doc())
