"""Adds the config directories that plugin packages declare to Hydra's search path.

An outside package ships ``<module>/conf/{model,metric}/<name>.yaml`` and declares::

    [project.entry-points."harness.conf"]
    my_plugin = "my_plugin.conf"

so that ``python -m harness metric=<name>`` composes its config like a first-party one.
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class HarnessSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group="harness.conf"), key=lambda e: e.name):
            search_path.append(provider=f"harness-plugin-{ep.name}", path=f"pkg://{ep.value}")
