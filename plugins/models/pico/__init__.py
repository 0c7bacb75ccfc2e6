"""Pico-LM family plugin (entry point ``pico``): native pico-decoder, Hub commit history,
pico-train run directories and their stored learning dynamics. See docs/pico.md."""

from harness_plugins.models.pico.family import PicoFamily

__all__ = ["PicoFamily"]
