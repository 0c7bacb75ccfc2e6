"""Checkpoint schedules: at which optimizer steps a capture writes a checkpoint.

A schedule answers ``step in schedule`` for any step (no training length needed) and lists
its steps up to a bound. Presets are config files, not code: ``capture_schedule/<name>.yaml``
in ``harness.conf`` or in any package of the ``harness.conf`` entry-point group (how plugins
ship configs). The shipped ones reproduce the public suites' grids, each file citing its
source (``pythia``: Biderman et al. 2023; ``pico``: pico-train's ``save_every_n_steps``)::

    >>> s = Schedule.preset("pythia")
    >>> s.steps(3000)
    [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]
    >>> Schedule(every=50, log_until=32).steps(150)
    [0, 1, 2, 4, 8, 16, 32, 50, 100, 150]

``final=True`` (the default) also saves the last step of training, as pico-train does; the
callback handles that at the end of training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from harness.api import ParameterError, check_range

__all__ = ["Schedule", "presets"]

PRESET_GROUP = "capture_schedule"


def _preset_files() -> dict[str, str]:
    """name -> YAML text of every shipped schedule preset (first package wins)."""
    from importlib import resources
    from importlib.metadata import entry_points

    found: dict[str, str] = {}
    for package in ["harness.conf", *(ep.value for ep in entry_points(group="harness.conf"))]:
        try:
            folder = resources.files(package) / PRESET_GROUP
            if not folder.is_dir():
                continue
            for item in folder.iterdir():
                if item.name.endswith(".yaml"):
                    found.setdefault(item.name[:-5], item.read_text())
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
    return found


def presets() -> dict[str, dict]:
    """name -> keyword arguments of `Schedule`, read from the shipped preset files."""
    from omegaconf import OmegaConf

    return {name: dict(OmegaConf.to_container(OmegaConf.create(text)) or {})
            for name, text in sorted(_preset_files().items())}


@dataclass(frozen=True)
class Schedule:
    """Log-spaced steps ``0, 1, 2, 4, ... <= log_until`` then every ``every`` steps, plus
    any explicit ``extra`` steps; ``final`` asks for the last training step too.

    ``every=None`` turns the periodic part (and the implicit step 0) off: only ``extra``.
    """

    every: int | None = 100
    log_until: int = 64
    extra: tuple[int, ...] = field(default_factory=tuple)
    final: bool = True

    def __post_init__(self) -> None:
        if self.every is not None:
            check_range("every", self.every, 1)
            object.__setattr__(self, "every", int(self.every))
        check_range("log_until", self.log_until, 0)
        for s in self.extra:
            check_range("extra", s, 0)
        object.__setattr__(self, "extra", tuple(sorted({int(s) for s in self.extra})))

    @classmethod
    def preset(cls, name: str, **overrides) -> Schedule:
        """The shipped preset ``name`` (a ``capture_schedule/<name>.yaml``), with overrides."""
        known = presets()
        if name not in known:
            raise ParameterError("schedule", name, "one of " + ", ".join(known))
        return cls(**{**known[name], **overrides})

    @classmethod
    def from_spec(cls, spec: Schedule | str | int | Iterable[int] | dict | None) -> Schedule:
        """A schedule from a preset name, ``every`` as an int, a list of steps or a kwargs dict."""
        if spec is None:
            return cls()
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, str):
            return cls.preset(spec)
        if isinstance(spec, int):
            return cls(every=spec, log_until=0)
        if isinstance(spec, dict):
            spec = dict(spec)
            name = spec.pop("preset", None)
            return cls.preset(name, **spec) if name else cls(**spec)
        return cls(every=None, log_until=0, extra=tuple(int(s) for s in spec), final=False)

    def __contains__(self, step: int) -> bool:
        step = int(step)
        if step < 0:
            return False
        if step in self.extra:
            return True
        if self.every is None:
            return False
        if step % self.every == 0:
            return True
        return step <= self.log_until and step & (step - 1) == 0

    def steps(self, max_step: int) -> list[int]:
        """Scheduled steps ``<= max_step`` (the final step is added by the caller)."""
        out = {s for s in self.extra if s <= max_step}
        if self.every is not None:
            out |= set(range(0, max_step + 1, self.every))
            p = 1
            while p <= min(self.log_until, max_step):
                out.add(p)
                p *= 2
        return sorted(out)
