"""Build a local suite with a registered builder: ``python -m harness.build suite=<name> [key=value ...]``.

Builders are plugins (entry-point group ``harness.builders``): a function ``build(**params)``
that trains or writes a suite in a family's layout and returns its directory. The core knows
none of them by name::

    python -m harness.build suite=pythia_mini
    python -m harness.build suite=pico_mini out=runs/pico_mini steps=400
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

from harness.api import HarnessError
from harness.registry import unknown_name_message

GROUP = "harness.builders"


def builders() -> dict[str, Any]:
    """The suite builders registered under the ``harness.builders`` entry-point group."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def parse_args(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """``suite=NAME key=value ...`` -> (suite name, builder parameters)."""
    from omegaconf import OmegaConf

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise HarnessError(f"arguments must be key=value, got {bad}; usage: python -m harness.build suite=NAME [key=value ...]")
    params = OmegaConf.to_container(OmegaConf.from_dotlist(argv), resolve=True)
    suite = params.pop("suite", None)
    if not suite:
        raise HarnessError(f"name a suite: python -m harness.build suite=NAME (available: {', '.join(sorted(builders()))})")
    return str(suite), params  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.build suite=NAME [key=value ...]``: build a suite, print where."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        suite, params = parse_args(sys.argv[1:] if argv is None else argv)
        available = builders()
        if suite not in available:
            raise HarnessError(unknown_name_message("suite", suite, list(available)))
        path = available[suite].load()(**params)
    except HarnessError as exc:
        from harness.app import print_error

        print_error(str(exc))
        return 2
    console.print(f"built suite [bold]{suite}[/bold] -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
