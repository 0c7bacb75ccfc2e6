"""Print the composed config as a rich tree and save it with the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def print_config_tree(cfg: Any, save_to: Path | None = None, show: bool = True) -> None:
    """Print the composed config as a rich tree (and save it as text to ``save_to``)."""
    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key in cfg:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
        tree.add(f"[bold]{key}[/bold]").add(Syntax(text, "yaml", background_color="default"))
    if show:
        Console(stderr=True).print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w", encoding="utf-8") as fh:
            Console(file=fh, width=120, color_system=None).print(tree)
