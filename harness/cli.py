"""The ``harness`` command: ``ls``, ``run``, ``report``, ``compare``, ``show``.

    harness ls models            discovered model families, one line each (no torch import)
    harness ls metrics
    harness run [overrides]      same as ``python -m harness [overrides]``
    harness show RUN             the run manifest as a tree
    harness report RUN...        tables and plots from stored records
    harness compare A B          differences between two runs
    harness new metric NAME      write a complete outside plugin package (also: new model NAME)
    harness forecast [backtest] RUN...   final performance from early checkpoints (docs/forecast.md)

Subcommands other packages add: ``harness.report.add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.api import HarnessError
from harness.registry import registry


def _ls(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    kind = args.kind.rstrip("s")
    reg = registry(kind)
    table = Table(title=f"{kind}s", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("provided by", style="dim")
    for name in reg.names():
        info = reg.info(name)
        dist = f"{info.dist} {info.version}" if info.dist else ""
        table.add_row(name, info.description, dist)
    Console().print(table)
    return 0


def _run(args: argparse.Namespace) -> int:
    from harness.app import main as app_main

    sys.argv = ["harness", *args.overrides]
    app_main()
    return 0


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.pretty import Pretty

    path = Path(args.run)
    manifest = path / "run.json" if path.is_dir() else path
    if not manifest.exists():
        found = sorted(path.rglob("run.json")) if path.is_dir() else []
        if not found:
            raise HarnessError(f"no run.json under {path}")
        manifest = found[0]
    Console().print(Pretty(json.loads(manifest.read_text())))
    return 0


def _new(args: argparse.Namespace) -> int:
    from harness.scaffold import new_plugin

    files = new_plugin(args.kind, args.name, Path(args.dir))
    root = files[0].parent
    print(f"wrote {len(files)} files under {root}:")
    for f in files:
        print(f"  {f.relative_to(root.parent)}")
    print(f"next: cd {root} && pip install -e .[test] && pytest")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``harness`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="harness", description="Benchmark harness for training dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="list discovered plugins")
    p.add_argument("kind", choices=["models", "metrics", "model", "metric"])
    p.set_defaults(func=_ls)
    p = sub.add_parser("run", help="run a sweep (same as python -m harness)")
    p.add_argument("overrides", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
    p = sub.add_parser("new", help="write a new plugin package (metric or model) that passes its tests")
    p.add_argument("kind", choices=["metric", "model"])
    p.add_argument("name", help="the plugin name (entry point, config file stem and class `name`)")
    p.add_argument("--dir", default=".", help="where to create harness-<name>/ (default: here)")
    p.set_defaults(func=_new)
    p = sub.add_parser("show", help="print a run's manifest")
    p.add_argument("run")
    p.set_defaults(func=_show)
    try:
        from harness import report
    except ImportError:
        report = None  # type: ignore[assignment]
    if report is not None and hasattr(report, "add_commands"):
        report.add_commands(sub)
    from harness.forecast.cli import add_commands as add_forecast

    add_forecast(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``harness`` command; a user error prints one line and exits 2."""
    from harness.app import print_error

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        print_error(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
